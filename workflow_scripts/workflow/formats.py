"""What the rules need from the format registry (`convert/registry.py`), by a model's `source.format`.

`rules/common.smk` only calls the functions below, so no rule or lookup branches on a format: which rule
converts a model (and which prepares it first), the checkpoint it reads, the flags it passes (the format's
options from the model's config entry, as `to_argv`), its memory and time (`resources.py`) and what
`verify_model` compares the converted model with.
"""

from __future__ import annotations

import re
import shlex

from ..convert.registry import FORMATS, SourceFormat
from ..setting import from_config, to_argv
from .model_targets import ModelTarget
from .resources import CONVERSION_SIZING


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
    return to_argv(from_config(format_of(target).converter.options, target.settings))


def conversion_flags(target: ModelTarget) -> str:
    return shlex.join(conversion_argv(target))


def extra_inputs(target: ModelTarget) -> list[str]:
    """Files the conversion reads besides the checkpoint (a TorchTitan config and tokenizer)."""
    return format_of(target).extra_inputs(target.settings["source"])


def conversion_mem_mb(target: ModelTarget, checkpoint: str) -> int:
    return CONVERSION_SIZING[format_of(target).sizing].mem_mb(checkpoint)


def conversion_runtime_min(target: ModelTarget, checkpoint: str) -> int:
    return CONVERSION_SIZING[format_of(target).sizing].runtime_min(checkpoint)


def reference(target: ModelTarget, results: str) -> str | None:
    """The numeric reference of verify_model: the model's verify.reference, or by default its source."""
    wanted = target.settings.get("verify", {}).get("reference", "source")
    if wanted == "none":
        return None
    if wanted != "source":
        return wanted
    if target.full_state and format_of(target).prepare_rule:
        return conversion_input(target, results)  # MaxText's math runs on the param-only arrays
    return format_of(target).reference(target.source)
