"""The numeric reference for a model converted from TorchTitan: TorchTitan's own forward on the original weights.

The reference is built with the `torchtitan` package's model code (torchtitan 0.3: its Llama 3 / Qwen3 blocks,
RoPE and flex attention with masks from `get_attention_masks`) from the converted model's config.json, and loaded
with the checkpoint's TorchTitan-named tensors, renamed only to torchtitan 0.3's names (no rotary permutation,
no HF mapping). So the comparison checks distillery's name mapping and rotary permutation against TorchTitan
itself. Without torchtitan installed (`pip install --no-deps torchtitan==0.3.0` plus distillery's `torchtitan`
extra) the check is skipped: there is no other implementation of TorchTitan's forward to compare with.
"""

from __future__ import annotations

import types
from functools import partial
from pathlib import Path

import torch

from ..architectures.architecture import load_config
from ..errors import DistilleryError
from ..formats import titan_names
from ..formats.dcp import TitanCheckpoint
from .numerics import ReferenceUnavailable

# The rotary cache covers the probe prompts; a model's full context (131072 for Llama 3) would only cost memory.
_MAX_PROBE_POSITIONS = 4096


def torchtitan_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchtitan") is not None


def _titan_model_config(config):
    """torchtitan 0.3 model config of the architecture an HF Llama or Qwen3 config describes."""
    from torchtitan.models.common import ComplexRoPE, CosSinRoPE, Embedding, Linear, RMSNorm
    from torchtitan.models.common.attention import FlexAttention
    from torchtitan.models.common.config_utils import make_ffn_config, make_gqa_config

    family = config.model_type
    shape = titan_names.attention_shape(config)
    init = {"weight": partial(torch.nn.init.normal_, std=0.02)}
    ones = {"weight": torch.nn.init.ones_}
    eps = config.rms_norm_eps
    max_seq_len = min(config.max_position_embeddings, _MAX_PROBE_POSITIONS)
    rope_parameters = getattr(config, "rope_parameters", None) or {}
    theta = rope_parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0))

    def norm(size: int) -> RMSNorm.Config:
        return RMSNorm.Config(normalized_shape=size, eps=eps, param_init=ones)

    if family == "llama":
        from torchtitan.models.llama3 import Llama3Model
        from torchtitan.models.llama3.model import Llama3TransformerBlock as Block

        model_class = Llama3Model
        scaling = {}
        if rope_parameters.get("rope_type") == "llama3":
            scaling = dict(
                scaling="llama",
                scaling_factor=rope_parameters["factor"],
                low_freq_factor=rope_parameters["low_freq_factor"],
                high_freq_factor=rope_parameters["high_freq_factor"],
                original_max_position_embeddings=rope_parameters["original_max_position_embeddings"],
            )
        elif rope_parameters.get("rope_type", "default") != "default":
            raise DistilleryError(f"rope_type {rope_parameters['rope_type']!r} has no TorchTitan counterpart")
        rope = ComplexRoPE.Config(dim=shape.head_dim, max_seq_len=max_seq_len, theta=theta, **scaling)
        qk_norm, head_dim = None, None
    elif family == "qwen3":
        from torchtitan.models.qwen3 import Qwen3Model
        from torchtitan.models.qwen3.model import Qwen3TransformerBlock as Block

        model_class = Qwen3Model
        rope = CosSinRoPE.Config(dim=shape.head_dim, max_seq_len=max_seq_len, theta=theta)
        qk_norm, head_dim = norm(shape.head_dim), shape.head_dim
    else:
        raise DistilleryError(f"model_type {family!r} is not a TorchTitan Llama 3 or Qwen3")
    layers = [
        Block.Config(
            attention_norm=norm(config.hidden_size),
            ffn_norm=norm(config.hidden_size),
            attention=make_gqa_config(
                dim=config.hidden_size,
                n_heads=shape.n_heads,
                n_kv_heads=shape.n_kv_heads,
                head_dim=head_dim,
                wqkv_param_init=init,
                wo_param_init=init,
                inner_attention=FlexAttention.Config(),
                fuse_qkv=False,
                rope=rope,
                qk_norm=qk_norm,
            ),
            feed_forward=make_ffn_config(
                dim=config.hidden_size, hidden_dim=config.intermediate_size, w1_param_init=init, w2w3_param_init=init
            ),
        )  # fmt: skip
        for _ in range(config.num_hidden_layers)
    ]
    return model_class.Config(
        dim=config.hidden_size,
        vocab_size=config.vocab_size,
        enable_weight_tying=bool(config.tie_word_embeddings),
        tok_embeddings=Embedding.Config(num_embeddings=config.vocab_size, embedding_dim=config.hidden_size,
                                        param_init=init),
        norm=norm(config.hidden_size),
        lm_head=Linear.Config(in_features=config.hidden_size, out_features=config.vocab_size, param_init=init),
        layers=layers,
    )  # fmt: skip


def _titan_03_state_dict(checkpoint: TitanCheckpoint, config, tied: bool) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under torchtitan 0.3's (unfused) names, in float32."""
    layout = titan_names.detect_layout(checkpoint.tensors, checkpoint.path)
    shape = titan_names.attention_shape(config)
    state: dict[str, torch.Tensor] = {}
    for name in checkpoint.tensors:
        if titan_names.hf_name(name) is None:
            continue
        tensor = checkpoint.tensors[name].load().float()
        if titan_names.FUSED_QKV in name:
            state.update(zip(titan_names.fused_parts(name), titan_names.split_fused_qkv(tensor, shape), strict=True))
            continue
        if layout.naming == titan_names.GUIDE:
            name = re_guide_attention(name)
            name = "lm_head." + name.removeprefix("output.") if name.startswith("output.") else name
        state[name] = tensor
    if tied:
        state.setdefault("lm_head.weight", state.get("tok_embeddings.weight"))
        state.setdefault("tok_embeddings.weight", state["lm_head.weight"])
    return state


def re_guide_attention(name: str) -> str:
    """`layers.N.attention.wq` (guide) → `layers.N.attention.qkv_linear.wq` (torchtitan 0.3)."""
    for part in ("wq", "wk", "wv"):
        name = name.replace(f".attention.{part}.", f".attention.qkv_linear.{part}.")
    return name


class TitanReference(torch.nn.Module):
    """TorchTitan's model behind the interface the logits check uses: `reference(ids).logits`."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor):
        positions = torch.arange(tokens.shape[1]).unsqueeze(0)
        logits = self.model(tokens, positions, self.model.get_attention_masks(positions))
        return types.SimpleNamespace(logits=logits)


def load_titan_reference(checkpoint_path: Path, config_folder: Path) -> TitanReference:
    """TorchTitan's model of `config_folder`'s config.json with the weights of `checkpoint_path`, in float32."""
    if not torchtitan_available():
        # A TorchTitan checkpoint's forward exists only in torchtitan's own model code.
        raise ReferenceUnavailable(
            "the reference is a TorchTitan checkpoint and torchtitan is not installed (pip install --no-deps "
            "torchtitan==0.3.0 and distillery's [torchtitan] extra to compare with its forward)"
        )
    config = load_config(config_folder)
    model_config = _titan_model_config(config)
    with torch.device("meta"):
        model = model_config.build()
    model.to_empty(device="cpu")
    model.init_states(buffer_device=torch.device("cpu"))  # the rotary cache; the weights are replaced below
    state = _titan_03_state_dict(TitanCheckpoint(checkpoint_path), config, bool(config.tie_word_embeddings))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DistilleryError(
            f"TorchTitan's model of {config_folder / 'config.json'} cannot take its weights "
            f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})",
            checkpoint_path,
        ) from None
    return TitanReference(model).eval()
