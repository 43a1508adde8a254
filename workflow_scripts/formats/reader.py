"""What every checkpoint reader offers, whatever the format: the one protocol the conversion driver reads.

A reader (`hf_checkpoint.open_checkpoint`, `deepspeed.open_deepspeed_checkpoint`, `dcp.TitanCheckpoint`,
`maxtext.MaxTextCheckpoint`) opens a checkpoint reading only its metadata, and gives

- `tensors`: each model tensor by its name in the checkpoint, with dtype, shape and a loader that reads it
  (whole, in its stored dtype) only when called: `SourceTensor.load()`;
- `layout`: how the checkpoint is laid out (e.g. "sharded safetensors", "dcp", "linen"), for logs and provenance;
- `weight_files`: the files its tensors are read from, for provenance and job sizing.

Format-specific ways to read faster stay with the format: safetensors byte ranges copied without decoding
(`SourceTensor.byte_ranges`), MaxText's lazy tensorstore arrays read in blocks (`maxtext_arrays.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from .safetensors_file import ByteRange


@dataclass(frozen=True)
class SourceTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    loader: Callable[[], torch.Tensor] = field(repr=False, compare=False)
    # Where the raw bytes lie in files, in order, when they can be copied without loading (else empty).
    byte_ranges: tuple[ByteRange, ...] = ()

    def load(self) -> torch.Tensor:
        return self.loader()

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class Checkpoint(Protocol):
    tensors: dict[str, SourceTensor]
    layout: str

    @property
    def weight_files(self) -> list[Path]: ...
