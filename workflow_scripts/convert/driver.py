"""The one conversion driver: a converter's plan in, a complete vLLM-ready model folder out.

Every converter (`consolidate.py` for HF folders and DeepSpeed, `maxtext_to_hf.py`, `titan_to_hf.py`) only
decides what to write: a `ConversionPlan` of output tensors (name, dtype, shape, and how each is made from the
source's tensors), the model files (config.json, tokenizer) and what provenance.json says about the source. The
driver does the rest once, for all of them: refuse an existing output unless forced, stage the folder
(`atomic.py`), stream the weights tensor by tensor, write model files and provenance, check the folder as vLLM
would load it, and rename it into place only when all of that succeeded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..atomic import atomic_output_dir
from ..choices import ORIGINAL_DTYPE, OUTPUT_DTYPES
from ..errors import DistilleryError
from ..formats import hf_writer
from ..formats.safetensors_file import TensorSpec
from ..output_guard import check_output
from ..progress import progress_bar
from ..provenance import write_provenance
from ..sizes import format_size, parse_size

log = logging.getLogger(__name__)

# Hands out one output tensor when its turn comes: a tensor (cast to the planned dtype by the writer, which
# checks its values), byte ranges to copy, or pieces to stream.
Produce = Callable[[TensorSpec], Any]


@dataclass
class ConversionPlan:
    """What a converter decided before anything is written."""

    tensors: list[TensorSpec]
    # Opens the source for reading into the staging folder (which may hold spool files) and yields `Produce`.
    reading: Callable[[Path], contextlib.AbstractContextManager[Produce]]
    # Writes config.json, tokenizer and other model files into the staging folder; returns provenance details.
    write_model_files: Callable[[Path], dict]
    source: dict  # provenance.json's "source" section
    conversion: dict  # provenance.json's "conversion" section (dtype, shard size, dropped tensors, ...)
    provenance: dict = field(default_factory=dict)  # further sections (e.g. MaxText's math)
    weights_format: str = "safetensors"

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.tensors)


@dataclass
class ConversionRequest:
    """Where the model goes and how, as every converter's options say it."""

    output: Path
    dtype: str
    max_shard_size: str
    force: bool = False
    validate_vllm: bool = True
    command: list[str] = field(default_factory=list)
    name: str = "convert"  # the progress bar's label
    inputs: tuple = ()  # what the command reads: the output may not be, contain or lie inside any of them
    allow_overflow: bool = False  # clamp values beyond the dtype's range instead of refusing them


def check_request(request: ConversionRequest) -> int:
    """Refuse a bad request before any source is read (an unknown dtype, an output that is an input or is not
    ours to replace: output_guard.py); returns the largest weights file in bytes."""
    if request.dtype not in (*OUTPUT_DTYPES, ORIGINAL_DTYPE):
        choices = ", ".join((*OUTPUT_DTYPES, ORIGINAL_DTYPE))
        raise DistilleryError(f"unknown --dtype {request.dtype!r}", hint=f"choose from {choices}")
    max_shard_bytes = parse_size(request.max_shard_size)
    check_output(request.output, request.inputs, request.force)
    return max_shard_bytes


def target_dtype(dtype: str) -> torch.dtype | None:
    """The output dtype of floating-point tensors; None for `original` (each tensor keeps its own)."""
    return None if dtype == ORIGINAL_DTYPE else getattr(torch, dtype)


def output_dtype(stored: torch.dtype, dtype: str) -> torch.dtype:
    """A tensor's output dtype: the requested one for floating-point tensors, else as stored."""
    wanted = target_dtype(dtype)
    return wanted if wanted is not None and stored.is_floating_point else stored


@contextlib.contextmanager
def nothing_to_open(produce: Produce) -> Iterator[Produce]:
    """`ConversionPlan.reading` for a source that needs no staging space."""
    yield produce


def run_conversion(request: ConversionRequest, plan: ConversionPlan) -> list[hf_writer.WrittenFile]:
    """Write the planned model into a staging folder and move it into place; nothing is left on failure."""
    max_shard_bytes = check_request(request)
    log.info("%s: %d tensors (%s) as %s", request.output, len(plan.tensors), format_size(plan.total_bytes),
             request.dtype)  # fmt: skip
    with (
        atomic_output_dir(request.output, request.force, request.inputs) as staging,
        progress_bar(total=plan.total_bytes, unit="B", unit_scale=True, desc=request.name) as bar,
    ):
        with plan.reading(staging) as produce:
            files = hf_writer.write_weights(
                staging,
                plan.tensors,
                produce,
                max_shard_bytes,
                plan.weights_format,
                progress=lambda spec: bar.update(spec.nbytes),
                allow_overflow=request.allow_overflow,
            )
        details = plan.write_model_files(staging)
        write_provenance(
            staging,
            source={**plan.source, **details},
            **plan.provenance,
            conversion=plan.conversion,
            outputs=[vars(f) for f in files],
            command=request.command,
            tool_version=__version__,
        )
        if request.validate_vllm:
            validate_for_vllm(staging, request.output)
    return files


_TOKENIZER_CHECKS = ("file:tokenizer_config.json", "file:tokenizer", "tokenizer")


def validate_for_vllm(folder: Path, output: Path) -> None:
    """The static checks of `verify` on the staged folder: a folder vLLM cannot load is never moved into place."""
    from ..verify.static_checks import run_static_checks

    # The NaN/Inf scan reads every byte again: it belongs to verify_model, not to every conversion.
    checks = run_static_checks(folder, expect_single_file=False, scan_values=False)
    failed = [check for check in checks if check.status == "fail"]
    # As in the consolidation script users know, a missing tokenizer is a warning here (verify fails on it).
    tokenizer_checks = [check for check in failed if check.name in _TOKENIZER_CHECKS]
    if tokenizer_checks:
        log.warning(
            "%s: no usable tokenizer (%s); pass --base-model-name with the base model's folder to add one",
            output,
            tokenizer_checks[0].detail,
        )
        failed = [check for check in failed if check.name not in _TOKENIZER_CHECKS]
    if failed:
        first = failed[0]
        raise DistilleryError(
            f"the consolidated model fails the check '{first.name}': {first.detail}",
            output,
            "nothing was written; run `distillery verify` on the input to see every problem",
        )
