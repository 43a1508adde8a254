"""Memory and time for rules, sized from the checkpoint on disk rather than guessed.

Snakemake evaluates these when a job is scheduled, after its inputs exist. Only file sizes and safetensors
headers are read, so sizing a 400 GB checkpoint costs milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DistilleryError

_MB = 1024 * 1024
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".distcp")


def weight_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]


def weights_mb(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in weight_files(folder)) // _MB


def largest_tensor_mb(folder: str | Path) -> int:
    """The largest tensor in safetensors files; for pickled shards, the largest shard (mapped whole)."""
    from ..formats import safetensors_file  # loads torch: only where a rule sizes a job, not at every parse

    largest = 0
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            try:
                header = safetensors_file.read_header(path)
            except DistilleryError:
                continue  # the job itself reports the broken file
            largest = max([largest, *(ref.nbytes for ref in header.tensors.values())])
        else:
            largest = max(largest, path.stat().st_size)
    return largest // _MB


def merge_mem_mb(folder: str | Path) -> int:
    # The source tensor, its converted copy and the interpreter with torch loaded.
    return 1536 + 3 * largest_tensor_mb(folder)


def merge_runtime_min(folder: str | Path) -> int:
    # Reading and writing at a conservative 100 MB/s on shared file systems.
    return 10 + weights_mb(folder) * 2 // (100 * 60)


def verify_mem_mb(model: str | Path, reference: str | Path | None = None) -> int:
    # Both models run in float32 for the logits check: up to 2x the stored bytes each (bfloat16 -> float32).
    # A MaxText reference (Orbax, bfloat16 chunks) is read whole into float32 for its JAX forward pass.
    reference_mb = (weights_mb(reference) or 2 * stored_mb(reference)) if reference else 0
    total = 2 * weights_mb(model) + 2 * reference_mb
    return 2048 + total + total // 4


def verify_runtime_min(model: str | Path) -> int:
    return 10 + weights_mb(model) * 3 // (100 * 60)


def stored_mb(folder: str | Path) -> int:
    """All bytes under a folder (an Orbax checkpoint's arrays are compressed chunks in OCDBT data files)."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // _MB if folder.is_dir() else 0


# A gs:// checkpoint is not listed when jobs are scheduled; its jobs ask for this much.
_REMOTE_MAXTEXT_MB = 65536


def maxtext_param_only_mem_mb(checkpoint: str) -> int:
    # Parameters are copied chunk by chunk inside tensorstore: the interpreter with JAX and a few chunks.
    return 4096 if "://" not in checkpoint else 8192


def maxtext_to_hf_mem_mb(checkpoint: str) -> int:
    # One stored (scanned: all layers) parameter at a time, plus its layer being converted: a third of the
    # parameters for Llama shapes, whose MLP kernels are the largest arrays.
    if "://" in checkpoint:
        return _REMOTE_MAXTEXT_MB
    return 3072 + stored_mb(checkpoint) * 2 // 5


def maxtext_runtime_min(checkpoint: str) -> int:
    return 30 if "://" in checkpoint else 10 + stored_mb(checkpoint) * 2 // (100 * 60)


def titan_mem_mb(checkpoint: str | Path) -> int:
    """A TorchTitan conversion holds one tensor, its transformed and converted copies (two for the tied check)."""
    from ..formats.dcp import TitanCheckpoint

    try:
        tensors = TitanCheckpoint(Path(checkpoint)).tensors.values()
        largest = max(math.prod(t.shape) * t.dtype.itemsize for t in tensors) // _MB
    except (DistilleryError, ValueError):
        largest = 1024  # the job itself reports what is wrong with the checkpoint
    return 2048 + 4 * largest


def deepspeed_mem_mb(checkpoint: str | Path) -> int:
    """Sized from the largest parameter in the checkpoint's model states (read without their tensors' data)."""
    from ..formats.deepspeed import largest_parameter_bytes

    try:
        largest = largest_parameter_bytes(Path(checkpoint)) // _MB
    except DistilleryError:
        largest = 1024  # the job itself reports what is wrong with the checkpoint
    # The fp32 parameter gathered from the ranks, its converted copy, and the interpreter.
    return 2048 + 3 * largest


def lay_out_mem_mb(hf_folder: str | Path, layout: str, max_shard_size: str) -> int:
    """One source tensor and its transformed copy; a .bin shard is pickled whole, so hf-bin-sharded holds one
    shard besides. ZeRO partitions are filled in memory-mapped spool files: page cache, not the job's memory."""
    from ..sizes import parse_size

    held = 2 * largest_tensor_mb(hf_folder)
    if layout == "hf-bin-sharded":
        held += parse_size(max_shard_size) // _MB
    return (3072 if layout == "maxtext" else 1536) + held


def lay_out_runtime_min(hf_folder: str | Path) -> int:
    return merge_runtime_min(hf_folder)


def gguf_mem_mb(checkpoint: str | Path) -> int:
    """One tensor dequantized to float32, its cast copy and the decoder's temporaries, and the interpreter."""
    from ..formats.gguf import GGUFCheckpoint

    try:
        largest = max(math.prod(t.shape) * 4 for t in GGUFCheckpoint(checkpoint).tensors.values()) // _MB
    except (DistilleryError, ValueError):
        largest = 1024  # the job itself reports what is wrong with the file
    return 2048 + 4 * largest


def gguf_runtime_min(checkpoint: str | Path) -> int:
    # Dequantized, the weights are up to 8 times the file (4-bit blocks to float32), written at 100 MB/s.
    path = Path(checkpoint)
    file_mb = path.stat().st_size // _MB if path.is_file() else stored_mb(path)
    return 10 + file_mb * 8 // (100 * 60)


@dataclass(frozen=True)
class Sizing:
    mem_mb: Callable[[str], int]
    runtime_min: Callable[[str], int]


# A conversion's memory and time by the name its format's entry gives (`sizing` in convert/registry.py), each
# from the checkpoint the job reads. A format without a sharper estimate takes `merge`.
CONVERSION_SIZING = {
    "merge": Sizing(merge_mem_mb, merge_runtime_min),
    "deepspeed": Sizing(deepspeed_mem_mb, merge_runtime_min),
    "maxtext": Sizing(maxtext_to_hf_mem_mb, maxtext_runtime_min),
    "titan": Sizing(titan_mem_mb, merge_runtime_min),
    "gguf": Sizing(gguf_mem_mb, gguf_runtime_min),
}
