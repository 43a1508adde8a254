"""`distillery titan-to-hf`: a TorchTitan Llama 3 or Qwen3 checkpoint (DCP folder or `.pt`) → an HF model folder.

The config comes from `--config` (an HF config.json), `--flavor` (TorchTitan's model args, see
`titan_flavors.py`) or a config.json inside the checkpoint folder (as TorchTitan's vLLM guide puts one there).
Every output tensor is planned from the config's architecture before anything is read, so a missing key, a
tensor whose shape the config contradicts, or a family mismatch is refused up front; then each tensor is read
from the checkpoint alone, transformed (`formats/titan_names.py`), cast and written before the next one is read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..architectures.architecture import expected_weights
from ..architectures.rope import LLAMA3_ROPE_SCALING
from ..choices import ORIGINAL_DTYPE
from ..errors import DistilleryError
from ..formats import titan_names as names
from ..formats.dcp import TitanCheckpoint
from ..formats.safetensors_file import TensorSpec
from ..vllm_models import ARCHITECTURES, require_registered_architecture
from .driver import ConversionPlan, ConversionRequest, check_request, nothing_to_open, output_dtype, run_conversion
from .model_files import copy_model_files
from .registry import TitanToHFOptions
from .titan_flavors import check_family, find_flavor, hf_config_from_args

log = logging.getLogger(__name__)

HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its HF name and shape, and the TorchTitan tensor it is made from."""

    hf_name: str
    shape: tuple[int, ...]
    source: str  # TorchTitan name (for a fused QKV piece: the wqkv tensor)
    piece: str | None = None  # "wq" | "wk" | "wv" of a fused wqkv


@dataclass
class TitanConversion:
    output: Path
    layout: names.TitanLayout
    num_tensors: int
    config_source: str
    dropped: list[str]

    def summary(self) -> str:
        described = f"{self.num_tensors} tensors of a {self.layout.describe}"
        return f"✓ {self.output}: {described}, config from {self.config_source}"


def _read_json_config(path: Path) -> dict:
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise DistilleryError("does not exist", path, "pass the HF config.json of the model (--config)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DistilleryError(f"is not valid JSON ({exc})", path) from None
    if not isinstance(config, dict):
        raise DistilleryError("is not a JSON object", path)
    return config


def resolve_config(options: TitanToHFOptions, layout: names.TitanLayout):
    """(transformers config, where it came from) for the checkpoint's family."""
    from transformers import AutoConfig

    if options.config is not None and options.flavor is not None:
        raise DistilleryError("pass either --config or --flavor, not both")
    if options.flavor is not None:
        args = find_flavor(options.flavor, layout.family)
        return hf_config_from_args(args, layout.family), f"flavor {options.flavor}"
    candidate = Path(options.config) if options.config is not None else None
    if candidate is None and options.input.is_dir() and (options.input / "config.json").is_file():
        candidate = options.input / "config.json"
    if candidate is None:
        raise DistilleryError(
            "no model config: the checkpoint does not say how many heads it has or how its rotary is set",
            options.input,
            "pass --config HF_CONFIG_JSON or --flavor NAME (a TorchTitan flavor such as 8B or 0.6B)",
        )
    raw = _read_json_config(candidate)
    require_registered_architecture(candidate / "config.json" if candidate.is_dir() else candidate)
    source = str(candidate)
    model_type = raw.get("model_type")
    architectures = raw.get("architectures") or []
    claimed = (model_type if model_type in HF_ARCHITECTURES else None) or next(
        (ARCHITECTURES[a] for a in architectures if a in ARCHITECTURES), None
    )
    if claimed is None:
        raise DistilleryError(
            f"model_type {model_type!r} is neither llama nor qwen3", candidate, "titan-to-hf converts Llama 3 and Qwen3"
        )
    try:
        check_family(claimed, layout.family)
    except DistilleryError as exc:
        raise DistilleryError(f"{candidate}: {exc}") from None
    raw["model_type"] = claimed  # the family names are transformers' model types
    raw["architectures"] = [HF_ARCHITECTURES[claimed]]
    if claimed == "llama" and not (raw.get("rope_scaling") or raw.get("rope_parameters", {}).get("rope_type")):
        log.warning(
            "%s: no rope scaling; TorchTitan's Llama 3 applies Llama 3.1 scaling (%s) unless configured otherwise",
            candidate,
            LLAMA3_ROPE_SCALING,
        )
    try:
        config_class = type(AutoConfig.for_model(raw["model_type"]))
        config = config_class.from_dict({k: v for k, v in raw.items() if k != "model_type"})
    except (ValueError, TypeError, KeyError) as exc:
        raise DistilleryError(f"transformers cannot read it ({exc})", candidate) from None
    return config, source


def plan_conversion(
    checkpoint: TitanCheckpoint, config, layout: names.TitanLayout, config_source: str
) -> tuple[list[PlannedTensor], list[str]]:
    """Every output tensor from its source, checked against the architecture; (plan, dropped TorchTitan keys)."""
    expected = expected_weights(config)
    shape = names.attention_shape(config)
    # HF name -> (TorchTitan source, fused piece, shape the checkpoint gives it)
    offered: dict[str, tuple[str, str | None, tuple[int, ...]]] = {}
    dropped: list[str] = []
    for name, tensor in checkpoint.tensors.items():
        if names.FUSED_QKV in name and name.endswith(".weight"):
            q_rows = shape.n_heads * shape.head_dim
            kv_rows = shape.n_kv_heads * shape.head_dim
            rows = {"wq": q_rows, "wk": kv_rows, "wv": kv_rows}
            if tensor.shape[0] != q_rows + 2 * kv_rows:
                raise _size_error(name, tensor.shape, (q_rows + 2 * kv_rows, *tensor.shape[1:]), config_source)
            for part_name in names.fused_parts(name):
                piece = part_name.rsplit(".", 2)[-2]
                offered[names.hf_name(part_name)] = (name, piece, (rows[piece], *tensor.shape[1:]))
            continue
        target = names.hf_name(name)
        if target is None:
            dropped.append(name)
            continue
        offered[target] = (name, None, tensor.shape)

    missing = [names.titan_name(hf, layout.naming) for hf in expected.shapes if hf not in offered]
    if missing:
        raise DistilleryError(
            f"the checkpoint lacks {len(missing)} tensor(s) a {config.architectures[0]} of {config_source} needs: "
            f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}",
            checkpoint.path,
            "is the checkpoint complete, and the config the one it was trained with?",
        )
    unexpected = [offered[hf][0] for hf in offered if hf not in expected.shapes and hf not in expected.tied]
    if unexpected:
        moe = any(".moe." in name for name in unexpected)
        raise DistilleryError(
            f"holds tensors a {config.architectures[0]} has no place for: {', '.join(sorted(unexpected)[:4])}",
            checkpoint.path,
            "MoE checkpoints are not supported" if moe else "check --config/--flavor against the checkpoint",
        )
    plan = []
    for hf, wanted in expected.shapes.items():
        source, piece, found = offered[hf]
        if tuple(found) != tuple(wanted):
            raise _size_error(source if piece is None else f"{source} ({piece})", found, wanted, config_source)
        plan.append(PlannedTensor(hf, tuple(wanted), source, piece))
    for tied, origin in expected.tied.items():
        if tied in offered:
            _check_tied(checkpoint, offered[tied][0], offered[origin][0], config_source)
            dropped.append(offered[tied][0])
    return plan, dropped


def _size_error(name: str, found, wanted, config_source: str) -> DistilleryError:
    return DistilleryError(
        f"config sizes disagree with the tensors: {name} is {list(found)} in the checkpoint, "
        f"but {config_source} implies {list(wanted)}",
        hint="pass the config (or flavor) the checkpoint was trained with",
    )


def _check_tied(checkpoint: TitanCheckpoint, output: str, embedding: str, config_source: str) -> None:
    """A tied model's output matrix must be its embedding; otherwise tying would silently change the model."""
    if not torch.equal(checkpoint.tensors[output].load(), checkpoint.tensors[embedding].load()):
        raise DistilleryError(
            f"{config_source} ties the word embeddings, but {output} differs from {embedding}",
            checkpoint.path,
            "set tie_word_embeddings to false in the config (or use a flavor without weight tying)",
        )


class _SourceCache:
    """Hands out transformed tensors; keeps the last fused wqkv so its three pieces cost one read."""

    def __init__(self, checkpoint: TitanCheckpoint, family: str, shape: names.AttentionShape) -> None:
        self.checkpoint, self.family, self.shape = checkpoint, family, shape
        self._fused: tuple[str, dict[str, torch.Tensor]] | None = None

    def tensor(self, planned: PlannedTensor) -> torch.Tensor:
        if planned.piece is None:
            weights = [(planned.source, self.checkpoint.tensors[planned.source].load())]
            return next(names.titan_weights_as_hf_layout(weights, self.family, self.shape))[1]
        if self._fused is None or self._fused[0] != planned.source:
            weights = [(planned.source, self.checkpoint.tensors[planned.source].load())]
            pieces = names.titan_weights_as_hf_layout(weights, self.family, self.shape)
            self._fused = (planned.source, {name.rsplit(".", 2)[-2]: t for name, t in pieces})
        return self._fused[1][planned.piece]


def convert_titan_to_hf(options: TitanToHFOptions) -> TitanConversion:
    inputs = (options.input, options.config, options.tokenizer, options.base_model_name)
    request = ConversionRequest(options.output, options.dtype, options.max_shard_size, options.force,
                                options.validate_vllm, options.command, "titan-to-hf", inputs=inputs)  # fmt: skip
    check_request(request)
    checkpoint = TitanCheckpoint(options.input)
    layout = names.detect_layout(checkpoint.tensors, options.input)
    config, config_source = resolve_config(options, layout)
    planned, dropped = plan_conversion(checkpoint, config, layout, config_source)
    log.info("%s: %s, %d tensors, config from %s", options.input, layout.describe, len(planned), config_source)
    plan = conversion_plan(options, checkpoint, layout, config, planned)
    plan.source["config"] = config_source
    plan.conversion["dropped_tensors"] = dropped
    run_conversion(request, plan)
    return TitanConversion(options.output, layout, len(planned), config_source, dropped)


def conversion_plan(options: TitanToHFOptions, checkpoint: TitanCheckpoint, layout: names.TitanLayout, config,
                    planned: list[PlannedTensor]) -> ConversionPlan:  # fmt: skip
    """The planned tensors in their output dtype, read and transformed one at a time."""
    specs = [
        TensorSpec(p.hf_name, output_dtype(checkpoint.tensors[p.source].dtype, options.dtype), p.shape) for p in planned
    ]
    by_name = {p.hf_name: p for p in planned}
    sources = _SourceCache(checkpoint, layout.family, names.attention_shape(config))
    tokenizer = options.tokenizer or options.base_model_name
    tokenizer = Path(tokenizer) if tokenizer else None

    def produce(spec: TensorSpec) -> torch.Tensor:
        return sources.tensor(by_name[spec.name])  # cast by write_weights, which checks the values

    def write_model_files(staging: Path) -> dict:
        if options.dtype == ORIGINAL_DTYPE:  # the least precise stored dtype, as verify's dtype check expects
            floating = {spec.dtype for spec in specs if spec.dtype.is_floating_point}
            config.dtype = str(min(floating, key=lambda d: torch.finfo(d).bits)).removeprefix("torch.")
        else:
            config.dtype = options.dtype
        config.save_pretrained(staging)
        tokenizer_folder = tokenizer or (options.input if options.input.is_dir() else None)
        copied = copy_model_files(tokenizer_folder, staging) if tokenizer_folder else []
        if tokenizer is not None and not copied:
            raise DistilleryError("holds no tokenizer files (tokenizer.json, tokenizer_config.json, ...)", tokenizer)
        return {"tokenizer": str(tokenizer_folder) if copied else None}

    return ConversionPlan(
        tensors=specs,
        reading=lambda staging: nothing_to_open(produce),
        write_model_files=write_model_files,
        source={
            "path": str(options.input.resolve()),
            "type": "torchtitan",
            "layout": checkpoint.layout,
            "naming": layout.naming,
            "family": layout.family,
            "fused_qkv": layout.fused_qkv,
        },
        conversion={
            "dtype": options.dtype,
            "rotary_permuted": layout.family == "llama",
            "max_shard_size": options.max_shard_size,
        },
    )
