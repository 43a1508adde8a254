"""The sizes of a tiny model, apart from the code that builds it (which imports torch), so that
`make-tiny-model`'s flags are declared without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..choices import TINY_ARCHITECTURES
from ..setting import setting


@dataclass
class TinyModelSpec:
    """Sizes of a tiny model; the defaults build in well under a second. The fields are make-tiny-model's flags."""

    architecture: str = setting("llama", help="model family", choices=TINY_ARCHITECTURES, config=None)
    hidden_size: int = setting(64, help="hidden size", config=None)
    intermediate_size: int = setting(128, help="MLP size", config=None)
    num_hidden_layers: int = setting(2, help="layers", flag="--num-layers", config=None)
    num_attention_heads: int = setting(4, help="attention heads", flag="--num-heads", config=None)
    num_key_value_heads: int = setting(2, help="KV heads", flag="--num-kv-heads", config=None)
    vocab_size: int = setting(512, help="vocabulary size", config=None)
    max_position_embeddings: int = setting(512, help="context length", config=None)
    tie_word_embeddings: bool | None = None
    extra: dict = field(default_factory=dict)

    def hf_sizes(self) -> dict:
        """The sizes as an HF config's keywords: the size fields are named as HF names them."""
        return {name: value for name, value in asdict(self).items() if name not in _NOT_SIZES}


_NOT_SIZES = ("architecture", "tie_word_embeddings", "extra")
