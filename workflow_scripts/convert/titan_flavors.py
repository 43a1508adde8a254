"""TorchTitan's model flavors of Llama 3 and Qwen3, as plain model args, and the HF config each one means.

The numbers are those of torchtitan 0.3.0's `llama3_configs` and `qwen3_configs` (the same sizes as the older
`llama3_args` / `qwen3_args`); `tests/test_titan_to_hf.py` checks them against the installed package. A flavor
gives what the tensors cannot tell: head count versus head size, rotary base and scaling, norm epsilon, context
length, and whether embeddings are tied.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..architectures.rope import LLAMA3_ROPE_SCALING
from ..errors import DistilleryError


@dataclass(frozen=True)
class TitanModelArgs:
    """TorchTitan-style model args (the names of its `ModelArgs`)."""

    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    hidden_dim: int | None = None  # Qwen3 gives it; Llama 3 derives it from multiple_of / ffn_dim_multiplier
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 131072
    enable_weight_tying: bool = False

    def ffn_hidden_dim(self) -> int:
        """torchtitan's `compute_ffn_hidden_dim` (SwiGLU: 2/3 of 4*dim, times the multiplier, rounded up)."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


def _llama(**kwargs) -> TitanModelArgs:
    return TitanModelArgs(vocab_size=kwargs.pop("vocab_size", 128256), rope_theta=500000.0, norm_eps=1e-5, **kwargs)


def _qwen3(**kwargs) -> TitanModelArgs:
    defaults = dict(vocab_size=151936, head_dim=128, n_kv_heads=8, rope_theta=1000000.0, norm_eps=1e-6)
    return TitanModelArgs(**{**defaults, "max_seq_len": 40960, **kwargs})


FLAVORS: dict[str, dict[str, TitanModelArgs]] = {
    "llama": {
        "debugmodel": _llama(dim=256, n_layers=6, n_heads=16, vocab_size=2048, multiple_of=256),
        "1B": _llama(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, multiple_of=1024, ffn_dim_multiplier=1.5,
                     enable_weight_tying=True),
        "3B": _llama(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, multiple_of=1024, ffn_dim_multiplier=1.0,
                     enable_weight_tying=True),
        "8B": _llama(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024, ffn_dim_multiplier=1.3),
        "70B": _llama(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096, ffn_dim_multiplier=1.3),
        "405B": _llama(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, multiple_of=4096, ffn_dim_multiplier=1.2),
    },
    "qwen3": {
        "debugmodel": _qwen3(dim=256, n_layers=8, n_heads=16, hidden_dim=3072, vocab_size=2048, max_seq_len=4096,
                             enable_weight_tying=True),
        "0.6B": _qwen3(dim=1024, n_layers=28, n_heads=16, hidden_dim=3072, enable_weight_tying=True),
        "1.7B": _qwen3(dim=2048, n_layers=28, n_heads=16, hidden_dim=6144, enable_weight_tying=True),
        "4B": _qwen3(dim=2560, n_layers=36, n_heads=32, hidden_dim=9728, enable_weight_tying=True),
        "8B": _qwen3(dim=4096, n_layers=36, n_heads=32, hidden_dim=12288),
        "14B": _qwen3(dim=5120, n_layers=40, n_heads=40, hidden_dim=17408),
        "32B": _qwen3(dim=5120, n_layers=64, n_heads=64, hidden_dim=25600),
    },
}  # fmt: skip
_FAMILY_NAMES = {"llama": "Llama 3", "qwen3": "Qwen3"}
_FAMILY_ALIASES = {"llama3": "llama", "llama": "llama", "qwen3": "qwen3"}


def find_flavor(flavor: str, family: str) -> TitanModelArgs:
    """`flavor` ("8B", or "qwen3:8B" / "llama3:8B") of the family the checkpoint's names show."""
    named_family, _, name = flavor.rpartition(":")
    if named_family and named_family not in _FAMILY_ALIASES:
        raise DistilleryError(f"unknown model family {flavor.split(':')[0]!r} in --flavor {flavor}",
                              hint="use llama3:NAME or qwen3:NAME")  # fmt: skip
    named_family = _FAMILY_ALIASES.get(named_family, "")
    if named_family and named_family != family:
        raise DistilleryError(_family_mismatch(named_family, family))
    if name in FLAVORS[family]:
        return FLAVORS[family][name]
    other = "qwen3" if family == "llama" else "llama"
    if name in FLAVORS[other]:
        raise DistilleryError(_family_mismatch(other, family, f"--flavor {flavor} is a {_FAMILY_NAMES[other]} flavor"))
    raise DistilleryError(
        f"unknown {_FAMILY_NAMES[family]} flavor {name!r}", hint=f"choose from {', '.join(FLAVORS[family])}"
    )


def _family_mismatch(claimed: str, found: str, what: str | None = None) -> str:
    what = what or f"it was given as {_FAMILY_NAMES[claimed]}"
    if claimed == "qwen3":
        return f"{what}, but the checkpoint has no q_norm/k_norm weights: it looks like Llama 3"
    return f"{what}, but the checkpoint has q_norm/k_norm weights: it looks like Qwen3"


def check_family(claimed: str, found: str) -> None:
    if claimed != found:
        raise DistilleryError(_family_mismatch(claimed, found))


def hf_config_from_args(args: TitanModelArgs, family: str):
    """The transformers config of a model with these TorchTitan args."""
    from transformers import LlamaConfig, Qwen3Config

    n_kv_heads = args.n_kv_heads or args.n_heads
    common = dict(
        hidden_size=args.dim,
        intermediate_size=args.ffn_hidden_dim(),
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=args.head_dim or args.dim // args.n_heads,
        vocab_size=args.vocab_size,
        rms_norm_eps=args.norm_eps,
        max_position_embeddings=args.max_seq_len,
        tie_word_embeddings=args.enable_weight_tying,
        rope_theta=args.rope_theta,
    )
    if family == "llama":
        config = LlamaConfig(rope_scaling=dict(LLAMA3_ROPE_SCALING), **common)
        config.architectures = ["LlamaForCausalLM"]
    else:
        config = Qwen3Config(**common)
        config.architectures = ["Qwen3ForCausalLM"]
    return config
