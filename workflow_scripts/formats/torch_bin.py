"""PyTorch `.bin` weight files (`torch.save` of a state dict), loaded without running arbitrary pickle code.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers; `mmap=True` maps the zip archive so
a shard's tensors are paged in as they are read instead of all at once.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import DistilleryError, first_line


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise DistilleryError(
            f"refused to unpickle: {first_line(exc)}",
            path,
            "it holds objects other than tensors; re-save it as safetensors",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        message = first_line(exc)
        raise DistilleryError(
            f"cannot read this PyTorch file ({message})", path, "copy or re-save the file; it may be truncated"
        ) from None
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise DistilleryError("is not a state dict of tensors", path)
    return loaded


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Save as `torch.save` does; tensors that share storage (tied weights) stay shared in the file."""
    torch.save(state_dict, path)
