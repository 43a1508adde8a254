"""What an HF config implies about a checkpoint, computed on the meta device so no weights are allocated.

Building the meta model means importing transformers' modeling code (torch._dynamo, generation: seconds of
start-up, more than a DeepSpeed consolidation spends copying 1.6 GB), so each answer is also kept on disk under
`$DISTILLERY_CACHE_DIR` (default `~/.cache/distillery`), keyed by the transformers version and the whole config:
a later conversion of the same architecture reads it instead of building the model again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..errors import DistilleryError, first_line

log = logging.getLogger(__name__)


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


def expected_weights(config) -> ExpectedWeights:
    # A conversion asks several times (fit check, ties, validation); building the meta model once is enough.
    return _expected_weights_of(config.to_json_string(use_diff=False), type(config))


@functools.lru_cache(maxsize=8)
def _expected_weights_of(config_json: str, config_class) -> ExpectedWeights:
    cached = _cache_file(config_json, config_class)
    try:
        stored = json.loads(cached.read_text())
        return ExpectedWeights(
            shapes={name: tuple(shape) for name, shape in stored["shapes"].items()},
            tied=stored["tied"],
            architecture=stored["architecture"],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # not cached yet, or unreadable: build it
    expected = _build_expected_weights(config_json, config_class)
    try:
        atomic_write_text(cached, json.dumps(vars(expected)))
    except OSError as exc:  # a read-only or full cache folder costs the next run the build, nothing else
        log.debug("cannot cache the expected weights in %s: %s", cached, exc)
    return expected


def _cache_file(config_json: str, config_class) -> Path:
    import transformers

    folder = os.environ.get("DISTILLERY_CACHE_DIR") or Path.home() / ".cache" / "distillery"
    key = f"{transformers.__version__}\n{config_class.__module__}.{config_class.__qualname__}\n{config_json}"
    return Path(folder) / "expected-weights" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


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
