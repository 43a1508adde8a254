"""Hugging Face model folders as a lazy source of tensors.

Layouts (transformers' `save_pretrained` conventions): a single `model.safetensors` or `pytorch_model.bin`;
shards listed in `model.safetensors.index.json` / `pytorch_model.bin.index.json` (`{"metadata": {...},
"weight_map": {tensor: shard}}`); shards without an index; and shards nested in a `pytorch_model.bin/` folder.
Only headers (safetensors) or pickle structure (`.bin`, memory-mapped) are read when the folder is opened;
tensor data is read by `SourceTensor.load()`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DistilleryError, require_folder
from . import safetensors_file, torch_bin
from .reader import SourceTensor
from .safetensors_file import dtype_itemsize

__all__ = ["HFCheckpoint", "SourceTensor", "open_checkpoint", "weight_layout", "has_hf_weights"]

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


class _BinShardCache:
    """Keeps one `.bin` shard mapped at a time, so reading in file order maps each shard once."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._state: dict[str, torch.Tensor] = {}

    def get(self, path: Path) -> dict[str, torch.Tensor]:
        if path != self._path:
            self._state = {}
            self._state = torch_bin.load_state_dict(path)
            self._path = path
        return self._state

    def tensor(self, path: Path, name: str) -> torch.Tensor:
        # A copy, so the caller owns plain memory and the mapping can be dropped with the shard.
        return self.get(path)[name].clone()


@dataclass
class HFCheckpoint:
    folder: Path
    layout: str
    weight_files: list[Path]
    index_file: Path | None
    tensors: dict[str, SourceTensor]

    @property
    def total_bytes(self) -> int:
        return sum(dtype_itemsize(t.dtype) * math.prod(t.shape) for t in self.tensors.values())


def weight_layout(folder: Path) -> tuple[str, Path | None, list[Path]]:
    """(layout, index file, weight files) of an HF folder; raises if it holds no weights."""
    safetensors_index = folder / SAFETENSORS_INDEX
    bin_index = folder / BIN_INDEX
    single_safetensors = folder / "model.safetensors"
    single_bin = folder / "pytorch_model.bin"
    if safetensors_index.is_file() and single_safetensors.is_file():
        raise DistilleryError(
            f"holds both model.safetensors and {SAFETENSORS_INDEX}",
            folder,
            "one of them is left over from an earlier save: remove the stale one",
        )
    if safetensors_index.is_file():
        return "safetensors_sharded", safetensors_index, _shards_from_index(safetensors_index)
    if single_safetensors.is_file():
        return "safetensors", None, [single_safetensors]
    if bin_index.is_file():
        return "bin_sharded", bin_index, _shards_from_index(bin_index)
    if single_bin.is_file():
        return "bin", None, [single_bin]
    if single_bin.is_dir():
        for index_name in (BIN_INDEX, SAFETENSORS_INDEX):
            if (single_bin / index_name).is_file():
                return "bin_nested", single_bin / index_name, _shards_from_index(single_bin / index_name)
        nested = sorted(single_bin.glob("*.bin")) + sorted(single_bin.glob("*.safetensors"))
        if nested:
            return "bin_nested", None, nested
    loose = sorted(folder.glob("model-*.safetensors")) or sorted(folder.glob("pytorch_model-*.bin"))
    if loose:
        return "unindexed_shards", None, loose
    raise DistilleryError(
        "no model weights found (no model*.safetensors, pytorch_model*.bin or index)",
        folder,
        "point --input at the folder that holds the weights",
    )


def has_hf_weights(folder: Path) -> bool:
    """Whether `folder` holds HF weights in a layout this module reads (checked by name, nothing is opened)."""
    try:
        weight_layout(folder)
    except DistilleryError:
        return False
    return True


def _shards_from_index(index_path: Path) -> list[Path]:
    index = _read_index(index_path)
    shards: list[Path] = []
    for shard_name in dict.fromkeys(index.values()):
        shard = index_path.parent / shard_name
        if not shard.is_file():
            raise DistilleryError(
                f"names shard {shard_name!r}, which does not exist",
                index_path,
                "restore the missing shard or re-save the model",
            )
        shards.append(shard)
    return shards


def _read_index(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise DistilleryError(
            "is not a valid weight index (expected JSON with a 'weight_map' object)", index_path
        ) from None
    return weight_map


def open_checkpoint(folder: str | Path) -> HFCheckpoint:
    """Read the structure of an HF model folder: which tensors, where, with which dtype and shape."""
    folder = require_folder(folder)
    layout, index_file, weight_files = weight_layout(folder)

    tensors: dict[str, SourceTensor] = {}
    owner: dict[str, Path] = {}
    bin_cache = _BinShardCache()
    for weight_file in weight_files:
        for tensor in _tensors_of_file(weight_file, bin_cache):
            if tensor.name in owner:
                raise DistilleryError(
                    f"tensor {tensor.name!r} is in two shards, {owner[tensor.name].name} and {weight_file.name}",
                    weight_file.parent,
                    "the shards come from different saves: re-save the model",
                )
            owner[tensor.name] = weight_file
            tensors[tensor.name] = tensor

    if index_file is not None:
        for name, shard_name in _read_index(index_file).items():
            if name not in tensors or owner[name].name != Path(shard_name).name:
                raise DistilleryError(
                    f"maps tensor {name!r} to {shard_name}, which does not hold it",
                    index_file,
                    "the index and the shards come from different saves: re-save the model",
                )
    return HFCheckpoint(folder, layout, weight_files, index_file, tensors)


def _tensors_of_file(weight_file: Path, bin_cache: _BinShardCache) -> list[SourceTensor]:
    if weight_file.suffix == ".safetensors":
        return list(safetensors_file.read_header(weight_file).tensors.values())
    state = torch_bin.load_state_dict(weight_file)
    return [
        SourceTensor(
            name,
            tensor.dtype,
            tuple(tensor.shape),
            weight_file,
            lambda path=weight_file, key=name: bin_cache.tensor(path, key),
        )
        for name, tensor in state.items()
    ]
