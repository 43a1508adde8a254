"""Checks that need no model run: files, safetensors headers, config sanity, tensor names/shapes/dtypes, NaN/Inf.

A tensor's expected name and shape come from building the architecture on the meta device from the folder's
own config.json, so any architecture transformers knows is checked against what its loader will ask for.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..architectures.architecture import config_facts, expected_weights
from ..architectures.tokenizer_facts import tokenizer_facts
from ..errors import DistilleryError, first_line
from ..formats import hf_checkpoint, safetensors_file
from ..formats.hf_checkpoint import HFCheckpoint
from ..sizes import format_size
from .report import FAIL, PASS, SKIP, WARN, Check

TOKENIZER_MODELS = ("tokenizer.json", "tokenizer.model", "vocab.json")
_LISTED = 5


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def check_files(folder: Path) -> list[Check]:
    checks = []
    for name in ("config.json", "tokenizer_config.json"):
        present = (folder / name).is_file()
        checks.append(Check(f"file:{name}", PASS if present else FAIL, name, "" if present else "missing"))
    tokenizer = [name for name in TOKENIZER_MODELS if (folder / name).is_file()]
    checks.append(
        Check(
            "file:tokenizer",
            PASS if tokenizer else FAIL,
            "tokenizer model file",
            ", ".join(tokenizer) if tokenizer else f"none of {', '.join(TOKENIZER_MODELS)}",
        )
    )
    return checks


def check_weights(folder: Path, expect_single_file: bool) -> tuple[Check, HFCheckpoint | None]:
    try:
        checkpoint = hf_checkpoint.open_checkpoint(folder)
    except DistilleryError as exc:
        return Check("weights", FAIL, "weights readable", str(exc)), None
    kinds = {path.suffix for path in checkpoint.weight_files}
    description = (
        f"{len(checkpoint.weight_files)} {'/'.join(sorted(kinds))} file(s), {len(checkpoint.tensors)} tensors, "
        f"{format_size(checkpoint.total_bytes)}, layout {checkpoint.layout}"
    )
    if expect_single_file and len(checkpoint.weight_files) > 1:
        return Check("weights", FAIL, "single weights file", description + "; a single file was asked for"), None
    if ".safetensors" not in kinds:
        return Check("weights", WARN, "Found weights (not safetensors)", description), checkpoint
    return Check("weights", PASS, "Found .safetensors weights", description), checkpoint


def check_leftovers(folder: Path, checkpoint: HFCheckpoint) -> Check:
    """Weight files beside the ones in use: an old index, shards of an earlier save."""
    in_use = set(checkpoint.weight_files) | ({checkpoint.index_file} if checkpoint.index_file else set())
    candidates = [
        *folder.glob("*.safetensors"),
        *folder.glob("pytorch_model*.bin"),
        *folder.glob("*.index.json"),
    ]
    stray = sorted(p.name for p in candidates if p not in in_use and p.is_file())
    if stray:
        return Check("leftover_files", FAIL, "no leftover weight files", f"not used by the loader: {_listing(stray)}")
    return Check("leftover_files", PASS, "no leftover weight files")


def check_headers(checkpoint: HFCheckpoint) -> Check:
    problems = []
    for path in checkpoint.weight_files:
        if path.suffix == ".safetensors":
            try:
                safetensors_file.read_header(path)
            except DistilleryError as exc:
                problems.append(str(exc))
    if problems:
        return Check("safetensors_headers", FAIL, "safetensors headers valid", "; ".join(problems))
    count = sum(path.suffix == ".safetensors" for path in checkpoint.weight_files)
    return Check("safetensors_headers", PASS if count else SKIP, "safetensors headers valid", f"{count} file(s)")


def check_config(folder: Path, trust_remote_code: bool = False):
    try:
        # What transformers makes of config.json (its ConfigFacts from the facts cache when seen before).
        config = config_facts(folder, trust_remote_code)
    except DistilleryError as exc:
        return Check("config", FAIL, "config.json sane", str(exc)), None
    problems = []
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        value = getattr(config, key, None)
        if not isinstance(value, int) or value <= 0:
            problems.append(f"{key} is {value!r}, expected a positive integer")
    if isinstance(heads, int) and heads > 0 and isinstance(kv_heads, int) and kv_heads > 0:
        if heads % kv_heads:
            problems.append(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        if getattr(config, "head_dim", None) is None and isinstance(hidden, int) and hidden % heads:
            problems.append(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    if not getattr(config, "architectures", None):
        problems.append("no 'architectures' entry (vLLM picks the model class from it)")
    if problems:
        return Check("config", FAIL, "config.json sane", "; ".join(problems)), config
    detail = f"{config.model_type}, {getattr(config, 'architectures', ['?'])[0]}"
    return Check("config", PASS, "config.json sane", detail), config


def check_tokenizer_vocab(folder: Path, config, trust_remote_code: bool = False) -> Check:
    try:
        size = tokenizer_facts(folder, trust_remote_code).size
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure is reported, not raised
        message = first_line(exc)
        return Check("tokenizer", FAIL, "tokenizer loads", message)
    if size > config.vocab_size:
        return Check(
            "tokenizer", FAIL, "tokenizer loads", f"{size} tokens but the model's vocab_size is {config.vocab_size}"
        )
    return Check("tokenizer", PASS, "tokenizer loads", f"{size} tokens (vocab_size {config.vocab_size})")


def check_tensors(checkpoint: HFCheckpoint, config) -> list[Check]:
    try:
        expected = expected_weights(config)
    except DistilleryError as exc:
        return [Check("tensor_names", SKIP, "tensor names and shapes", str(exc))]
    present = {name: tensor.shape for name, tensor in checkpoint.tensors.items()}
    missing = sorted(set(expected.shapes) - set(present))
    # A tied copy is harmless: loaders skip it and re-tie.
    unexpected = sorted(set(present) - set(expected.shapes) - set(expected.tied))
    wrong_shape = sorted(
        f"{name} {list(present[name])} (expected {list(shape)})"
        for name, shape in expected.shapes.items()
        if name in present and tuple(present[name]) != tuple(shape)
    )
    problems = []
    if missing:
        problems.append(f"missing {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shape {_listing(wrong_shape)}")
    names_check = Check(
        "tensor_names",
        FAIL if problems else PASS,
        "tensor names and shapes match the architecture",
        "; ".join(problems) if problems else f"{len(expected.shapes)} tensors of {expected.architecture}",
        {"missing": missing, "unexpected": unexpected, "wrong_shape": wrong_shape},
    )

    float_dtypes = sorted(
        {str(t.dtype).removeprefix("torch.") for t in checkpoint.tensors.values() if t.dtype.is_floating_point}
    )
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    declared = str(declared).removeprefix("torch.") if declared is not None else None
    if len(float_dtypes) > 1:
        dtype_check = Check("dtypes", WARN, "one floating dtype", f"mixed: {', '.join(float_dtypes)}")
    elif declared and float_dtypes and float_dtypes[0] != declared:
        dtype_check = Check(
            "dtypes", WARN, "one floating dtype", f"weights are {float_dtypes[0]}, config.json says {declared}"
        )
    else:
        dtype_check = Check("dtypes", PASS, "one floating dtype", ", ".join(float_dtypes))
    return [names_check, dtype_check]


def check_finite(checkpoint: HFCheckpoint) -> Check:
    """Read every tensor once; report those with NaN or Inf values."""
    bad = []
    for name, source in checkpoint.tensors.items():
        if not source.dtype.is_floating_point or math.prod(source.shape) == 0:
            continue
        tensor = source.load()
        if tensor.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            bad.append(f"{name} ({int(torch.isnan(tensor).sum())} NaN, {int(torch.isinf(tensor).sum())} Inf)")
        del tensor
    if bad:
        return Check("finite", FAIL, "no NaN/Inf in weights", _listing(bad), {"tensors": bad})
    return Check("finite", PASS, "no NaN/Inf in weights", f"{len(checkpoint.tensors)} tensors scanned")


def run_static_checks(
    folder: str | Path, expect_single_file: bool = False, scan_values: bool = True, trust_remote_code: bool = False
) -> list[Check]:
    folder = Path(folder)
    if not folder.is_dir():
        return [Check("model_folder", FAIL, "model folder exists", f"{folder} is not a folder")]
    checks = check_files(folder)
    config_check, config = check_config(folder, trust_remote_code)
    checks.append(config_check)
    weights_check, checkpoint = check_weights(folder, expect_single_file)
    checks.append(weights_check)
    if checkpoint is None:
        return checks
    checks.append(check_leftovers(folder, checkpoint))
    checks.append(check_headers(checkpoint))
    if config is not None:
        checks.append(check_tokenizer_vocab(folder, config, trust_remote_code))
        checks.extend(check_tensors(checkpoint, config))
    if scan_values:
        checks.append(check_finite(checkpoint))
    return checks
