"""Tiny TorchTitan Llama 3 and Qwen3 models built with the `torchtitan` package's own model code (0.3.0).

Used by the tests and by benchmarks/titan_vllm.py: a model is built from torchtitan's own layer builders
(`_build_llama3_layers`, `_build_qwen3_layers`, the ones its flavors use), its state dict is taken as TorchTitan
saves it, and its forward (flex attention, masks from `get_attention_masks`) is the reference the HF conversion
must reproduce. The `guide` naming (TorchTitan's vLLM guide, torchtitan <= 0.2) holds the same tensors under
older names: `attention.wq` for `attention.qkv_linear.wq`, `output` for `lm_head`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class TinyTitanSpec:
    family: str = "qwen3"  # llama | qwen3
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    hidden_dim: int = 128
    vocab_size: int = 512
    fuse_qkv: bool = False
    tie: bool = False
    max_seq_len: int = 512


def build_titan_model(spec: TinyTitanSpec, seed: int = 0):
    """A torchtitan model with random weights (TorchTitan's own initialisation), in float32 on the CPU."""
    from torchtitan.models.common import ComplexRoPE, CosSinRoPE, Embedding, Linear

    init = {"weight": lambda t: torch.nn.init.normal_(t, std=0.02)}
    norm_init = {"weight": lambda t: torch.nn.init.normal_(t, mean=1.0, std=0.1)}  # not all ones, so norms count
    if spec.family == "llama":
        from torchtitan.models.common import RMSNorm
        from torchtitan.models.llama3 import Llama3Model, _build_llama3_layers

        layers = _build_llama3_layers(
            n_layers=spec.n_layers, dim=spec.dim, n_heads=spec.n_heads, n_kv_heads=spec.n_kv_heads,
            hidden_dim=spec.hidden_dim, fuse_qkv=spec.fuse_qkv, attn_backend="flex",
            rope=ComplexRoPE.Config(dim=spec.dim // spec.n_heads, max_seq_len=spec.max_seq_len, theta=500000,
                                    scaling="llama"),
        )  # fmt: skip
        config = Llama3Model.Config(
            dim=spec.dim, vocab_size=spec.vocab_size, enable_weight_tying=spec.tie, layers=layers,
            tok_embeddings=Embedding.Config(num_embeddings=spec.vocab_size, embedding_dim=spec.dim, param_init=init),
            norm=RMSNorm.Config(normalized_shape=spec.dim, param_init=norm_init),
            lm_head=Linear.Config(in_features=spec.dim, out_features=spec.vocab_size, param_init=init),
        )  # fmt: skip
    else:
        from torchtitan.models.qwen3 import Qwen3Model, _build_qwen3_layers, _qwen3_norm

        layers = _build_qwen3_layers(
            n_layers=spec.n_layers, dim=spec.dim, n_heads=spec.n_heads, n_kv_heads=spec.n_kv_heads,
            head_dim=spec.head_dim, hidden_dim=spec.hidden_dim, fuse_qkv=spec.fuse_qkv, attn_backend="flex",
            rope=CosSinRoPE.Config(dim=spec.head_dim, max_seq_len=spec.max_seq_len, theta=1000000.0),
        )  # fmt: skip
        config = Qwen3Model.Config(
            dim=spec.dim, vocab_size=spec.vocab_size, enable_weight_tying=spec.tie, layers=layers,
            tok_embeddings=Embedding.Config(num_embeddings=spec.vocab_size, embedding_dim=spec.dim, param_init=init),
            norm=_qwen3_norm(spec.dim),
            lm_head=Linear.Config(in_features=spec.dim, out_features=spec.vocab_size, param_init=init),
        )  # fmt: skip
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = config.build()
    model.to_empty(device="cpu")
    model.init_states(buffer_device=torch.device("cpu"))
    with torch.no_grad():  # random norm weights (TorchTitan inits them to ones, which would hide a swapped norm)
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
    return model.eval()


def titan_state_dict(model, naming: str = "titan-0.3", fused_raw: bool = False) -> dict[str, torch.Tensor]:
    """The model's tensors as TorchTitan saves them (`state_dict()`, whose hooks split a fused wqkv), or with
    `fused_raw` the raw parameters (a fused model's `qkv_linear.wqkv`), under `naming`'s names."""
    state = dict(model.named_parameters()) if fused_raw else model.state_dict()
    state = {name: tensor.detach().clone() for name, tensor in state.items()}
    if fused_raw and model.enable_weight_tying:
        state["tok_embeddings.weight"] = state["lm_head.weight"]  # named_parameters lists a shared one once
    if naming == "guide":
        state = {_guide_name(name): tensor for name, tensor in state.items()}
    return state


def _guide_name(name: str) -> str:
    name = name.replace(".attention.qkv_linear.", ".attention.")
    return "output." + name.removeprefix("lm_head.") if name.startswith("lm_head.") else name


def save_dcp(state: dict[str, torch.Tensor], folder: Path) -> Path:
    """Save with torch.distributed.checkpoint, as TorchTitan's checkpointer does (one process here)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)
    return folder


@torch.no_grad()
def titan_logits(model, token_ids: list[int]) -> torch.Tensor:
    """TorchTitan's own forward: positions 0..L-1 and the attention masks of `get_attention_masks`."""
    tokens = torch.tensor([token_ids])
    positions = torch.arange(len(token_ids)).unsqueeze(0)
    return model(tokens, positions, model.get_attention_masks(positions)).float()


def hf_config_json(spec: TinyTitanSpec, architecture: str | None = None) -> dict:
    """The HF config.json the tiny model corresponds to (what a user passes as --config)."""
    head_dim = spec.head_dim if spec.family == "qwen3" else spec.dim // spec.n_heads
    config = {
        "model_type": spec.family,
        "architectures": [architecture or ("Qwen3ForCausalLM" if spec.family == "qwen3" else "LlamaForCausalLM")],
        "hidden_size": spec.dim,
        "intermediate_size": spec.hidden_dim,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": head_dim,
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": 131072 if spec.family == "llama" else spec.max_seq_len,
        "rms_norm_eps": 1e-5 if spec.family == "llama" else 1e-6,
        "rope_theta": 500000.0 if spec.family == "llama" else 1000000.0,
        "tie_word_embeddings": spec.tie,
        "hidden_act": "silu",
        "bos_token_id": 0,
        "eos_token_id": 2,
    }
    if spec.family == "llama":
        config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    return config


def write_config(spec: TinyTitanSpec, path: Path, architecture: str | None = None) -> Path:
    path.write_text(json.dumps(hf_config_json(spec, architecture), indent=2) + "\n")
    return path
