"""Tiny Llama and Qwen3 models built locally: random weights and a byte-level BPE tokenizer trained here.

They stand in for real checkpoints in the default config and the tests, so nothing is downloaded. Weights are
generated one tensor at a time from a seed and the tensor's name, so a model of several GB (the benchmarks)
is written without ever being held in memory, and the same seed gives the same model in any layout.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..choices import TINY_ARCHITECTURES as ARCHITECTURES
from ..choices import TINY_LAYOUTS as LAYOUTS
from ..formats import hf_writer, torch_bin
from ..formats.safetensors_file import TensorSpec
from ..sizes import parse_size
from .architecture import expected_weights
from .tiny_spec import TinyModelSpec

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS_SEEDS = [
    "The teacher model writes completions for every row of the dataset.",
    "Distillation turns a large model's outputs into training data for a small one.",
    "Checkpoints are converted to safetensors and verified before serving.",
    "Tensor parallel inference splits attention heads across GPUs.",
    "A resumable job continues after the last complete line of its output.",
    "Question: what is two plus two? Answer: four.",
    "The quick brown fox jumps over the lazy dog, 0123456789 times!",
    "def main():\n    return {'status': 'ok', 'rows': [1, 2, 3]}\n",
]


def train_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in-process on a small built-in corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [f"{line} {i}" for i in range(50) for line in _CORPUS_SEEDS]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def make_config(spec: TinyModelSpec, tokenizer=None):
    from transformers import LlamaConfig, Qwen3Config

    if spec.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {spec.architecture!r}; choose from {ARCHITECTURES}")
    common = dict(
        **spec.hf_sizes(),
        bos_token_id=tokenizer.bos_token_id if tokenizer else 0,
        eos_token_id=tokenizer.eos_token_id if tokenizer else 2,
        pad_token_id=tokenizer.pad_token_id if tokenizer else 0,
        **spec.extra,
    )
    if spec.architecture == "llama":
        tie = False if spec.tie_word_embeddings is None else spec.tie_word_embeddings
        config = LlamaConfig(tie_word_embeddings=tie, rope_theta=500000.0, **common)
    else:
        tie = True if spec.tie_word_embeddings is None else spec.tie_word_embeddings
        config = Qwen3Config(tie_word_embeddings=tie, head_dim=spec.hidden_size // spec.num_attention_heads, **common)
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    return config


def random_tensor(name: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """The same tensor for the same (name, seed), whatever order tensors are made in."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    name_seed = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1
    generator = torch.Generator().manual_seed(name_seed)
    return (torch.randn(shape, generator=generator) * 0.02).to(dtype)


def build_tiny_model(
    output: str | Path,
    spec: TinyModelSpec | None = None,
    layout: str = "safetensors",
    seed: int = 0,
    dtype: str = "float32",
    max_shard_size: str = "40KB",
) -> Path:
    """Write a complete HF model folder: config, generation config, tokenizer and weights in `layout`."""
    from transformers import GenerationConfig

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    spec = spec or TinyModelSpec()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(min(spec.vocab_size, 4096))
    tokenizer.save_pretrained(output)
    config = make_config(spec, tokenizer)
    torch_dtype = getattr(torch, dtype)
    config.dtype = dtype
    config.save_pretrained(output)
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
    ).save_pretrained(output)

    expected = expected_weights(config)
    specs = [TensorSpec(name, torch_dtype, shape) for name, shape in expected.shapes.items()]

    def produce(tensor_spec: TensorSpec) -> torch.Tensor:
        return random_tensor(tensor_spec.name, tensor_spec.shape, seed, torch_dtype)

    weights_format = "safetensors" if layout.startswith("safetensors") else "pytorch_bin"
    if layout == "bin":
        # As torch.save of a tied model's state dict: the tied tensor shares the embedding's storage.
        state = {s.name: produce(s) for s in specs}
        for tied_name, source_name in expected.tied.items():
            state[tied_name] = state[source_name]
        torch_bin.save_state_dict(state, output / "pytorch_model.bin")
        return output
    weights_folder = output / "pytorch_model.bin" if layout == "bin_nested" else output
    weights_folder.mkdir(exist_ok=True)
    shard_bytes = parse_size(max_shard_size) if layout != "safetensors" else sum(s.nbytes for s in specs) + 1
    hf_writer.write_weights(weights_folder, specs, produce, shard_bytes, weights_format)
    return output


LABEL_WORDS = ("True", "False", " True", " False")


def build_tiny_icm_model(output: str | Path, spec: TinyModelSpec | None = None, seed: int = 0) -> Path:
    """A tiny Llama whose tokenizer has ICM's label words as single tokens, and whose output rows for them are
    scaled up so they reach the top 20 next tokens: ICM's scores are then not all zero, and depend on the
    prompt. The embedding and output rows grow by the added tokens, so vocabulary and tokenizer stay equal."""
    import json

    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    spec = spec or TinyModelSpec(max_position_embeddings=4096)
    output = build_tiny_model(output, spec, "safetensors", seed, "float32")
    tokenizer = AutoTokenizer.from_pretrained(output)
    tokenizer.add_tokens(list(LABEL_WORDS))
    tokenizer.save_pretrained(output)
    config_path = output / "config.json"
    config = json.loads(config_path.read_text())
    added = len(tokenizer) - config["vocab_size"]
    weights = load_file(output / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in weights and added > 0:
            rows = random_tensor(f"{name}:added", (added, weights[name].shape[1]), seed, weights[name].dtype)
            weights[name] = torch.cat([weights[name], rows])
    head = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
    for word in LABEL_WORDS:
        token = tokenizer.convert_tokens_to_ids(word)
        weights[head][token] = weights[head][token] * 40
    save_file(weights, output / "model.safetensors", metadata={"format": "pt"})
    config["vocab_size"] = len(tokenizer)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return output
