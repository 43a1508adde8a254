"""Write HF weight files: one `model.safetensors`, or shards with `model.safetensors.index.json`.

Names and index follow transformers' `save_pretrained`: `model-00001-of-00003.safetensors` (or
`pytorch_model-00001-of-00003.bin`) and an index `{"metadata": {"total_size": bytes}, "weight_map": {...}}`.
Safetensors shards are streamed tensor by tensor; a `.bin` shard has to be pickled whole, so with
`--pytorch-bin` memory peaks at one shard.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import torch_bin
from .safetensors_file import ByteRange, ConvertedRange, SafetensorsWriter, TensorPieces, TensorSpec
from .tensor_values import cast_checked, refuse_non_finite


@dataclass(frozen=True)
class WrittenFile:
    name: str
    size: int


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Greedy split in order, as transformers does: a new shard starts when the next tensor would not fit."""
    shards: list[list[TensorSpec]] = [[]]
    current = 0
    for spec in specs:
        if shards[-1] and current + spec.nbytes > max_shard_bytes:
            shards.append([])
            current = 0
        shards[-1].append(spec)
        current += spec.nbytes
    return shards


def shard_file_names(count: int, weights_format: str) -> list[str]:
    stem, suffix = ("model", "safetensors") if weights_format == "safetensors" else ("pytorch_model", "bin")
    if count == 1:
        return [f"{stem}.{suffix}"]
    return [f"{stem}-{i:05d}-of-{count:05d}.{suffix}" for i in range(1, count + 1)]


def index_file_name(weights_format: str) -> str:
    return "model.safetensors.index.json" if weights_format == "safetensors" else "pytorch_model.bin.index.json"


def write_weights(
    folder: Path,
    specs: Sequence[TensorSpec],
    produce: Callable[[TensorSpec], torch.Tensor | ByteRange | ConvertedRange | TensorPieces],
    max_shard_bytes: int,
    weights_format: str = "safetensors",
    progress: Callable[[TensorSpec], None] | None = None,
    allow_overflow: bool = False,
) -> list[WrittenFile]:
    """Write `specs` in order, asking `produce` for each tensor only when it is its turn.

    A tensor `produce` gives in another dtype is cast here, its values checked on the way (tensor_values.py).
    """
    given = produce

    def produce(spec: TensorSpec):
        value = given(spec)
        if isinstance(value, torch.Tensor):
            value = cast_checked(value, spec.dtype, spec.name, allow_overflow)
            refuse_non_finite(value, spec.name)
        return value

    shards = plan_shards(specs, max_shard_bytes)
    names = shard_file_names(len(shards), weights_format)
    written: list[WrittenFile] = []
    for shard_specs, name in zip(shards, names, strict=True):
        path = folder / name
        if weights_format == "safetensors":
            writer = SafetensorsWriter(path, shard_specs, metadata={"format": "pt"}, allow_overflow=allow_overflow)
            try:
                for spec in shard_specs:
                    writer.write(spec.name, produce(spec))
                    if progress:
                        progress(spec)
            except BaseException:
                writer.abort()
                raise
            writer.close()
        else:
            state = {}
            for spec in shard_specs:
                tensor = produce(spec)
                if not isinstance(tensor, torch.Tensor):
                    raise TypeError(f"{spec.name}: a .bin shard is pickled from tensors, not byte ranges")
                state[spec.name] = tensor
                if progress:
                    progress(spec)
            torch_bin.save_state_dict(state, path)
            del state
        written.append(WrittenFile(name, path.stat().st_size))
    if len(shards) > 1:
        weight_map = {spec.name: name for shard_specs, name in zip(shards, names, strict=True) for spec in shard_specs}
        index = {
            "metadata": {"total_size": sum(spec.nbytes for spec in specs)},
            "weight_map": dict(sorted(weight_map.items())),
        }
        index_path = folder / index_file_name(weights_format)
        index_path.write_text(json.dumps(index, indent=2) + "\n")
    return written
