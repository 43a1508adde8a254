"""titan-dcp: the HF folder as a TorchTitan checkpoint step folder, in torchtitan 0.3's names and rotary layout.

What TorchTitan's own `Llama3StateDictAdapter.from_hf` / `Qwen3StateDictAdapter.from_hf` make of an HF state dict,
saved with torch.distributed.checkpoint as TorchTitan's checkpointer saves a model-only step: HF names become
TorchTitan's (`formats/titan_names.py`, the table `titan-to-hf` reads the other way), a Llama's q and k rows are
permuted from HF's half rotary order back to TorchTitan's adjacent pairs, and a tied model stores `lm_head.weight`
beside `tok_embeddings.weight`, as TorchTitan's state dict lists both. The folder also holds the HF config.json
and tokenizer, as TorchTitan's vLLM guide puts them there, so `distillery titan-to-hf` needs no --config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DistilleryError
from ..formats import titan_names as names
from ..formats.dcp_writer import write_dcp
from ..formats.safetensors_file import TensorSpec
from .options import LayOutOptions
from .source import HFSource

# TorchTitan's rotary embeddings: Llama 3's ComplexRoPE takes Llama 3.1 scaling or none; Qwen3's CosSinRoPE none.
_ROPE_TYPES = {"llama": ("default", "llama3"), "qwen3": ("default",)}


@dataclass(frozen=True)
class TitanTensor:
    spec: TensorSpec  # under its TorchTitan name
    hf_name: str
    rotary_heads: int | None  # q or k of a Llama: the heads whose rows are permuted


def check_titan(source: HFSource) -> None:
    """Refuse a model TorchTitan's Llama 3 and Qwen3 cannot hold, before anything is written."""
    family = source.model_type
    if family not in _ROPE_TYPES:
        raise DistilleryError(
            f"is a {family} model; TorchTitan checkpoints are written for llama and qwen3",
            source.folder / "config.json",
        )
    rope = getattr(source.config, "rope_parameters", None) or getattr(source.config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type not in _ROPE_TYPES[family]:
        raise DistilleryError(
            f"has rope_type {rope_type!r}, which TorchTitan's {family} has no rotary embedding for",
            source.folder / "config.json",
        )
    titan_tensors(source)


def titan_tensors(source: HFSource) -> list[TitanTensor]:
    """Every tensor under its TorchTitan name, in the model's order (a tied lm_head after the rest)."""
    shape = names.attention_shape(source.config)
    planned = []
    for spec in source.specs:
        titan = names.titan_name(spec.name, names.TITAN_03)
        if names.hf_name(titan) != spec.name:
            raise DistilleryError(
                f"holds {spec.name}, which TorchTitan's {source.model_type} has no place for",
                source.folder,
                "TorchTitan's Llama 3 and Qwen3 have no biases or extra tensors",
            )
        part = names.is_rotary_projection(titan) if source.model_type == "llama" else None
        heads = {"q": shape.n_heads, "k": shape.n_kv_heads}.get(part)
        planned.append(TitanTensor(TensorSpec(titan, spec.dtype, spec.shape), spec.name, heads))
    for alias, origin in source.tied.items():
        tied = next(p for p in planned if p.hf_name == origin)
        titan = names.titan_name(alias, names.TITAN_03)
        planned.append(TitanTensor(TensorSpec(titan, tied.spec.dtype, tied.spec.shape), origin, None))
    return planned


def write_titan_dcp(source: HFSource, staging: Path, options: LayOutOptions, progress) -> dict:
    planned = {p.spec.name: p for p in titan_tensors(source)}

    def produce(spec: TensorSpec) -> torch.Tensor:
        tensor = planned[spec.name]
        weight = source.load(tensor.hf_name)
        if tensor.rotary_heads is not None:
            weight = names.permute_for_titan_rotary(weight, tensor.rotary_heads)
        return weight

    write_dcp(staging, [p.spec for p in planned.values()], produce, progress)
    return {
        "naming": names.TITAN_03,
        "family": source.model_type,
        "rotary_permuted": source.model_type == "llama",
        "tensors": {name: p.hf_name for name, p in planned.items()},
    }
