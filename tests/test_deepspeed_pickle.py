"""DeepSpeed's own objects in its checkpoint files are read through stand-ins, never by running their code."""

from __future__ import annotations

import enum
import sys
import types
from pathlib import Path

import pytest
import torch

from workflow_scripts.errors import DistilleryError
from workflow_scripts.formats.deepspeed_pickle import load_deepspeed_file

ENUM_MODULES = ["deepspeed", "deepspeed.runtime", "deepspeed.runtime.zero", "deepspeed.runtime.zero.config"]


def save_with_an_enum_pickled_by_name(path: Path, member: str) -> Path:
    """What DeepSpeed writes under Pythons that pickle an enum member as getattr(ZeroStageEnum, NAME) (Debian 12's
    3.11.2 does), made without DeepSpeed: a ZeroStageEnum in a stand-in module, only while saving."""
    saved = {name: sys.modules.get(name) for name in ENUM_MODULES}
    sys.modules.update({name: types.ModuleType(name) for name in ENUM_MODULES})

    class ZeroStageEnum(int, enum.Enum):
        disabled = 0
        weights = 3

        def __reduce_ex__(self, protocol):
            return getattr, (type(self), member)

    ZeroStageEnum.__module__, ZeroStageEnum.__qualname__ = ENUM_MODULES[-1], "ZeroStageEnum"
    sys.modules[ENUM_MODULES[-1]].ZeroStageEnum = ZeroStageEnum
    try:
        torch.save({"zero_stage": ZeroStageEnum.weights, "weight": torch.ones(2)}, path)
    finally:
        for name, module in saved.items():
            sys.modules.pop(name) if module is None else sys.modules.__setitem__(name, module)
    return path


def test_an_enum_member_pickled_by_name_reads_as_its_value(tmp_path):
    loaded = load_deepspeed_file(save_with_an_enum_pickled_by_name(tmp_path / "optim_states.pt", "weights"))
    assert loaded["zero_stage"] == 3 and torch.equal(loaded["weight"], torch.ones(2))


def test_getattr_of_anything_but_an_enum_member_is_refused(tmp_path):
    path = save_with_an_enum_pickled_by_name(tmp_path / "optim_states.pt", "__class__")
    with pytest.raises(DistilleryError, match="optim_states.pt: refused to unpickle") as refused:
        load_deepspeed_file(path)
    assert "\n" not in str(refused.value) and "--trust-pickle" in str(refused.value)
