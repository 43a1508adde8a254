"""PyTorch `.bin` weight files (`torch.save` of a state dict), loaded without running arbitrary pickle code.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers; `mmap=True` maps the zip archive so
a shard's tensors are paged in as they are read instead of all at once. `load_torch_file` is the one safe
loader every `.pt`/`.bin` reader uses.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from ..errors import DistilleryError, first_line

_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+)")
_PICKLE_HINT = "if you trust the file, re-save its tensors as safetensors (torch.load, then safetensors' save_file)"


def load_torch_file(
    path: Path,
    what: str,
    stand_ins: list[tuple[object, str]] | None = None,
    refusal_hint: str = _PICKLE_HINT,
    trust_pickle: bool = False,
):
    """`torch.load` with `weights_only=True` (plus `stand_ins` for named globals) and one-line errors.

    Zip-format files are memory-mapped; older non-zip files cannot be and are read whole.
    """
    mmap = zipfile.is_zipfile(path)
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(stand_ins or []):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise pickle_refusal(exc, path, refusal_hint) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DistilleryError(
            f"cannot read this {what} ({first_line(exc)})", path, "it may be truncated: copy or re-save it"
        ) from None


def pickle_refusal(exc: pickle.UnpicklingError, path: Path, hint: str = _PICKLE_HINT) -> DistilleryError:
    """torch.load(weights_only=True)'s refusal as one line: the file, what its pickle holds, what to do.

    `path` may be a model folder (transformers loaded it): then its first `.bin` file is named.
    """
    path = Path(path)
    if path.is_dir():
        path = next(iter(sorted(path.glob("*.bin"))), path)
    match = _UNSUPPORTED.search(str(exc))
    refused = f"the class {match.group(1)}" if match else first_line(exc)
    return DistilleryError(
        f"refused to unpickle {refused}: its pickle holds something outside the allow-list of "
        "torch.load(weights_only=True), so nothing was loaded",
        path,
        hint,
    )


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    loaded = load_torch_file(path, "PyTorch file", refusal_hint="it holds objects other than tensors; "
                             "re-save it as safetensors")  # fmt: skip
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise DistilleryError("is not a state dict of tensors", path)
    return loaded


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Save as `torch.save` does; tensors that share storage (tied weights) stay shared in the file."""
    torch.save(state_dict, path)
