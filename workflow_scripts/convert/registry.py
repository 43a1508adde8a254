"""The checkpoint formats distillery converts: each one's options and its one registry entry (`FORMATS`).

Everything else about a format is derived from its entry: the `distillery COMMAND` that converts it (flags from
its options class, description from the class's docstring: `cli/convert.py`), the workflow's rule lookups and
argv (`workflow/formats.py`), the job's sizing (a name in `workflow/resources.py`'s `CONVERSION_SIZING`), where
a cluster runs the job (`runs_on`, which `profiles/slurm` maps to a partition) and what `distillery verify`
compares a converted model with. The format's reader (`formats/`) and plan (`convert/`) are referred to by
name (`Lazy`), so that this module, read at every parse of the Snakefile and by `distillery --help`, imports no
torch, JAX or transformers.

Options: each field is declared once with `setting(...)` (`setting.py`); `config="source.KEY"` reads a key of
the format's schema branch. The paths are the command's own flags (`config=None`), passed by the rule.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..choices import CONSOLIDATE_INPUT_TYPES, CONVERSION_DTYPES, ORIGINAL_DTYPE, WEIGHTS_FORMATS
from ..setting import setting

# --- what every converter's options share -----------------------------------------------------------------------


def path_setting(help: str, flag: str | None = None) -> Any:
    """A path the rule passes itself: a required flag, never a config key."""
    return setting(None, help=help, config=None, required=True, **({"flag": flag} if flag else {}))


def dtype_setting(default: str) -> str:
    return setting(default, help="output precision; original keeps each tensor's dtype", choices=CONVERSION_DTYPES,
                   switches={"--keep-original-precision": ORIGINAL_DTYPE})  # fmt: skip


def max_shard_size_setting(default: str) -> str:
    return setting(default, help="largest weights file, e.g. 40GB")


def force_setting() -> bool:
    return setting(False, help="replace an existing output", config=None)


def validate_vllm_setting() -> bool:
    return setting(True, help="check the output before it is moved into place (default: on)", config=None)


# --- the options of each converter --------------------------------------------------------------------------------


@dataclass
class ConsolidateOptions:
    """Merge a DeepSpeed ZeRO checkpoint or an HF model folder (sharded safetensors or .bin, nested shards, single
    file) into one vLLM-ready folder: weights streamed tensor by tensor, config, tokenizer and provenance.json."""

    input: Path | None = path_setting("input folder (a model or a training run)")
    output: Path | None = path_setting("output folder")
    input_type: str = setting("auto", flag="--type", config=None, choices=CONSOLIDATE_INPUT_TYPES,
                              help="what the input is")  # fmt: skip
    force: bool = force_setting()
    dtype: str = dtype_setting("float32")
    max_shard_size: str = max_shard_size_setting("40GB")
    weights_format: str = setting(
        "safetensors",
        choices=WEIGHTS_FORMATS,
        help="output weights format",
        switches={"--safetensors": "safetensors", "--pytorch-bin": "pytorch_bin"},
    )
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
    checkpoint_dir: Path | None = setting(None, config=None,
                                          help="DeepSpeed: this checkpoint folder (checkpoint-N or global_stepN), "
                                               "not the latest of the run")  # fmt: skip
    tag: str | None = setting(
        None, config=None, help="DeepSpeed: global_stepN to use instead of the one 'latest' names"
    )
    command: list[str] = field(default_factory=list)


@dataclass
class TitanToHFOptions:
    """Convert a TorchTitan checkpoint (torch.distributed.checkpoint folder or a .pt state dict, with the names of
    TorchTitan's vLLM guide or of torchtitan 0.3) into a vLLM-ready HF Llama or Qwen3 folder, reading one tensor
    at a time."""

    input: Path | None = path_setting("DCP folder (e.g. checkpoint/step-1000) or .pt")
    output: Path | None = path_setting("output folder")
    config: str | None = setting(None, config="source.config", help="HF config.json of the model (or its folder)")
    flavor: str | None = setting(None, config="source.flavor",
                                 help="TorchTitan flavor, e.g. 8B, 0.6B, qwen3:1.7B, llama3:debugmodel")  # fmt: skip
    tokenizer: str | None = setting(None, config="source.tokenizer",
                                    help="folder with the tokenizer files to copy into the output")  # fmt: skip
    base_model_name: str | None = setting(None, config="base_model",
                                          help="folder whose tokenizer files are copied where --tokenizer names "
                                               "none (the model's base model)")  # fmt: skip
    dtype: str = dtype_setting("float32")
    max_shard_size: str = max_shard_size_setting("40GB")
    force: bool = force_setting()
    validate_vllm: bool = validate_vllm_setting()
    command: list[str] = field(default_factory=list)


@dataclass
class MaxTextToHFOptions:
    """The flags of llama_mistral_mixtral_orbax_to_hf: map MaxText's parameter tree onto HF Llama names with
    MaxText's rotary layout and query scaling undone, and write config, tokenizer and provenance.

    Its defaults are those of MaxText's own converter script (bfloat16, 5GB); the workflow always passes the
    config's values."""

    orbax_checkpoint: str | None = path_setting("param-only checkpoint: .../0/items (local or gs://)")
    hf_model_path: Path | None = path_setting("output folder")
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


@dataclass
class GGUFToHFOptions:
    """Convert a llama.cpp GGUF file (or a folder holding one) of a Llama-architecture model into a plain
    vLLM-ready HF folder: each tensor dequantized as it is written, config from the file's metadata, tokenizer
    and chat template from its vocabulary, provenance."""

    input: Path | None = path_setting("a .gguf file, or a folder holding exactly one")
    output: Path | None = path_setting("output folder")
    dtype: str = dtype_setting("float32")
    max_shard_size: str = max_shard_size_setting("40GB")
    force: bool = force_setting()
    validate_vllm: bool = validate_vllm_setting()
    command: list[str] = field(default_factory=list)


# --- the registry ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lazy:
    """A function of a distillery module (`convert.titan_to_hf`), imported when first called: the module may load
    torch, JAX or transformers, which planning the workflow and `distillery --help` never do."""

    module: str
    name: str

    def resolve(self) -> Callable:
        return getattr(importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.{self.module}"), self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class Converter:
    """A `distillery COMMAND`: its flags and description are its options class's; it prints `summary()` of what
    `convert(options)` returns."""

    command: str
    help: str  # its line in `distillery --help`
    options: type
    convert: Lazy


@dataclass(frozen=True)
class NumericReference:
    """For a source that is no HF folder: how `verify --reference` recognises one, and the model it compares with
    (`load(source, converted_model_folder)`, called like an HF model: `reference(ids).logits`)."""

    recognises: Lazy
    load: Lazy


def _the_source(source: str) -> str | None:
    return source


def _a_local_source(source: str) -> str | None:
    return None if "://" in source else source


def _hf_weights_beside(source: str) -> str | None:
    """A DeepSpeed checkpoint is a reference only where HF Trainer also saved model weights beside it."""
    # Imported here: the module loads torch, which every parse of the Snakefile would pay for.
    from ..formats.hf_checkpoint import has_hf_weights

    return source if has_hf_weights(Path(source)) else None


def _no_extra_inputs(source: dict) -> list[str]:
    return []


def _titan_extra_inputs(source: dict) -> list[str]:
    """The config and tokenizer a TorchTitan conversion reads besides the checkpoint."""
    return [source[key] for key in ("config", "tokenizer") if source.get(key)]


@dataclass(frozen=True)
class SourceFormat:
    name: str  # a model's `source.format`
    rule: str  # the rule writing {results}/models/{model}/hf
    converter: Converter
    sizing: str = "merge"  # its memory and time: a name in workflow/resources.py's CONVERSION_SIZING
    runs_on: str = "highmem"  # what its jobs need from a cluster: a name profiles/slurm maps to a partition
    # verify_model's reference when the model's verify.reference is `source` (None: no logits check), from the
    # source's path; and how to run it where it is no HF folder.
    reference: Callable[[str], str | None] = _the_source
    numeric_reference: NumericReference | None = None
    extra_inputs: Callable[[dict], list[str]] = _no_extra_inputs  # from the model's `source` entry
    # A rule that turns some sources of the format (MaxText training states) into what `rule` reads, and the
    # folder under {results}/models/{model}/ it writes.
    prepare_rule: str | None = None
    prepared_folder: str | None = None


CONSOLIDATE = Converter(
    "consolidate",
    "merge a sharded or DeepSpeed checkpoint into one vLLM-ready HF model folder",
    ConsolidateOptions,
    Lazy("convert.consolidate", "consolidate"),
)

FORMATS = {
    "hf": SourceFormat("hf", "hf_merge", CONSOLIDATE),
    "deepspeed": SourceFormat(
        "deepspeed", "deepspeed_consolidate", CONSOLIDATE, sizing="deepspeed", reference=_hf_weights_beside
    ),  # fmt: skip
    "maxtext": SourceFormat(
        "maxtext",
        "maxtext_to_hf",
        Converter(
            "maxtext-to-hf",
            "convert a MaxText param-only checkpoint of a Llama model into an HF model folder",
            MaxTextToHFOptions,
            Lazy("convert.maxtext_to_hf", "convert_maxtext_to_hf"),
        ),
        sizing="maxtext",
        runs_on="tpu",
        reference=_a_local_source,  # MaxText's math in JAX reads local checkpoints only
        numeric_reference=NumericReference(
            Lazy("formats.maxtext", "looks_like_orbax"), Lazy("verify.maxtext_reference", "load_maxtext_reference")
        ),  # fmt: skip
        prepare_rule="maxtext_param_only",
        prepared_folder="param_only",
    ),
    "titan": SourceFormat(
        "titan",
        "titan_to_hf",
        Converter(
            "titan-to-hf",
            "convert a TorchTitan Llama 3 or Qwen3 checkpoint (DCP folder or .pt) into an HF model folder",
            TitanToHFOptions,
            Lazy("convert.titan_to_hf", "convert_titan_to_hf"),
        ),
        sizing="titan",
        numeric_reference=NumericReference(
            Lazy("formats.dcp", "is_titan_checkpoint"), Lazy("verify.titan_reference", "load_titan_reference")
        ),  # fmt: skip
        extra_inputs=_titan_extra_inputs,
    ),
    "gguf": SourceFormat(
        "gguf",
        "gguf_to_hf",
        Converter(
            "gguf-to-hf",
            "convert a llama.cpp GGUF file (any quantization) of a Llama model into an HF model folder",
            GGUFToHFOptions,
            Lazy("convert.gguf_to_hf", "convert_gguf_to_hf"),
        ),
        sizing="gguf",
        numeric_reference=NumericReference(
            Lazy("formats.gguf", "is_gguf_source"), Lazy("convert.gguf_to_hf", "load_gguf_reference")
        ),
    ),
}


def converters() -> dict[str, Converter]:
    """Each conversion command once, by its name (HF folders and DeepSpeed share `consolidate`)."""
    return {entry.converter.command: entry.converter for entry in FORMATS.values()}


def conversion_rules() -> dict[str, str]:
    """Each conversion rule (preparing rules too) and what its jobs need from a cluster (`runs_on`)."""
    rules = {entry.rule: entry.runs_on for entry in FORMATS.values()}
    return rules | {entry.prepare_rule: entry.runs_on for entry in FORMATS.values() if entry.prepare_rule}


def numeric_reference_of(path: str | Path) -> Lazy | None:
    """How `verify` computes the logits of a reference at `path`: its format's forward, or None for an HF folder."""
    for entry in FORMATS.values():
        if entry.numeric_reference and entry.numeric_reference.recognises(path):
            return entry.numeric_reference.load
    return None
