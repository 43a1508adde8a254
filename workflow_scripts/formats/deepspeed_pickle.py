"""Load DeepSpeed's `.pt` files with `torch.load(weights_only=True)`, without importing DeepSpeed.

DeepSpeed's optimizer-state files pickle a few of its own objects beside the tensors (the loss scaler, the ZeRO
stage enum, fragment addresses). Rather than allowing arbitrary code, each of those names is mapped to an inert
stand-in that only records the state it is given. Any other class is refused with its name; `trust_pickle`
(the CLI's `--trust-pickle`) falls back to a full unpickle for checkpoints the user vouches for.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from .torch_bin import load_torch_file


class InertObject:
    """Accepts and keeps whatever state the pickle gives it; has no behaviour."""

    def __init__(self, *args, **kwargs) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state) -> None:
        self.state = state


def _zero_stage(value) -> int:
    return int(value)


# ZeroStageEnum's members by name: some Python versions (Debian 12's 3.11.2 among them) pickle an enum member as
# getattr(EnumClass, "name") rather than EnumClass(value).
_ZERO_STAGES = {"disabled": 0, "optimizer_states": 1, "gradients": 2, "weights": 3, "max_stage": 3}


def _enum_member(owner, name: str) -> int:
    """`getattr` as such a pickle uses it, for the allow-listed enum's members only: never a general getattr."""
    if owner is _zero_stage and name in _ZERO_STAGES:
        return _ZERO_STAGES[name]
    raise pickle.UnpicklingError(f"getattr({getattr(owner, '__name__', owner)}, {name!r})")


# The DeepSpeed globals its ZeRO checkpoints need, by the name the pickle refers to them with.
ALLOWED_GLOBALS: dict[str, object] = {
    "deepspeed.runtime.zero.config.ZeroStageEnum": _zero_stage,
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": InertObject,
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": InertObject,
    "deepspeed.utils.tensor_fragment.fragment_address": InertObject,
    "builtins.getattr": _enum_member,
}


def load_deepspeed_file(path: Path, trust_pickle: bool = False) -> dict:
    """The file's top-level dict, tensors memory-mapped where the format allows."""
    return load_torch_file(
        path,
        "DeepSpeed file",
        stand_ins=[(stand_in, name) for name, stand_in in ALLOWED_GLOBALS.items()],
        refusal_hint="it is not on distillery's allow-list for DeepSpeed checkpoints; "
        "if you trust this checkpoint, pass --trust-pickle",
        trust_pickle=trust_pickle,
    )
