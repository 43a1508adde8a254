"""`distillery consolidate`: any HF weight layout in, one vLLM-ready model folder out.

The merge streams: each tensor is read from its source shard, converted and written before the next is read,
so memory stays near the largest tensor. The output is assembled in a hidden sibling folder and renamed into
place only when complete (and, by default, statically verified), so a failed or killed run leaves nothing that
looks like a model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..architectures.architecture import expected_weights, load_config, read_config_json, tied_weights
from ..atomic import atomic_output_dir
from ..choices import OUTPUT_DTYPES
from ..errors import DistilleryError, require_folder
from ..formats import deepspeed, detect, hf_checkpoint, hf_writer
from ..formats.hf_checkpoint import HFCheckpoint, SourceTensor
from ..formats.safetensors_file import ByteRange, ConvertedRange, TensorSpec
from ..output_guard import check_output
from ..progress import progress_bar
from ..provenance import describe_source_files, write_provenance
from ..sizes import format_size, parse_size
from .model_files import copy_model_files, resolve_base_model

log = logging.getLogger(__name__)


@dataclass
class ConsolidateOptions:
    input: Path
    output: Path
    input_type: str = "auto"
    force: bool = False
    dtype: str = "float32"
    keep_original_precision: bool = False
    max_shard_size: str = "40GB"
    weights_format: str = "safetensors"
    base_model_name: str | None = None
    validate_vllm: bool = True
    checkpoint_dir: Path | None = None  # DeepSpeed: this checkpoint folder, not the latest of the run
    tag: str | None = None  # DeepSpeed: global_stepN instead of what `latest` names
    trust_pickle: bool = False
    allow_overflow: bool = False  # clamp values beyond --dtype's range instead of refusing them
    command: list[str] = field(default_factory=list)


@dataclass
class ConsolidationResult:
    output: Path
    input_type: str
    num_tensors: int
    total_bytes: int
    files: list[hf_writer.WrittenFile]
    dropped_tied: list[str]


def consolidate(options: ConsolidateOptions) -> ConsolidationResult:
    if options.dtype not in OUTPUT_DTYPES:
        raise DistilleryError(f"unknown --dtype {options.dtype!r}", hint=f"choose from {', '.join(OUTPUT_DTYPES)}")
    if options.weights_format not in hf_writer.WEIGHTS_FORMATS:
        raise DistilleryError(f"unknown weights format {options.weights_format!r}")
    max_shard_bytes = parse_size(options.max_shard_size)
    input_type = "deepspeed" if options.checkpoint_dir else _resolve_input_type(options.input_type, options.input)
    base_model = resolve_base_model(options.base_model_name)
    inputs = (options.input, options.checkpoint_dir, base_model)
    check_output(options.output, inputs, options.force)
    checkpoint, files_folder, source_details = _open_source(options, input_type)
    config_folder = _config_folder(files_folder, base_model)
    config = load_config(config_folder)
    check_fits_architecture(checkpoint.tensors, config, checkpoint_path=files_folder, config_path=config_folder)
    tied = tied_weights(config)
    target_dtype = None if options.keep_original_precision else getattr(torch, options.dtype)

    plan, dropped = _plan_tensors(checkpoint, tied, target_dtype)
    total_bytes = sum(spec.nbytes for spec, _ in plan)
    log.info(
        "%s: %d tensors (%s) from %s layout, %s",
        options.input,
        len(plan),
        format_size(total_bytes),
        checkpoint.layout,
        "keeping original precision" if target_dtype is None else f"as {options.dtype}",
    )

    sources = {spec.name: source for spec, source in plan}
    with (
        atomic_output_dir(options.output, options.force, inputs) as staging,
        progress_bar(total=total_bytes, unit="B", unit_scale=True, desc="consolidate") as bar,
    ):

        def produce(spec: TensorSpec) -> torch.Tensor | list[ByteRange] | ConvertedRange:
            source = sources[spec.name]
            if source.byte_ranges and options.weights_format == "safetensors":
                if source.dtype == spec.dtype:
                    return list(source.byte_ranges)
                return ConvertedRange(source.byte_ranges, source.dtype)
            return source.load()  # cast by write_weights, which checks the values

        files = hf_writer.write_weights(
            staging,
            [spec for spec, _ in plan],
            produce,
            max_shard_bytes,
            options.weights_format,
            progress=lambda spec: bar.update(spec.nbytes),
            allow_overflow=options.allow_overflow,
        )
        copy_model_files(files_folder, staging, base_model)
        _write_config(config_folder / "config.json", staging / "config.json", options, target_dtype)
        write_provenance(
            staging,
            source={
                "path": str(options.input.resolve()),
                "type": input_type,
                "layout": checkpoint.layout,
                "files": describe_source_files(checkpoint.weight_files, options.input),
                "base_model": str(base_model) if base_model else None,
                **source_details,
            },
            conversion={
                "dtype": "original" if target_dtype is None else options.dtype,
                "source_dtypes": _dtype_counts(checkpoint.tensors.values()),
                "dropped_tied_weights": dropped,
                "max_shard_size": options.max_shard_size,
                "weights_format": options.weights_format,
            },
            outputs=[vars(f) for f in files],
            command=options.command,
            tool_version=__version__,
        )
        if options.validate_vllm:
            validate_for_vllm(staging, options.output)
    return ConsolidationResult(options.output, input_type, len(plan), total_bytes, files, dropped)


def _open_source(options: ConsolidateOptions, input_type: str):
    """(the tensors' source, the folder holding its config and tokenizer files, provenance details)."""
    if input_type != "deepspeed":
        return hf_checkpoint.open_checkpoint(options.input), options.input, {}
    location = deepspeed.locate_checkpoint(options.input, options.tag, options.checkpoint_dir)
    checkpoint = deepspeed.open_deepspeed_checkpoint(location, options.trust_pickle)
    details = {
        "checkpoint": str(location.tag_folder.resolve()),
        "tag": location.tag,
        "step": location.step,
        "zero_stage": checkpoint.zero_stage,
        "world_size": checkpoint.world_size,
        "deepspeed_version": checkpoint.ds_version,
    }
    return checkpoint, location.step_folder, details


def _config_folder(files_folder: Path, base_model: Path | None) -> Path:
    """config.json from the checkpoint itself where it has one, else from the base model."""
    if (files_folder / "config.json").is_file():
        if base_model is not None and (base_model / "config.json").is_file():
            _check_same_architecture(files_folder / "config.json", base_model / "config.json")
        return files_folder
    if base_model is None:
        read_config_json(files_folder / "config.json")  # raises the missing-config error
    return base_model


_ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _check_same_architecture(own: Path, base: Path) -> None:
    ours, theirs = read_config_json(own), read_config_json(base)
    different = [f"{key} {ours.get(key)} vs {theirs.get(key)}" for key in _ARCHITECTURE_KEYS
                 if ours.get(key) != theirs.get(key)]  # fmt: skip
    if different:
        raise DistilleryError(
            f"the checkpoint is a different model than --base-model-name {base.parent} ({'; '.join(different)})",
            own,
            "pass the base model the checkpoint was trained from",
        )


def check_fits_architecture(tensors, config, checkpoint_path: Path, config_path: Path) -> None:
    """Refuse before writing anything when the weights do not fit the architecture config.json describes."""
    try:
        expected = expected_weights(config)
    except DistilleryError:
        return  # an architecture transformers cannot build: the weights are passed through unchecked
    wrong = [
        f"{name} {list(tensors[name].shape)} (expected {list(shape)})"
        for name, shape in expected.shapes.items()
        if name in tensors and tuple(tensors[name].shape) != tuple(shape)
    ]
    missing = [name for name in expected.shapes if name not in tensors]
    if wrong or missing:
        detail = "; ".join(
            part
            for part in (
                f"wrong shape: {', '.join(wrong[:3])}" if wrong else "",
                f"missing: {', '.join(missing[:3])}" if missing else "",
            )
            if part
        )
        raise DistilleryError(
            f"the weights do not fit the architecture of {config_path / 'config.json'} ({detail})",
            checkpoint_path,
            "is this the right checkpoint, and --base-model-name the model it was trained from?",
        )


def _resolve_input_type(requested: str, folder: Path) -> str:
    if requested == "auto":
        return detect.detect_input_type(folder)
    if requested == "deepspeed":
        if not detect.looks_like_deepspeed(folder):
            raise DistilleryError(
                "is not a DeepSpeed checkpoint (no zero_to_fp32.py, latest, global_step* or checkpoint-*)",
                folder,
                "use --type hf_sharded or --type auto",
            )
        return "deepspeed"
    # An HF Trainer checkpoint can hold both DeepSpeed state and saved HF weights: hf_sharded reads the latter.
    hf_checkpoint.weight_layout(require_folder(folder, "check --input"))  # raises when there are no HF weights
    return "hf_sharded"


def _plan_tensors(
    checkpoint: HFCheckpoint, tied: dict[str, str], target_dtype: torch.dtype | None
) -> tuple[list[tuple[TensorSpec, SourceTensor]], list[str]]:
    """Output specs in source order; tied copies are dropped because loaders rebuild them from their source."""
    dropped = [name for name, source in tied.items() if name in checkpoint.tensors and source in checkpoint.tensors]
    plan = []
    for name, source in checkpoint.tensors.items():
        if name in dropped:
            continue
        dtype = source.dtype
        if target_dtype is not None and dtype.is_floating_point:
            dtype = target_dtype
        plan.append((TensorSpec(name, dtype, source.shape), source))
    return plan, dropped


def _write_config(source: Path, destination: Path, options: ConsolidateOptions, target_dtype) -> None:
    config = read_config_json(source)
    if target_dtype is not None:
        # transformers 5 names the key `dtype`, older releases `torch_dtype`; keep whichever the source used.
        key = "torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"
        config[key] = options.dtype
    destination.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _dtype_counts(tensors) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tensor in tensors:
        key = str(tensor.dtype).removeprefix("torch.")
        counts[key] = counts.get(key, 0) + 1
    return counts


_TOKENIZER_CHECKS = ("file:tokenizer_config.json", "file:tokenizer", "tokenizer")


def validate_for_vllm(folder: Path, output: Path) -> None:
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
