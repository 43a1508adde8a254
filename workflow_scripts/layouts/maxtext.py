"""maxtext: an HF Llama folder as a MaxText param-only checkpoint with scanned layers (`DIR/0/items`).

The transforms are those of MaxText's own HF→MaxText converter (`llama_or_mistral_ckpt.convert_to_jax_weights`),
each the inverse of what `distillery maxtext-to-hf` undoes (architectures/maxtext_llama.py says why):
kernels are the HF weights transposed and split into heads, the query kernel carries 1/sqrt(head_dim), and a
model with Llama 3.1 rope scaling (MaxText's `llama3.1` names) has its q/k heads interleaved into adjacent pairs.
Layers are stacked on axis 1 (`scan_layers`, MaxText's default), one layer written at a time. A tied model is
written with `logits_via_embedding` and without `normalize_embedding_logits` (no `logits_dense`), the MaxText
model that computes the same logits. Values keep the HF folder's dtype. config.json and the tokenizer lie beside
`0/`, for `maxtext-to-hf --config` and `--tokenizer-path`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..architectures.maxtext_llama import LAYER_PARAMS, MaxTextLlamaMath, layer_shapes, resolve_size
from ..architectures.rope import LLAMA3_ROPE_SCALING
from ..errors import DistilleryError
from ..formats.maxtext_writer import ParamOnlyWriter, as_numpy, zstd_metadata
from .options import LayOutOptions
from .source import HFSource

# The model names `maxtext-to-hf --model-size` takes for such a checkpoint: MaxText picks its rotary embedding by
# whether the name starts with llama3.1; the sizes come from --config.
MODEL_SIZES = {"default": "llama-from-hf", "llama3.1": "llama3.1-from-hf"}
_CHUNK_BYTES = 32 << 20


def maxtext_math(source: HFSource) -> MaxTextLlamaMath:
    """MaxText's description of the HF model; refuses what MaxText's Llama cannot compute."""
    config, path = source.config, source.folder / "config.json"
    if source.model_type != "llama":
        raise DistilleryError(f"is a {source.model_type} model; MaxText checkpoints are written for llama", path)
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise DistilleryError("has attention or MLP biases, which MaxText's Llama has no place for", path)
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.pop("rope_theta", None)
    if rope.get("rope_type", "default") == "default":
        rope_type = "default"
    elif rope == LLAMA3_ROPE_SCALING:
        rope_type = "llama3.1"
    else:
        raise DistilleryError(
            f"has rope scaling {rope}; MaxText's Llama has none or Llama 3.1's ({LLAMA3_ROPE_SCALING})", path
        )
    model_size = MODEL_SIZES[rope_type]
    size = resolve_size(model_size, path)
    return MaxTextLlamaMath(model_size, size, rope_type, bool(source.tied), normalize_embedding_logits=False)


def _interleave(kernel: torch.Tensor) -> torch.Tensor:
    """HF's rotary halves -> MaxText llama3.1's adjacent pairs: the first half to even places, the second to odd."""
    half = kernel.shape[-1] // 2
    paired = torch.empty_like(kernel)
    paired[..., 0::2], paired[..., 1::2] = kernel[..., :half], kernel[..., half:]
    return paired


def maxtext_layer_tensor(mt_name: str, weight: torch.Tensor, math_: MaxTextLlamaMath) -> torch.Tensor:
    """One layer's HF weight -> MaxText's array for it (without the layer axis), in the weight's dtype."""
    size = math_.size
    if mt_name in ("self_attention.query.kernel", "self_attention.key.kernel", "self_attention.value.kernel"):
        tensor = weight.T.reshape(size.hidden_size, -1, size.head_dim)
    elif mt_name == "self_attention.out.kernel":
        tensor = weight.T.reshape(size.num_attention_heads, size.head_dim, size.hidden_size)
    elif mt_name.startswith("mlp."):
        tensor = weight.T
    else:
        tensor = weight
    if mt_name in ("self_attention.query.kernel", "self_attention.key.kernel") and math_.rope_type == "llama3.1":
        tensor = _interleave(tensor)
    if mt_name == "self_attention.query.kernel":
        # MaxText's attention does not divide q·k by sqrt(head_dim): its query kernel carries the factor.
        tensor = (tensor.float() / math.sqrt(size.head_dim)).to(weight.dtype)
    return tensor.contiguous()


def _rows_per_chunk(shape: tuple[int, ...], itemsize: int) -> int:
    row_bytes = math.prod(shape[1:]) * itemsize
    return max(1, min(shape[0], _CHUNK_BYTES // max(row_bytes, 1)))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_maxtext(source: HFSource, staging: Path, options: LayOutOptions, progress) -> dict:
    math_ = maxtext_math(source)
    writer = ParamOnlyWriter(staging / "0")
    specs = {spec.name: spec for spec in source.specs}
    layers = math_.size.num_hidden_layers

    def whole(name: str, hf_name: str, transpose: bool = False) -> None:
        weight = source.load(hf_name)
        weight = weight.T.contiguous() if transpose else weight
        shape = tuple(weight.shape)
        chunk = [_rows_per_chunk(shape, weight.element_size()), *shape[1:]]
        array = writer.create(name, zstd_metadata(list(shape), _dtype_name(weight.dtype), chunk))
        array.write(as_numpy(weight)).result()
        progress(specs[hf_name])

    whole("token_embedder.embedding", "model.embed_tokens.weight")
    for hf_suffix, mt_name in LAYER_PARAMS:
        shape = layer_shapes(math_)[mt_name]
        dtype = specs[f"model.layers.0.{hf_suffix}"].dtype
        stacked = (shape[0], layers, *shape[1:])
        array = writer.create(
            f"decoder.layers.{mt_name}", zstd_metadata(list(stacked), _dtype_name(dtype), [shape[0], 1, *shape[1:]])
        )
        for layer in range(layers):
            hf_name = f"model.layers.{layer}.{hf_suffix}"
            array[:, layer].write(as_numpy(maxtext_layer_tensor(mt_name, source.load(hf_name), math_))).result()
            progress(specs[hf_name])
    whole("decoder.decoder_norm.scale", "model.norm.weight")
    if not math_.tied_embeddings:
        whole("decoder.logits_dense.kernel", "lm_head.weight", transpose=True)
    writer.finish()
    return {"maxtext": math_.to_dict(), "scan_layers": True, "items": "0/items"}
