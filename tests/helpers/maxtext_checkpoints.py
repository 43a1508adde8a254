"""Real MaxText Orbax checkpoints for the tests, made with MaxText's own code (maxtext 0.2.5, on the CPU).

Param-only checkpoints come from MaxText's HF→MaxText converter (`llama_or_mistral_ckpt.convert_to_jax_weights`
+ `save_weights_to_checkpoint`), full training states from MaxText's `checkpointing.save_checkpoint` with a
Linen TrainState and an AdamW optimizer state, as `train.py` saves them. Tiny sizes are added to the
converter's size table the way MaxText's own table lists them.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def register_size(model_size: str, layers: int, heads: int, kv_heads: int, head_dim: int, vocab: int) -> None:
    from maxtext.checkpoint_conversion.standalone_scripts import llama_or_mistral_ckpt

    llama_or_mistral_ckpt.MODEL_PARAMS_DICT[model_size] = {
        "num_layers": layers, "num_heads": heads, "num_kv_heads": kv_heads, "dims_per_head": head_dim, "vocab": vocab,
    }  # fmt: skip


def hf_to_maxtext_weights(hf_folder: Path, model_size: str) -> dict:
    """MaxText's converter: an HF Llama folder -> MaxText's (scanned) parameter tree of bfloat16 arrays."""
    from maxtext.checkpoint_conversion.standalone_scripts import llama_or_mistral_ckpt

    return llama_or_mistral_ckpt.convert_to_jax_weights(str(hf_folder), model_size, huggingface_ckpt=True)


def save_param_only(path: Path, weights: dict) -> Path:
    """As the converter saves: a TrainState of step 0 without optimizer state, at PATH/0/items."""
    from maxtext.checkpoint_conversion.utils.utils import save_weights_to_checkpoint

    save_weights_to_checkpoint(str(path), weights, 1, True, True)
    return path / "0" / "items"


def save_full_state(path: Path, weights: dict, step: int) -> Path:
    """As MaxText's training loop saves: params (float32), AdamW state and step at PATH/STEP/items."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax.training import train_state
    from maxtext.common import checkpointing

    params = jax.tree.map(lambda array: jnp.asarray(array, jnp.float32), {"params": weights})
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adamw(1e-3)).replace(step=step)
    manager = checkpointing.create_orbax_checkpoint_manager(str(path), True, False, 1)
    checkpointing.save_checkpoint(manager, step, state)
    checkpointing.wait_until_finished(manager)
    return path / str(step) / "items"


def unscan(weights: dict, drop_layer: int | None = None) -> dict:
    """The same model with `scan_layers=false`: decoder.layers_{i} without the layer axis (axis 1)."""
    import numpy as np

    decoder = dict(weights["decoder"])
    stacked = decoder.pop("layers")
    layers = stacked["pre_self_attention_layer_norm"]["scale"].shape[1]

    def take(tree, i):
        return {k: take(v, i) if isinstance(v, dict) else np.take(v, i, axis=1) for k, v in tree.items()}

    for i in range(layers):
        if i != drop_layer:
            decoder[f"layers_{i}"] = take(stacked, i)
    return {**weights, "decoder": decoder}


def tie_to_embedding(weights: dict) -> dict:
    """The same model with logits_via_embedding: no decoder.logits_dense."""
    decoder = {k: v for k, v in weights["decoder"].items() if k != "logits_dense"}
    return {**weights, "decoder": decoder}
