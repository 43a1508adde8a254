"""Load DeepSpeed's `.pt` files with `torch.load(weights_only=True)`, without importing DeepSpeed.

DeepSpeed's optimizer-state files pickle a few of its own objects beside the tensors (the loss scaler, the ZeRO
stage enum, fragment addresses). Rather than allowing arbitrary code, each of those names is mapped to an inert
stand-in that only records the state it is given. Any other class is refused with its name; `trust_pickle`
(the CLI's `--trust-pickle`) falls back to a full unpickle for checkpoints the user vouches for.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from ..errors import DistilleryError, first_line


class InertObject:
    """Accepts and keeps whatever state the pickle gives it; has no behaviour."""

    def __init__(self, *args, **kwargs) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state) -> None:
        self.state = state


def _zero_stage(value) -> int:
    return int(value)


# The DeepSpeed globals its ZeRO checkpoints need, by the name the pickle refers to them with.
ALLOWED_GLOBALS: dict[str, object] = {
    "deepspeed.runtime.zero.config.ZeroStageEnum": _zero_stage,
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": InertObject,
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": InertObject,
    "deepspeed.utils.tensor_fragment.fragment_address": InertObject,
}
_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+)")


def load_deepspeed_file(path: Path, trust_pickle: bool = False) -> dict:
    """The file's top-level dict, tensors memory-mapped where the format allows."""
    mmap = zipfile.is_zipfile(path)
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        stand_ins = [(stand_in, name) for name, stand_in in ALLOWED_GLOBALS.items()]
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        match = _UNSUPPORTED.search(str(exc))
        what = f"the class {match.group(1)}" if match else "an object that is not allowed"
        raise DistilleryError(
            f"refused to unpickle {what}, which is not on distillery's allow-list for DeepSpeed checkpoints",
            path,
            "if you trust this checkpoint, pass --trust-pickle",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        message = first_line(exc)
        raise DistilleryError(
            f"cannot read this DeepSpeed file ({message})", path, "it may be truncated: copy it again"
        ) from None
