"""The conversion options of each converter, declared once (`setting.py`): flags, config keys, argv, defaults.

A model's config entry (`models.NAME` in config.yaml) gives the options through `from_config`, the convert rule
passes them as `to_argv`, and the command reads them back with `from_args`: `dtype: original` stays the word
`original` all the way. Paths (input, output) are the rule's own; they are plain fields, set by the command.
The defaults of `consolidate` and `titan-to-hf` are the config schema's; `maxtext-to-hf` keeps those of
MaxText's own converter script (bfloat16, 5GB), and the workflow always passes the config's values to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..choices import CONSOLIDATE_INPUT_TYPES, CONVERSION_DTYPES, WEIGHTS_FORMATS
from ..setting import setting


def dtype_setting(default: str) -> str:
    return setting(default, help="output precision; original keeps each tensor's dtype", choices=CONVERSION_DTYPES)


def max_shard_size_setting(default: str) -> str:
    return setting(default, help="largest weights file, e.g. 40GB")


def force_setting() -> bool:
    return setting(False, help="replace an existing output", config=None)


def validate_vllm_setting() -> bool:
    return setting(True, help="check the output before it is moved into place (default: on)", config=None)


@dataclass
class ConsolidateOptions:
    input: Path | None = None
    output: Path | None = None
    input_type: str = setting("auto", flag="--type", config=None, choices=CONSOLIDATE_INPUT_TYPES,
                              help="what the input is")  # fmt: skip
    force: bool = force_setting()
    dtype: str = dtype_setting("float32")
    max_shard_size: str = max_shard_size_setting("40GB")
    weights_format: str = setting("safetensors", choices=WEIGHTS_FORMATS, help="output weights format")
    base_model_name: str | None = setting(
        None,
        config="base_model",
        help="local folder (or model in the local HF cache) for config and tokenizer files the input lacks",
    )
    validate_vllm: bool = validate_vllm_setting()
    trust_pickle: bool = setting(
        False,
        config="source.trust_pickle",
        help="unpickle DeepSpeed files fully, for classes outside distillery's allow-list (trusted files only)",
    )
    allow_overflow: bool = setting(
        False, config=None, help="clamp values beyond --dtype's range to its largest value (default: refuse them)"
    )
    checkpoint_dir: Path | None = None  # DeepSpeed: this checkpoint folder, not the latest of the run
    tag: str | None = None  # DeepSpeed: global_stepN instead of what `latest` names
    command: list[str] = field(default_factory=list)


@dataclass
class TitanToHFOptions:
    input: Path | None = None
    output: Path | None = None
    config: str | None = setting(None, config="source.config", help="HF config.json of the model (or its folder)")
    flavor: str | None = setting(None, config="source.flavor",
                                 help="TorchTitan flavor, e.g. 8B, 0.6B, qwen3:1.7B, llama3:debugmodel")  # fmt: skip
    tokenizer: str | None = setting(None, config="source.tokenizer",
                                    help="folder with the tokenizer files to copy into the output")  # fmt: skip
    dtype: str = dtype_setting("float32")
    max_shard_size: str = max_shard_size_setting("40GB")
    force: bool = force_setting()
    validate_vllm: bool = validate_vllm_setting()
    command: list[str] = field(default_factory=list)


@dataclass
class MaxTextToHFOptions:
    orbax_checkpoint: str = ""
    hf_model_path: Path | None = None
    model_size: str = setting("", config="source.model_size", help="MaxText model name, e.g. llama3.1-1b")
    config: str | None = setting(None, config="source.config",
                                 help="HF config.json giving the sizes of a model not in the table")  # fmt: skip
    tokenizer_path: str | None = setting(None, config="source.tokenizer",
                                         help="folder (or file) of the tokenizer to ship with the model")  # fmt: skip
    # `original` is bfloat16 here, the precision MaxText's param-only checkpoints are written in.
    dtype: str = dtype_setting("bfloat16")
    rope_type: str | None = setting(
        None,
        config=None,
        choices=("default", "llama3.1"),
        help="MaxText's rope_type where its config set one (default: from the model name)",
    )
    normalize_embedding_logits: bool = setting(
        True,
        config="source.normalize_embedding_logits",
        help="for tied embeddings: MaxText ran with normalize_embedding_logits",
    )
    max_shard_size: str = max_shard_size_setting("5GB")
    force: bool = force_setting()
    validate_vllm: bool = validate_vllm_setting()
    command: list[str] = field(default_factory=list)
