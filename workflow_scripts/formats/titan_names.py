"""TorchTitan parameter names and layouts of Llama 3 and Qwen3, and how each becomes its Hugging Face counterpart.

Two generations of names exist, and both are read:
- `guide`: the naming of TorchTitan's vLLM guide and of torchtitan up to 0.2: `tok_embeddings`,
  `layers.N.attention.wq/wk/wv/wo`, `attention.q_norm/k_norm` (Qwen3), `feed_forward.w1/w2/w3`,
  `attention_norm`, `ffn_norm`, `norm`, `output`;
- `titan-0.3`: torchtitan 0.3's `layers.N.attention.qkv_linear.wq/wk/wv` and `lm_head`, where the fused-QKV
  flavors store (through their state-dict hooks) the same three tensors, or, where a checkpoint bypassed the
  hooks, one `qkv_linear.wqkv` laid out as (n_kv_heads, heads_per_kv + 2, head_dim, dim).

The renaming is plain data, applied with the semantics of vLLM's `WeightsMapper` (each matching substring
entry in order, first occurrence only, then each matching prefix entry), so `TITAN_TO_HF_SUBSTR` and
`TITAN_TO_HF_PREFIX` are handed to vLLM unchanged by `workflow_scripts.vllm_models`.

Two things a renaming cannot do are tensor transforms here: splitting a fused `wqkv`, and the rotary layout.
TorchTitan's Llama 3 rotates adjacent pairs (complex RoPE); HF and vLLM rotate halves, so Llama's q and k rows
are permuted exactly as HF's `convert_llama_weights_to_hf.py` does. Qwen3 in TorchTitan already rotates halves
(cos/sin RoPE), so its weights are copied unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ..errors import DistilleryError

GUIDE, TITAN_03 = "guide", "titan-0.3"

# (TorchTitan substring, HF substring, naming it belongs to; None: both). Longest TorchTitan forms first.
_SUBSTR_ENTRIES: list[tuple[str, str, str | None]] = [
    (".attention.qkv_linear.wq.", ".self_attn.q_proj.", TITAN_03),
    (".attention.qkv_linear.wk.", ".self_attn.k_proj.", TITAN_03),
    (".attention.qkv_linear.wv.", ".self_attn.v_proj.", TITAN_03),
    (".attention.wq.", ".self_attn.q_proj.", GUIDE),
    (".attention.wk.", ".self_attn.k_proj.", GUIDE),
    (".attention.wv.", ".self_attn.v_proj.", GUIDE),
    (".attention.wo.", ".self_attn.o_proj.", None),
    (".attention.q_norm.", ".self_attn.q_norm.", None),
    (".attention.k_norm.", ".self_attn.k_norm.", None),
    (".attention_norm.", ".input_layernorm.", None),
    (".ffn_norm.", ".post_attention_layernorm.", None),
    (".feed_forward.w1.", ".mlp.gate_proj.", None),
    (".feed_forward.w2.", ".mlp.down_proj.", None),
    (".feed_forward.w3.", ".mlp.up_proj.", None),
]
_PREFIX_ENTRIES: list[tuple[str, str, str | None]] = [
    ("tok_embeddings.", "model.embed_tokens.", None),
    ("layers.", "model.layers.", None),
    ("norm.", "model.norm.", None),
    ("output.", "lm_head.", GUIDE),
]
# Rotary caches are recomputed by every loader (persistent only in some old releases).
_DROPPED_SUBSTR = ("freqs_cis", "rope_cache", ".rope.cache")

TITAN_TO_HF_SUBSTR: dict[str, str | None] = {
    **{titan: hf for titan, hf, _ in _SUBSTR_ENTRIES},
    **dict.fromkeys(_DROPPED_SUBSTR),
}
TITAN_TO_HF_PREFIX: dict[str, str | None] = {titan: hf for titan, hf, _ in _PREFIX_ENTRIES}

FUSED_QKV = ".attention.qkv_linear.wqkv."


def hf_name(titan_name: str) -> str | None:
    """The HF name of a TorchTitan tensor (None: dropped), by vLLM WeightsMapper's rules on the tables above."""
    key = titan_name
    for substr, new in TITAN_TO_HF_SUBSTR.items():
        if substr in key:
            if new is None:
                return None
            key = key.replace(substr, new, 1)
    for prefix, new in TITAN_TO_HF_PREFIX.items():
        if key.startswith(prefix):
            if new is None:
                return None
            key = key.replace(prefix, new, 1)
    return key


def titan_name(hf: str, naming: str) -> str:
    """The TorchTitan name a checkpoint of `naming` gives the HF tensor `hf` (for messages about missing keys, and
    for laying an HF model out in TorchTitan's names, layouts/titan.py)."""
    key = hf
    if hf == "lm_head.weight":
        return "output.weight" if naming == GUIDE else "lm_head.weight"
    for titan, new, owner in _PREFIX_ENTRIES:
        if owner in (None, naming) and key.startswith(new):
            key = titan + key[len(new) :]
            break
    for titan, new, owner in _SUBSTR_ENTRIES:
        if owner in (None, naming) and new in key:
            key = key.replace(new, titan, 1)
            break
    return key


@dataclass(frozen=True)
class TitanLayout:
    """What a checkpoint's names say: which naming generation, which model family, fused QKV or not."""

    naming: str  # GUIDE | TITAN_03
    family: str  # llama | qwen3
    fused_qkv: bool

    @property
    def describe(self) -> str:
        names = "TorchTitan vLLM-guide names" if self.naming == GUIDE else "torchtitan 0.3 names"
        return (
            f"{'Qwen3' if self.family == 'qwen3' else 'Llama 3'} with {names}{', fused QKV' if self.fused_qkv else ''}"
        )


def detect_layout(names: Iterable[str], path) -> TitanLayout:
    names = list(names)
    if any(name.startswith(("model.embed_tokens.", "model.layers.")) for name in names):
        raise DistilleryError(
            "has Hugging Face tensor names (model.embed_tokens, model.layers.N), not TorchTitan's",
            path,
            "use `distillery consolidate` for HF checkpoints",
        )
    fused = any(FUSED_QKV in name for name in names)
    if fused or any(".attention.qkv_linear." in name for name in names) or "lm_head.weight" in names:
        naming = TITAN_03
    elif any(".attention.wq." in name for name in names) or "output.weight" in names:
        naming = GUIDE
    else:
        sample = ", ".join(sorted(names)[:3])
        raise DistilleryError(
            f"has no TorchTitan attention weights (layers.N.attention.wq or qkv_linear.wq); it holds {sample}, ...",
            path,
            "is this a TorchTitan Llama 3 or Qwen3 checkpoint?",
        )
    family = "qwen3" if any(".attention.q_norm." in name for name in names) else "llama"
    return TitanLayout(naming, family, fused)


@dataclass(frozen=True)
class AttentionShape:
    n_heads: int
    n_kv_heads: int
    head_dim: int


def attention_shape(config) -> AttentionShape:
    """Head counts and head size of an HF config (object or dict)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    n_heads = get("num_attention_heads")
    head_dim = get("head_dim") or get("hidden_size") // n_heads
    return AttentionShape(n_heads, get("num_key_value_heads") or n_heads, head_dim)


def permute_for_hf_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q or k projection from adjacent-pair rotary order (TorchTitan's Llama) to HF's half order.

    The permutation of HF's `convert_llama_weights_to_hf.py`: within each head, row 2i (the real part of pair i)
    moves to i and row 2i+1 (its imaginary part) to head_dim/2 + i.
    """
    rows, columns = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, columns).transpose(1, 2).reshape(rows, columns).contiguous()


def permute_for_titan_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of an HF q or k projection from HF's half order back to TorchTitan's Llama adjacent-pair order.

    The inverse of `permute_for_hf_rotary`: torchtitan's own `Llama3StateDictAdapter.from_hf` (`_reverse_permute`).
    """
    rows, columns = weight.shape
    return weight.view(n_heads, 2, rows // n_heads // 2, columns).transpose(1, 2).reshape(rows, columns).contiguous()


def split_fused_qkv(weight: torch.Tensor, shape: AttentionShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchtitan 0.3's fused `wqkv` (n_kv_heads, heads_per_kv + 2, head_dim, dim) into stock wq, wk, wv."""
    per_kv = shape.n_heads // shape.n_kv_heads
    grouped = weight.reshape(shape.n_kv_heads, per_kv + 2, shape.head_dim, *weight.shape[1:])
    tail = weight.shape[1:]
    return (
        grouped[:, :per_kv].reshape(-1, *tail).contiguous(),
        grouped[:, per_kv].reshape(-1, *tail).contiguous(),
        grouped[:, per_kv + 1].reshape(-1, *tail).contiguous(),
    )


def fused_parts(fused_name: str) -> tuple[str, str, str]:
    """The stock wq, wk, wv names a fused `wqkv` tensor stands for."""
    return tuple(fused_name.replace(".wqkv.", f".{part}.") for part in ("wq", "wk", "wv"))  # type: ignore[return-value]


def is_rotary_projection(name: str) -> str | None:
    """'q' or 'k' for a TorchTitan q or k projection weight (the tensors the rotary permutation touches)."""
    for part in ("q", "k"):
        if name.endswith((f".attention.w{part}.weight", f".attention.qkv_linear.w{part}.weight")):
            return part
    return None


def titan_weights_as_hf_layout(
    weights: Iterable[tuple[str, torch.Tensor]], family: str, shape: AttentionShape
) -> Iterator[tuple[str, torch.Tensor]]:
    """TorchTitan-named tensors with the tensor transforms applied (fused QKV split, Llama's rotary permutation),
    still under TorchTitan names, so that a pure renaming (`hf_name`, or vLLM's WeightsMapper) finishes the job."""
    for name, tensor in weights:
        if FUSED_QKV in name and name.endswith(".weight"):
            pieces = zip(fused_parts(name), split_fused_qkv(tensor, shape), strict=True)
        else:
            pieces = [(name, tensor)]
        for piece_name, piece in pieces:
            part = is_rotary_projection(piece_name)
            if family == "llama" and part is not None:
                piece = permute_for_hf_rotary(piece, shape.n_heads if part == "q" else shape.n_kv_heads)
            yield piece_name, piece
