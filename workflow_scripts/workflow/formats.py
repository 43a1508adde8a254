"""The source formats the workflow converts, by the name a model's `source.format` gives in the config.

Each entry says which rule converts the format (and which rule prepares it first, if any), the converter's
options (`convert/options.py`: the flags the rule passes come from the model's config entry through them), how
much memory and time the conversion needs (`resources.py`) and what `verify --reference` compares the
converted model with. `rules/common.smk` only calls the functions below, so no rule branches on a format; a new
format is a reader (`formats/`), a plan (`convert/`), an entry here, its schema branch and its rule.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..convert.options import ConsolidateOptions, MaxTextToHFOptions, TitanToHFOptions
from ..setting import from_config, to_argv
from . import resources
from .model_targets import ModelTarget


def _no_extra_inputs(target: ModelTarget) -> list[str]:
    return []


def _titan_extra_inputs(target: ModelTarget) -> list[str]:
    """The config and tokenizer a TorchTitan conversion reads besides the checkpoint."""
    source = target.settings["source"]
    return [source[key] for key in ("config", "tokenizer") if source.get(key)]


def _titan_options(entry: dict) -> TitanToHFOptions:
    options = from_config(TitanToHFOptions, entry)
    if options.tokenizer is None and entry.get("base_model"):
        options.tokenizer = entry["base_model"]  # the base model's tokenizer where the source names none
    return options


def _source_reference(target: ModelTarget) -> str | None:
    return target.source


def _local_reference(target: ModelTarget) -> str | None:
    return None if "://" in target.source else target.source


def _deepspeed_reference(target: ModelTarget) -> str | None:
    """A DeepSpeed checkpoint is a reference only where HF Trainer also saved model weights beside it."""
    # Imported here: the module loads torch, which every parse of the Snakefile would pay for.
    from ..formats.hf_checkpoint import has_hf_weights

    return target.source if has_hf_weights(Path(target.source)) else None


@dataclass(frozen=True)
class SourceFormat:
    name: str
    rule: str  # the rule writing {results}/models/{model}/hf
    options: Callable[[dict], object]  # the converter's options from the model's config entry
    mem_mb: Callable[[str], int]  # from the checkpoint the rule converts
    runtime_min: Callable[[str], int]
    # What verify's logits check compares with when the model's verify.reference is `source`; None: nothing.
    reference: Callable[[ModelTarget], str | None] = _source_reference
    extra_inputs: Callable[[ModelTarget], list[str]] = _no_extra_inputs
    # A rule that turns some sources of the format (MaxText training states) into what `rule` reads, and the
    # folder under {results}/models/{model}/ it writes.
    prepare_rule: str | None = None
    prepared_folder: str | None = None


FORMATS = {
    "hf": SourceFormat(
        "hf",
        "hf_merge",
        lambda entry: from_config(ConsolidateOptions, entry),
        resources.merge_mem_mb,
        resources.merge_runtime_min,
    ),
    "deepspeed": SourceFormat(
        "deepspeed",
        "deepspeed_consolidate",
        lambda entry: from_config(ConsolidateOptions, entry),
        resources.deepspeed_mem_mb,
        resources.merge_runtime_min,
        reference=_deepspeed_reference,
    ),
    "maxtext": SourceFormat(
        "maxtext",
        "maxtext_to_hf",
        lambda entry: from_config(MaxTextToHFOptions, entry),
        resources.maxtext_to_hf_mem_mb,
        resources.maxtext_runtime_min,
        reference=_local_reference,  # MaxText's math in JAX reads local checkpoints only
        prepare_rule="maxtext_param_only",
        prepared_folder="param_only",
    ),
    "titan": SourceFormat(
        "titan",
        "titan_to_hf",
        _titan_options,
        resources.titan_mem_mb,
        resources.merge_runtime_min,
        extra_inputs=_titan_extra_inputs,
    ),
}


def format_of(target: ModelTarget) -> SourceFormat:
    return FORMATS[target.format]


def models_of_rule(targets: dict[str, ModelTarget], rule: str) -> str:
    """A wildcard constraint matching exactly the models a rule builds (never empty, so it stays valid)."""
    names = [re.escape(name) for name, target in targets.items() if rule in _rules_of(target)]
    return "|".join(names) if names else "(?!)"


def _rules_of(target: ModelTarget) -> tuple[str, ...]:
    source_format = format_of(target)
    prepared = target.full_state and source_format.prepare_rule
    return (source_format.rule, source_format.prepare_rule) if prepared else (source_format.rule,)


def prepared_path(target: ModelTarget, results: str) -> str:
    """Where the prepare rule writes a source the convert rule cannot read as it is."""
    return f"{results}/models/{target.name}/{format_of(target).prepared_folder}"


def conversion_input(target: ModelTarget, results: str) -> str:
    """The checkpoint the convert rule reads: the prepared one where the format needs it, else the source."""
    return prepared_path(target, results) if target.full_state and format_of(target).prepare_rule else target.source


def conversion_argv(target: ModelTarget) -> list[str]:
    """The convert command's flags for the model's config entry (its paths are the rule's)."""
    return to_argv(format_of(target).options(target.settings))


def conversion_flags(target: ModelTarget) -> str:
    return shlex.join(conversion_argv(target))


def conversion_mem_mb(target: ModelTarget, checkpoint: str) -> int:
    return format_of(target).mem_mb(checkpoint)


def conversion_runtime_min(target: ModelTarget, checkpoint: str) -> int:
    return format_of(target).runtime_min(checkpoint)


def reference(target: ModelTarget, results: str) -> str | None:
    """The numeric reference of verify_model: the model's verify.reference, or by default its source."""
    wanted = target.settings.get("verify", {}).get("reference", "source")
    if wanted == "none":
        return None
    if wanted != "source":
        return wanted
    if target.full_state and format_of(target).prepare_rule:
        return conversion_input(target, results)  # MaxText's math runs on the param-only arrays
    return format_of(target).reference(target)
