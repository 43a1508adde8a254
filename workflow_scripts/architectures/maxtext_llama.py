"""MaxText's Llama models: the sizes users name (`--model-size`), and what MaxText's math implies for an HF config.

Sizes: MaxText's model configs (`configs/models/llama*.yml`: base_emb_dim, base_num_query_heads, ...), the
custom sizes of the MaxText → vLLM migration guide (llama3.1-05b/-1b/-3b), and Meta's Llama 3.2 sizes. A size
outside the table is described by an HF `config.json` (`--config`), which also overrides table entries.

The math that decides the conversion (MaxText `layers/attentions.py`, `layers/embeddings.py`, `nnx_decoders.py`):
- rotary embedding: a model whose name starts with `llama3.1` (or with `rope_type: llama3.1`) uses
  `LLaMARotaryEmbedding`: rotation of adjacent pairs (x0, x1), (x2, x3), ... with Llama 3.1's frequency scaling
  (factor 8, low/high frequency factors 1 and 4, original context 8192, hard-coded); any other Llama uses
  `RotaryEmbedding`: rotation of the two halves of each head, no scaling. HF rotates halves, so a llama3.1
  model's q/k kernels are de-interleaved (evens, then odds) and its config gets `rope_type: llama3` scaling.
- attention logits are q·k without 1/sqrt(head_dim): MaxText folds it into the query kernel (its initializer
  and its HF→MaxText converters divide by sqrt(head_dim)), so the converted q_proj is multiplied by it.
- without `logits_dense` (logits_via_embedding), logits are x·Eᵀ divided by sqrt(emb_dim) when
  `normalize_embedding_logits` (MaxText's default), which HF can only express as an untied lm_head = E/sqrt(emb_dim).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import DistilleryError
from . import facts_cache
from .rope import LLAMA3_ROPE_SCALING

ROPE_TYPES = ("default", "llama3.1")

# (HF name inside model.layers.{i}, MaxText name inside a layer), in the order they are written
LAYER_PARAMS = (
    ("self_attn.q_proj.weight", "self_attention.query.kernel"),
    ("self_attn.k_proj.weight", "self_attention.key.kernel"),
    ("self_attn.v_proj.weight", "self_attention.value.kernel"),
    ("self_attn.o_proj.weight", "self_attention.out.kernel"),
    ("mlp.gate_proj.weight", "mlp.wi_0.kernel"),
    ("mlp.up_proj.weight", "mlp.wi_1.kernel"),
    ("mlp.down_proj.weight", "mlp.wo.kernel"),
    ("input_layernorm.weight", "pre_self_attention_layer_norm.scale"),
    ("post_attention_layernorm.weight", "post_self_attention_layer_norm.scale"),
)


@dataclass(frozen=True)
class LlamaSize:
    """A MaxText Llama size in HF's words (hidden_size = MaxText's emb_dim, and so on)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    bos_token_id: int = 128000
    eos_token_id: int = 128001


def _llama3(hidden, mlp, layers, heads, kv_heads, head_dim=None, max_position=131072) -> LlamaSize:
    return LlamaSize(hidden, mlp, layers, heads, kv_heads, head_dim or hidden // heads, 128256,
                     max_position_embeddings=max_position)  # fmt: skip


def _llama2(hidden, mlp, layers, heads, kv_heads) -> LlamaSize:
    return LlamaSize(hidden, mlp, layers, heads, kv_heads, hidden // heads, 32000, rope_theta=10000.0,
                     max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)  # fmt: skip


SIZES: dict[str, LlamaSize] = {
    "llama2-7b": _llama2(4096, 11008, 32, 32, 32),
    "llama2-13b": _llama2(5120, 13824, 40, 40, 40),
    "llama2-70b": _llama2(8192, 28672, 80, 64, 8),
    "llama3-8b": _llama3(4096, 14336, 32, 32, 8, max_position=8192),
    "llama3-70b": _llama3(8192, 28672, 80, 64, 8, max_position=8192),
    "llama3-405b": _llama3(16384, 53248, 126, 128, 8, max_position=8192),
    "llama3.1-8b": _llama3(4096, 14336, 32, 32, 8),
    "llama3.1-70b": _llama3(8192, 28672, 80, 64, 8),
    "llama3.1-405b": _llama3(16384, 53248, 126, 128, 8),
    "llama3.3-70b": _llama3(8192, 28672, 80, 64, 8),
    # The migration guide's custom sizes (its config.json blocks).
    "llama3.1-05b": _llama3(1024, 8192, 12, 32, 8),
    "llama3.1-1b": _llama3(2048, 8192, 16, 32, 8),
    "llama3.1-3b": _llama3(3072, 8192, 28, 32, 8),
    # Meta's Llama 3.2 shapes; MaxText has no config of its own for them, so its name rule gives them the
    # default rotary embedding (see the module docstring).
    "llama3.2-1b": _llama3(2048, 8192, 16, 32, 8, head_dim=64),
    "llama3.2-3b": _llama3(3072, 8192, 28, 24, 8, head_dim=128),
}

_CONFIG_KEYS = {field for field in LlamaSize.__dataclass_fields__}


def resolve_size(model_size: str, config_path: str | Path | None = None) -> LlamaSize:
    """The table's entry for `model_size`, with the values of an HF config.json (`--config`) laid over it."""
    base = SIZES.get(model_size)
    if config_path is None:
        if base is None:
            raise DistilleryError(
                f"unknown --model-size {model_size!r}",
                hint=f"pass --config with an HF config.json giving its sizes, or one of: {', '.join(SIZES)}",
            )
        return base
    path = Path(config_path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DistilleryError("does not exist", path, "pass an HF config.json with --config") from None
    except json.JSONDecodeError as exc:
        raise DistilleryError(f"is not valid JSON ({exc})", path) from None
    overrides = {key: value for key, value in config.items() if key in _CONFIG_KEYS and value is not None}
    if isinstance(overrides.get("eos_token_id"), list):
        overrides["eos_token_id"] = overrides["eos_token_id"][0]
    if "rope_theta" not in overrides and isinstance(config.get("rope_parameters"), dict):
        theta = config["rope_parameters"].get("rope_theta")
        if theta is not None:
            overrides["rope_theta"] = theta
    if base is None:
        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        missing = [key for key in required if key not in overrides]
        if missing:
            raise DistilleryError(f"lacks {', '.join(missing)} for --model-size {model_size!r}", path)
        overrides.setdefault("num_key_value_heads", overrides["num_attention_heads"])
        overrides.setdefault("head_dim", overrides["hidden_size"] // overrides["num_attention_heads"])
        return LlamaSize(**overrides)
    if "head_dim" not in overrides and ("hidden_size" in overrides or "num_attention_heads" in overrides):
        hidden = overrides.get("hidden_size", base.hidden_size)
        overrides["head_dim"] = hidden // overrides.get("num_attention_heads", base.num_attention_heads)
    return replace(base, **overrides)


def default_rope_type(model_size: str) -> str:
    """The rotary embedding MaxText picks for a model name (attentions.py: `model_name.startswith("llama3.1")`)."""
    return "llama3.1" if model_size.startswith("llama3.1") else "default"


@dataclass(frozen=True)
class MaxTextLlamaMath:
    """What, besides the sizes, decides MaxText's forward pass; recorded in provenance.json for verification."""

    model_size: str
    size: LlamaSize
    rope_type: str  # "llama3.1" (interleaved pairs, scaled) or "default" (halves)
    tied_embeddings: bool  # no logits_dense: logits via the token embedding
    normalize_embedding_logits: bool = True

    def to_dict(self) -> dict:
        return {**asdict(self), "size": asdict(self.size)}

    @classmethod
    def from_dict(cls, data: dict) -> MaxTextLlamaMath:
        return cls(**{**data, "size": LlamaSize(**data["size"])})


def hf_config(math: MaxTextLlamaMath, dtype: str) -> dict:
    """An HF LlamaConfig (as a dict) whose forward pass is MaxText's for these weights; from the facts cache
    (facts_cache.py) where the same math and dtype were converted before, since LlamaConfig imports transformers."""
    size = math.size
    tie = math.tied_embeddings and not math.normalize_embedding_logits
    arguments = {
        **asdict(size),  # LlamaSize's fields are LlamaConfig's keywords
        "rope_scaling": dict(LLAMA3_ROPE_SCALING) if math.rope_type == "llama3.1" else None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tie,
    }
    entry = facts_cache.entry_path("maxtext-hf-config", json.dumps({"arguments": arguments, "dtype": dtype}))
    stored = facts_cache.read_entry(entry)
    if stored is not None:
        return stored
    from transformers import LlamaConfig

    config = LlamaConfig(**arguments)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = dtype
    values = config.to_dict()
    facts_cache.write_entry(entry, values)
    return values


def layer_shapes(math: MaxTextLlamaMath) -> dict[str, tuple[int, ...]]:
    """Shape of each per-layer MaxText parameter (without the layer axis)."""
    s = math.size
    emb, heads, kv, hd, mlp = (
        s.hidden_size,
        s.num_attention_heads,
        s.num_key_value_heads,
        s.head_dim,
        s.intermediate_size,
    )
    return {
        "self_attention.query.kernel": (emb, heads, hd),
        "self_attention.key.kernel": (emb, kv, hd),
        "self_attention.value.kernel": (emb, kv, hd),
        "self_attention.out.kernel": (heads, hd, emb),
        "mlp.wi_0.kernel": (emb, mlp),
        "mlp.wi_1.kernel": (emb, mlp),
        "mlp.wo.kernel": (mlp, emb),
        "pre_self_attention_layer_norm.scale": (emb,),
        "post_self_attention_layer_norm.scale": (emb,),
    }
