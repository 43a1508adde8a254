"""`distillery consolidate`: any HF weight layout in, one vLLM-ready model folder out.

The merge streams: each tensor is read from its source shard, converted and written before the next is read,
so memory stays near the largest tensor. The output is assembled in a hidden sibling folder and renamed into
place only when complete (and, by default, statically verified), so a failed or killed run leaves nothing that
looks like a model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..architectures.architecture import config_facts, expected_weights, read_config_json, tied_weights
from ..choices import ORIGINAL_DTYPE, WEIGHTS_FORMATS
from ..errors import DistilleryError, require_folder
from ..formats import deepspeed, detect, hf_checkpoint, hf_writer
from ..formats.hf_checkpoint import HFCheckpoint
from ..formats.reader import SourceTensor
from ..formats.safetensors_file import ByteRange, ConvertedRange, TensorSpec
from ..provenance import describe_source_files
from .driver import ConversionPlan, ConversionRequest, check_request, nothing_to_open, output_dtype, run_conversion
from .model_files import copy_model_files, resolve_base_model
from .registry import ConsolidateOptions

log = logging.getLogger(__name__)


@dataclass
class ConsolidationResult:
    output: Path
    input_type: str
    num_tensors: int
    total_bytes: int
    files: list[hf_writer.WrittenFile]
    dropped_tied: list[str]

    def summary(self) -> str:
        files = ", ".join(f.name for f in self.files)
        line = f"✓ {self.output}: {self.num_tensors} tensors from {self.input_type} input into {files}"
        tied = f"\n  tied weights left to the loader: {', '.join(self.dropped_tied)}" if self.dropped_tied else ""
        return line + tied


def consolidate(options: ConsolidateOptions) -> ConsolidationResult:
    if options.weights_format not in WEIGHTS_FORMATS:
        raise DistilleryError(f"unknown weights format {options.weights_format!r}")
    input_type = "deepspeed" if options.checkpoint_dir else _resolve_input_type(options.input_type, options.input)
    base_model = resolve_base_model(options.base_model_name)
    request = ConversionRequest(
        options.output,
        options.dtype,
        options.max_shard_size,
        options.force,
        options.validate_vllm,
        options.command,
        "consolidate",
        inputs=(options.input, options.checkpoint_dir, base_model),
        allow_overflow=options.allow_overflow,
    )
    check_request(request)
    plan, dropped = plan_consolidation(options, input_type, base_model)
    files = run_conversion(request, plan)
    return ConsolidationResult(options.output, input_type, len(plan.tensors), plan.total_bytes, files, dropped)


def plan_consolidation(
    options: ConsolidateOptions, input_type: str, base_model: Path | None
) -> tuple[ConversionPlan, list[str]]:
    """Every source tensor as it is, cast to the output dtype; tied copies left to the loader."""
    checkpoint, files_folder, source_details = _open_source(options, input_type)
    config_folder = _config_folder(files_folder, base_model)
    config = config_facts(config_folder)  # from the facts cache when this config.json was seen before
    check_fits_architecture(checkpoint.tensors, config, checkpoint_path=files_folder, config_path=config_folder)
    tensors, dropped = _plan_tensors(checkpoint, tied_weights(config), options.dtype)
    log.info("%s: %s layout", options.input, checkpoint.layout)

    def write_model_files(staging: Path) -> dict:
        copy_model_files(files_folder, staging, base_model)
        _write_config(config_folder / "config.json", staging / "config.json", options.dtype)
        return {}

    plan = ConversionPlan(
        tensors=[spec for spec, _ in tensors],
        reading=lambda staging: nothing_to_open(_producer(tensors, options.weights_format)),
        write_model_files=write_model_files,
        source={
            "path": str(options.input.resolve()),
            "type": input_type,
            "layout": checkpoint.layout,
            "files": describe_source_files(checkpoint.weight_files, options.input),
            "base_model": str(base_model) if base_model else None,
            **source_details,
        },
        conversion={
            "dtype": options.dtype,
            "source_dtypes": _dtype_counts(checkpoint.tensors.values()),
            "dropped_tied_weights": dropped,
            "max_shard_size": options.max_shard_size,
            "weights_format": options.weights_format,
        },
        weights_format=options.weights_format,
    )
    return plan, dropped


def _producer(sources: list[tuple[TensorSpec, SourceTensor]], weights_format: str):
    by_name = {spec.name: source for spec, source in sources}

    def produce(spec: TensorSpec) -> torch.Tensor | list[ByteRange] | ConvertedRange:
        source = by_name[spec.name]
        if source.byte_ranges and weights_format == "safetensors":
            if source.dtype == spec.dtype:
                return list(source.byte_ranges)
            return ConvertedRange(source.byte_ranges, source.dtype)
        return source.load()  # cast by write_weights, which checks the values

    return produce


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
    checkpoint: HFCheckpoint, tied: dict[str, str], dtype: str
) -> tuple[list[tuple[TensorSpec, SourceTensor]], list[str]]:
    """Output specs in source order; tied copies are dropped because loaders rebuild them from their source."""
    dropped = [name for name, source in tied.items() if name in checkpoint.tensors and source in checkpoint.tensors]
    plan = [
        (TensorSpec(name, output_dtype(source.dtype, dtype), source.shape), source)
        for name, source in checkpoint.tensors.items()
        if name not in dropped
    ]
    return plan, dropped


def _write_config(source: Path, destination: Path, dtype: str) -> None:
    config = read_config_json(source)
    if dtype != ORIGINAL_DTYPE:
        # transformers 5 names the key `dtype`, older releases `torch_dtype`; keep whichever the source used.
        key = "torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"
        config[key] = dtype
    destination.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _dtype_counts(tensors) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tensor in tensors:
        key = str(tensor.dtype).removeprefix("torch.")
        counts[key] = counts.get(key, 0) + 1
    return counts
