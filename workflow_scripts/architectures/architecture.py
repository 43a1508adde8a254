"""What an HF config implies about a checkpoint, computed on the meta device so no weights are allocated.

Loading a config imports transformers, and building the meta model its modeling code (torch._dynamo,
generation): seconds of start-up, more than a DeepSpeed consolidation spends copying 1.6 GB. So both answers are
also kept in the facts cache (facts_cache.py): a config's values keyed by its config.json's bytes, the expected
weights by the config without its location and dtype (a conversion's output config differs from its source's in
both, and neither changes a tensor's name or shape). A later conversion of the same config then imports neither.
"""

from __future__ import annotations

import functools
import importlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DistilleryError, first_line
from . import facts_cache


def read_config_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DistilleryError(
            "config.json is missing", path.parent, "pass --base-model-name with a folder that has one"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DistilleryError(f"is not valid JSON ({exc})", path, "fix or replace the file") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise DistilleryError("has no 'model_type'", path, "it is not a transformers model config")
    return config


def load_config(folder: str | Path, trust_remote_code: bool = False):
    """The transformers config of a local model folder (nothing is downloaded, and nothing asks on the terminal:
    `trust_remote_code` is always passed, see models/remote_code.py)."""
    from transformers import AutoConfig

    folder = Path(folder)
    check_head_split(read_config_json(folder / "config.json"), folder / "config.json")
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, OSError, *_config_validation_errors()) as exc:
        message = first_line(exc.__cause__ or exc)  # transformers' validator wraps the ValueError that says why
        raise DistilleryError(f"transformers cannot read it ({message})", folder / "config.json") from None


def check_head_split(config: dict, path: Path) -> None:
    """Refuse a config whose attention heads cannot split the hidden size (unless it sets its own head_dim)."""
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if config.get("head_dim") is not None or not (isinstance(hidden, int) and isinstance(heads, int) and heads > 0):
        return
    if hidden % heads:
        raise DistilleryError(
            f"hidden_size {hidden} is not a multiple of num_attention_heads {heads} "
            "(each head takes hidden_size / num_attention_heads of it)",
            path,
            "fix config.json: the weights' shapes tell which number is right",
        )


def _config_validation_errors() -> tuple[type[Exception], ...]:
    """huggingface_hub's validation error, which transformers 5 raises for an inconsistent config."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


@dataclass(frozen=True)
class ExpectedWeights:
    """The tensors a checkpoint for `config` must hold, and which output tensors are tied to input ones."""

    shapes: dict[str, tuple[int, ...]]
    tied: dict[str, str]
    architecture: str


# What conversions and the static checks read off a config: attribute values as transformers resolves them
# (defaults filled in, aliases such as GPT-2's n_embd for hidden_size followed).
CONFIG_FACT_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "dtype",
    "torch_dtype",
)
# Keys of a config's JSON that say where it was read from or the weights' precision, not the architecture.
_NOT_ARCHITECTURE = ("_name_or_path", "dtype", "torch_dtype")


@dataclass(frozen=True)
class ConfigFacts:
    """A config as transformers loaded it, reduced to `CONFIG_FACT_KEYS`, which it answers as attributes (as the
    config itself would), and to what its expected weights are keyed by; kept in the facts cache, so a later
    conversion of the same config.json reads it without importing transformers."""

    values: dict
    config_class: str  # module.qualname of transformers' config class
    architecture_json: str

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in CONFIG_FACT_KEYS:
            # Loud, not a silent None: a check that reads a new key needs it added to CONFIG_FACT_KEYS.
            raise LookupError(f"ConfigFacts holds no {name!r}; add it to CONFIG_FACT_KEYS")
        if name not in self.values:
            raise AttributeError(name)  # the config itself has no such attribute
        return self.values[name]


def config_facts(folder: str | Path, trust_remote_code: bool = False):
    """`load_config`'s answer to what a conversion checks: from the cache where the same config.json was loaded
    before under the same library versions, else loaded (and then stored). A config with custom code (`auto_map`)
    is always loaded, since its classes come from the folder's Python files."""
    folder = Path(folder)
    raw = read_config_json(folder / "config.json")
    if "auto_map" in raw:
        return load_config(folder, trust_remote_code)
    entry = facts_cache.entry_path("config", f"{trust_remote_code}\n{facts_cache.file_digest(folder / 'config.json')}")
    stored = facts_cache.read_entry(entry)
    try:
        return ConfigFacts(stored["values"], stored["config_class"], stored["architecture_json"])
    except (TypeError, KeyError):
        pass  # not cached yet, or unreadable: load it
    config = load_config(folder, trust_remote_code)
    facts = ConfigFacts(_fact_values(config), _class_name(type(config)), architecture_json(config))
    facts_cache.write_entry(entry, vars(facts))
    return facts


def _fact_values(config) -> dict:
    values = {}
    for key in CONFIG_FACT_KEYS:
        if key == "torch_dtype" and values.get("dtype"):
            values[key] = values["dtype"]  # transformers 5's deprecated alias, read only when `dtype` is unset
            continue
        try:
            value = getattr(config, key)
        except AttributeError:
            continue
        values[key] = value if value is None or isinstance(value, bool | int | float | str | list) else str(value)
    return values


def architecture_json(config) -> str:
    """The config as JSON without what does not change the model's weights (where it was read, their dtype)."""
    values = json.loads(config.to_json_string(use_diff=False))
    return json.dumps({key: value for key, value in values.items() if key not in _NOT_ARCHITECTURE}, sort_keys=True)


def _class_name(config_class) -> str:
    return f"{config_class.__module__}.{config_class.__qualname__}"


def _class_named(name: str):
    module, _, qualname = name.rpartition(".")
    return getattr(importlib.import_module(module), qualname)


def expected_weights(config) -> ExpectedWeights:
    """What a checkpoint for `config` (transformers' config or its `ConfigFacts`) must hold."""
    if isinstance(config, ConfigFacts):
        return _expected_weights_of(config.architecture_json, config.config_class)
    return _expected_weights_of(architecture_json(config), _class_name(type(config)))


# A conversion asks several times (fit check, ties, validation of the output, whose config.json differs only in
# dtype and location): the meta model is built at most once per architecture.
@functools.lru_cache(maxsize=8)
def _expected_weights_of(config_json: str, config_class: str) -> ExpectedWeights:
    cached = facts_cache.entry_path("expected-weights", f"{config_class}\n{config_json}")
    stored = facts_cache.read_entry(cached)
    try:
        return ExpectedWeights(
            shapes={name: tuple(shape) for name, shape in stored["shapes"].items()},
            tied=stored["tied"],
            architecture=stored["architecture"],
        )
    except (KeyError, TypeError, AttributeError):
        pass  # not cached yet, or unreadable: build it
    # The class was imported when its config was loaded (custom code included), or is transformers' own.
    expected = _build_expected_weights(config_json, _class_named(config_class))
    facts_cache.write_entry(cached, vars(expected))
    return expected


def _build_expected_weights(config_json: str, config_class) -> ExpectedWeights:
    from transformers import AutoModelForCausalLM

    config = config_class.from_dict(json.loads(config_json))

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        try:
            # A config class of the folder's own code means the user allowed that code when loading it.
            own_code = config_class.__module__.startswith("transformers_modules")
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=own_code)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DistilleryError(
                f"transformers cannot build a causal LM for model_type {config.model_type!r} ({exc})"
            ) from None
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in tied}
    return ExpectedWeights(shapes=shapes, tied=tied, architecture=type(model).__name__)


def tied_weights(config) -> dict[str, str]:
    """{tied tensor: the tensor it repeats}, e.g. {'lm_head.weight': 'model.embed_tokens.weight'}."""
    try:
        return expected_weights(config).tied
    except DistilleryError:
        if getattr(config, "tie_word_embeddings", False):
            return {"lm_head.weight": "model.embed_tokens.weight"}
        return {}
