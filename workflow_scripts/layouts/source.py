"""The HF model folder a layout is made from: its tensors in the model's own order, its config, its other files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..architectures.architecture import expected_weights, load_config
from ..errors import DistilleryError
from ..formats.hf_checkpoint import HFCheckpoint, open_checkpoint
from ..formats.safetensors_file import TensorSpec

_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_NOT_COPIED = ("provenance.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class HFSource:
    folder: Path
    checkpoint: HFCheckpoint
    config: object  # the transformers config
    specs: list[TensorSpec]  # every stored tensor, in the order of the model's state dict
    tied: dict[str, str]  # tied tensor -> the tensor it repeats (not stored separately by the HF folder)

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.specs)

    def load(self, name: str) -> torch.Tensor:
        return self.checkpoint.tensors[name].load()

    def model_files(self) -> list[Path]:
        """config.json, tokenizer, generation config, chat template: every file that is not weights."""
        return sorted(
            path
            for path in self.folder.iterdir()
            if path.is_file() and path.suffix not in _NOT_COPIED_SUFFIXES and path.name not in _NOT_COPIED
        )


def open_source(folder: Path) -> HFSource:
    """The HF folder's structure (headers only) and config; refuses a folder whose tensors its config contradicts."""
    checkpoint = open_checkpoint(folder)
    config = load_config(folder)
    expected = expected_weights(config)
    tied = {alias: origin for alias, origin in expected.tied.items() if alias not in checkpoint.tensors}
    missing = [name for name in expected.shapes if name not in checkpoint.tensors]
    if missing:
        raise DistilleryError(
            f"lacks {len(missing)} tensor(s) its {expected.architecture} needs: {', '.join(missing[:3])}",
            folder,
            "lay out a complete model folder (distillery verify shows what is wrong)",
        )
    order = [*expected.shapes, *(name for name in checkpoint.tensors if name not in expected.shapes)]
    specs = []
    for name in order:
        tensor = checkpoint.tensors[name]
        wanted = expected.shapes.get(name)
        if wanted is not None and tuple(tensor.shape) != tuple(wanted):
            raise DistilleryError(f"{name} is {list(tensor.shape)}, but its config.json implies {list(wanted)}", folder)
        specs.append(TensorSpec(name, tensor.dtype, tuple(tensor.shape)))
    return HFSource(Path(folder), checkpoint, config, specs, tied)
