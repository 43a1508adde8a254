"""A MaxText checkpoint as the logits reference: MaxText's Llama forward pass in JAX, on its own arrays.

It follows MaxText's code, not HF's: RMSNorm `x * rsqrt(mean(x²) + eps) * scale`; q/k/v as einsums with the
`[emb, heads, head_dim]` kernels; the rotary embedding of `LLaMARotaryEmbedding` (adjacent pairs, Llama 3.1
frequency scaling) or `RotaryEmbedding` (halves); attention logits q·k with no 1/sqrt(head_dim) (it lives in
the query kernel); SiLU(x·wi_0) · (x·wi_1) · wo; logits through `logits_dense`, or through the embedding divided
by sqrt(emb_dim) when `normalize_embedding_logits`. Everything runs in float32 on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..architectures.maxtext_llama import MaxTextLlamaMath
from ..architectures.rope import LLAMA3_ROPE_SCALING
from ..errors import DistilleryError
from ..formats.maxtext import MaxTextCheckpoint


def _timescale(head_dim: int, theta: float, llama31: bool):
    import jax.numpy as jnp

    fraction = 2 * jnp.arange(0, head_dim // 2) / head_dim
    if llama31:
        fraction = jnp.repeat(fraction, 2)
    timescale = theta**fraction
    if llama31:
        timescale = 1.0 / _llama31_scaled(1.0 / timescale)
    return timescale


def _llama31_scaled(freq):
    """LLaMARotaryEmbedding._apply_scaling_factor, vectorised."""
    import jax.numpy as jnp

    factor = LLAMA3_ROPE_SCALING["factor"]
    low, high = LLAMA3_ROPE_SCALING["low_freq_factor"], LLAMA3_ROPE_SCALING["high_freq_factor"]
    old_context = LLAMA3_ROPE_SCALING["original_max_position_embeddings"]
    wavelen = 2 * jnp.pi / freq
    smooth = (old_context / wavelen - low) / (high - low)
    bigger = jnp.where(wavelen > old_context / low, freq / factor, (1 - smooth) * freq / factor + smooth * freq)
    return jnp.where(wavelen < old_context / high, freq, bigger)


def apply_rope(x, positions, math: MaxTextLlamaMath):
    """x: [seq, heads, head_dim]; MaxText's rotary embedding of `math.rope_type`."""
    import jax.numpy as jnp

    head_dim = x.shape[-1]
    llama31 = math.rope_type == "llama3.1"
    angles = positions[:, None, None] / _timescale(head_dim, math.size.rope_theta, llama31)[None, None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    if llama31:
        shifted_left = jnp.concatenate([x[..., 1:], x[..., :1]], axis=-1)
        shifted_right = jnp.concatenate([x[..., -1:], x[..., :-1]], axis=-1)
        shifted = jnp.where(jnp.arange(head_dim) % 2 == 1, shifted_right, shifted_left)
        sign = jnp.tile(jnp.array([-1.0, 1.0]), head_dim // 2)
        return x * cos + shifted * sin * sign
    sin, cos = jnp.concatenate([sin, sin], axis=-1), jnp.concatenate([cos, cos], axis=-1)
    first, second = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-second, first], axis=-1) * sin


def _rms_norm(x, scale, eps):
    import jax.numpy as jnp

    return x * (1.0 / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)) * scale


def maxtext_logits(params: dict[str, np.ndarray], math: MaxTextLlamaMath, token_ids: list[int]) -> np.ndarray:
    """Logits [seq, vocab] of one sequence; `params` maps MaxText names to arrays (scanned or unscanned)."""
    import jax
    import jax.numpy as jnp

    size = math.size
    p = {name: jnp.asarray(np.asarray(array, np.float32)) for name, array in params.items()}
    scanned = "decoder.layers.self_attention.query.kernel" in p

    def layer_param(layer: int, name: str):
        return p[f"decoder.layers.{name}"][:, layer] if scanned else p[f"decoder.layers_{layer}.{name}"]

    ids = jnp.asarray(token_ids)
    positions = jnp.arange(len(token_ids), dtype=jnp.float32)
    x = p["token_embedder.embedding"][ids]
    group = size.num_attention_heads // size.num_key_value_heads
    causal = jnp.tril(jnp.ones((len(token_ids), len(token_ids)), bool))
    with jax.default_matmul_precision("highest"):
        for layer in range(size.num_hidden_layers):
            h = _rms_norm(x, layer_param(layer, "pre_self_attention_layer_norm.scale"), size.rms_norm_eps)
            q = jnp.einsum("se,ehd->shd", h, layer_param(layer, "self_attention.query.kernel"))
            k = jnp.einsum("se,ehd->shd", h, layer_param(layer, "self_attention.key.kernel"))
            v = jnp.einsum("se,ehd->shd", h, layer_param(layer, "self_attention.value.kernel"))
            q, k = apply_rope(q, positions, math), apply_rope(k, positions, math)
            k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)
            scores = jnp.einsum("qhd,khd->hqk", q, k)  # no 1/sqrt(head_dim): it is in the query kernel
            weights = jax.nn.softmax(jnp.where(causal[None], scores, -1e30), axis=-1)
            attended = jnp.einsum("hqk,khd->qhd", weights, v)
            x = x + jnp.einsum("shd,hde->se", attended, layer_param(layer, "self_attention.out.kernel"))
            h = _rms_norm(x, layer_param(layer, "post_self_attention_layer_norm.scale"), size.rms_norm_eps)
            gate = jax.nn.silu(h @ layer_param(layer, "mlp.wi_0.kernel"))
            x = x + (gate * (h @ layer_param(layer, "mlp.wi_1.kernel"))) @ layer_param(layer, "mlp.wo.kernel")
        x = _rms_norm(x, p["decoder.decoder_norm.scale"], size.rms_norm_eps)
        if "decoder.logits_dense.kernel" in p:
            logits = x @ p["decoder.logits_dense.kernel"]
        else:
            logits = x @ p["token_embedder.embedding"].T
            if math.normalize_embedding_logits:
                logits = logits / jnp.sqrt(x.shape[-1])
    return np.asarray(logits, dtype=np.float32)


class MaxTextReference:
    """Callable like an HF model in verify/numerics.py: `reference(batch).logits`, from MaxText's math."""

    description = "MaxText math in JAX on the Orbax arrays"

    def __init__(self, checkpoint_path: str | Path, math: MaxTextLlamaMath) -> None:
        checkpoint = MaxTextCheckpoint(checkpoint_path)
        self.math = math
        self.params = {name: checkpoint.read(name) for name in checkpoint.params}

    def __call__(self, batch):
        import torch

        logits = [maxtext_logits(self.params, self.math, row.tolist()) for row in batch]
        return SimpleNamespace(logits=torch.from_numpy(np.stack(logits)))


def maxtext_math_of(model_path: Path) -> MaxTextLlamaMath | None:
    """The MaxText settings a converted model was made with (its provenance.json), or None."""
    provenance = Path(model_path) / "provenance.json"
    if not provenance.is_file():
        return None
    data = json.loads(provenance.read_text()).get("maxtext")
    return MaxTextLlamaMath.from_dict(data) if data else None


def load_maxtext_reference(reference_path: Path, model_path: Path) -> MaxTextReference:
    """A MaxText checkpoint as reference: its forward pass as MaxText computes it, with the settings the model
    was converted with (its provenance.json)."""
    math = maxtext_math_of(model_path)
    if math is None:
        raise DistilleryError(
            "the reference is a MaxText checkpoint but the model records no MaxText settings in provenance.json",
            model_path,
            "convert it with distillery maxtext-to-hf, or pass an HF reference",
        )
    return MaxTextReference(reference_path, math)
