"""`distillery gguf-to-hf`: a llama.cpp GGUF file (or a folder holding one) → a plain HF model folder.

Each tensor is dequantized to float32 when its turn comes (`formats/gguf.py`), renamed to HF's Llama names, its
query and key rows put back in HF's rotary order (llama.cpp's converter interleaves them: `_unpermute`), cast
and written by the driver before the next is read. The config is built from the file's metadata, the tokenizer
and chat template by transformers' own GGUF tokenizer conversion, then saved as a plain fast tokenizer; what a
GGUF load through transformers leaves behind (`quantization_config`, `_model_name_or_path`, the
`TokenizersBackend` class of transformers 5) is not in the folder, so transformers and vLLM load it as any HF
model. The numeric reference is transformers' own load of the GGUF file (`load_gguf_reference`).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..architectures.architecture import expected_weights
from ..choices import ORIGINAL_DTYPE
from ..errors import DistilleryError, first_line
from ..formats.gguf import GGUFCheckpoint, gguf_file_of
from ..formats.safetensors_file import TensorSpec
from .driver import ConversionPlan, ConversionRequest, check_request, nothing_to_open, output_dtype, run_conversion
from .registry import GGUFToHFOptions

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama",)  # Llama 1-3 without rope scaling, Mistral, SmolLM, TinyLlama (llama.cpp's "llama")
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


@dataclass
class GGUFConversion:
    output: Path
    source: Path
    num_tensors: int
    quantization: dict[str, int]  # ggml type -> tensors stored in it

    def summary(self) -> str:
        stored = ", ".join(f"{count} {kind}" for kind, count in sorted(self.quantization.items()))
        return f"✓ {self.output}: {self.num_tensors} tensors dequantized from {self.source.name} ({stored})"


def hf_name(gguf_name: str) -> str | None:
    """The HF Llama name of a GGUF tensor (None for one this converter does not know)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.{match.group(3)}"
    return None


def _unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's `permute` of q/k rows (convert_hf_to_gguf.py): per head, HF's two rotary halves from the
    interleaved pairs GGUF stores, as transformers' GGUF loader does."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def hf_config(checkpoint: GGUFCheckpoint):
    """A LlamaConfig from the file's metadata (the keys transformers' GGUF loader maps), with the tokens' ids."""
    from transformers import LlamaConfig

    if checkpoint.architecture not in SUPPORTED_ARCHITECTURES:
        raise DistilleryError(f"GGUF architecture {checkpoint.architecture!r} is not supported",
                              checkpoint.path, f"gguf-to-hf converts {', '.join(SUPPORTED_ARCHITECTURES)}")  # fmt: skip
    scaling = checkpoint.field("rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in checkpoint.tensors:
        raise DistilleryError(f"uses rope scaling ({scaling if scaling != 'none' else 'rope_freqs.weight'}), "
                              "which gguf-to-hf does not convert", checkpoint.path)  # fmt: skip
    heads = checkpoint.field("attention.head_count")
    hidden = checkpoint.field("embedding_length")
    embedding = checkpoint.tensors.get("token_embd.weight")
    if None in (heads, hidden, embedding):
        raise DistilleryError("lacks the metadata or tensors of a llama model (head_count, embedding_length, "
                              "token_embd.weight)", checkpoint.path)  # fmt: skip
    token_ids = {f"{name}_token_id": checkpoint.metadata.get(f"tokenizer.ggml.{key}")
                 for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                                   ("unk", "unknown_token_id"))}  # fmt: skip
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=embedding.shape[0],
        hidden_size=hidden,
        intermediate_size=checkpoint.field("feed_forward_length"),
        num_hidden_layers=checkpoint.field("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=checkpoint.field("attention.head_count_kv", heads),
        head_dim=checkpoint.field("rope.dimension_count", hidden // heads),
        max_position_embeddings=checkpoint.field("context_length", 2048),
        rms_norm_eps=checkpoint.field("attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=checkpoint.field("rope.freq_base", 10000.0),
        tie_word_embeddings="output.weight" not in checkpoint.tensors,
        **{key: value for key, value in token_ids.items() if value is not None},
    )


def plan_tensors(checkpoint: GGUFCheckpoint, config) -> dict[str, str]:
    """HF name -> GGUF name of every output tensor, checked against the architecture the config describes."""
    expected = expected_weights(config)
    offered = {hf_name(name): name for name in checkpoint.tensors}
    unknown = sorted(name for name in checkpoint.tensors if hf_name(name) not in {*expected.shapes, *expected.tied})
    missing = sorted(set(expected.shapes) - set(offered))
    if unknown or missing:
        problem = f"holds tensors a LlamaForCausalLM has no place for: {', '.join(unknown[:4])}" if unknown else (
            f"lacks {len(missing)} tensor(s) its config needs: {', '.join(missing[:4])}")  # fmt: skip
        raise DistilleryError(problem, checkpoint.path, "is it a complete llama model?")
    for hf, shape in expected.shapes.items():
        found = checkpoint.tensors[offered[hf]].shape
        if tuple(found) != tuple(shape):
            raise DistilleryError(f"tensor {offered[hf]} is {list(found)}, but its metadata implies {list(shape)}",
                                  checkpoint.path)  # fmt: skip
    return {hf: offered[hf] for hf in expected.shapes}


def convert_gguf_to_hf(options: GGUFToHFOptions) -> GGUFConversion:
    request = ConversionRequest(options.output, options.dtype, options.max_shard_size, options.force,
                                options.validate_vllm, options.command, "gguf-to-hf",
                                inputs=(options.input,))  # fmt: skip
    check_request(request)
    checkpoint = GGUFCheckpoint(options.input)
    config = hf_config(checkpoint)
    sources = plan_tensors(checkpoint, config)
    log.info("%s: %s, %d tensors", checkpoint.path, checkpoint.metadata.get("general.name"), len(sources))
    run_conversion(request, conversion_plan(options, checkpoint, config, sources))
    return GGUFConversion(
        options.output, checkpoint.path, len(sources), dict(Counter(checkpoint.tensor_types.values()))
    )


def conversion_plan(options: GGUFToHFOptions, checkpoint: GGUFCheckpoint, config,
                    sources: dict[str, str]) -> ConversionPlan:  # fmt: skip
    specs = [
        TensorSpec(hf, output_dtype(checkpoint.tensors[name].dtype, options.dtype), checkpoint.tensors[name].shape)
        for hf, name in sources.items()
    ]
    rotary_heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}

    def produce(spec: TensorSpec) -> torch.Tensor:
        tensor = checkpoint.tensors[sources[spec.name]].load()
        projection = spec.name.rsplit(".", 2)[-2]
        return _unpermute(tensor, rotary_heads[projection]) if projection in rotary_heads else tensor

    def write_model_files(staging: Path) -> dict:
        from transformers import GenerationConfig

        if options.dtype == ORIGINAL_DTYPE:  # the least precise stored dtype, as verify's dtype check expects
            floating = {spec.dtype for spec in specs if spec.dtype.is_floating_point}
            config.dtype = str(min(floating, key=lambda d: torch.finfo(d).bits)).removeprefix("torch.")
        else:
            config.dtype = options.dtype
        config.save_pretrained(staging)
        GenerationConfig.from_model_config(config).save_pretrained(staging)
        save_plain_tokenizer(checkpoint.path, staging, config.max_position_embeddings)
        return {"tokenizer": "the GGUF file's (tokenizer.ggml.*, tokenizer.chat_template)"}

    return ConversionPlan(
        tensors=specs,
        reading=lambda staging: nothing_to_open(produce),
        write_model_files=write_model_files,
        source={
            "path": str(checkpoint.path.resolve()),
            "type": "gguf",
            "version": checkpoint.version,
            "architecture": checkpoint.architecture,
            "name": checkpoint.metadata.get("general.name"),
            "quantization": dict(Counter(checkpoint.tensor_types.values())),
        },
        conversion={"dtype": options.dtype, "dequantized": True, "max_shard_size": options.max_shard_size},
    )


# What transformers' GGUF tokenizer records about how it was loaded, not what the tokenizer is.
_LOADING_KEYS = ("is_local", "local_files_only", "backend", "name_or_path")


def save_plain_tokenizer(gguf_path: Path, folder: Path, max_length: int) -> None:
    """The file's tokenizer and chat template as transformers converts them, saved as a plain fast tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
    tokenizer.save_pretrained(folder)
    if not tokenizer.chat_template:
        log.warning("%s: no tokenizer.chat_template; the model folder has no chat template", gguf_path)
    path = folder / "tokenizer_config.json"
    settings = {key: value for key, value in json.loads(path.read_text()).items() if key not in _LOADING_KEYS}
    # transformers 5 names its own backend class, which older transformers (and tools pinned to them) lack.
    settings.update(tokenizer_class="PreTrainedTokenizerFast", model_max_length=max_length)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def load_gguf_reference(source: Path, model_folder: Path):
    """The numeric reference of a converted GGUF: transformers' own load of the file, dequantized to float32."""
    import warnings

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    gguf_path = gguf_file_of(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                         dtype=torch.float32, local_files_only=True)  # fmt: skip
        except (OSError, ValueError, RuntimeError, KeyError, ImportError) as exc:
            raise DistilleryError(f"transformers cannot load it ({first_line(exc)})", gguf_path) from None
    return model.eval()
