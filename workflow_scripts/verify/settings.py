"""The verification settings, declared once (`setting.py`): probe prompts, tolerances by dtype, single file.

The config's `verify:` section gives them for every model, a model's own `verify.tolerances` is laid over the
global tolerances (`for_model`), the verify rule passes them as `to_argv`, and `distillery verify` reads them
back from its flags. The tolerances travel as one repeatable flag, `--tolerance DTYPE=VALUE`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..errors import DistilleryError
from ..setting import add_flags, from_args, from_config, setting
from ..setting import to_argv as settings_argv

PROBE_PROMPTS = ("The capital of France is", "Question: What is 17 + 25?\nAnswer:")
# Largest |a - b| / max|reference| accepted, by the dtype the converted weights are stored in.
TOLERANCES = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 5e-3}
TOLERANCE_FLAG = "--tolerance"


@dataclass(frozen=True)
class VerifySettings:
    probe_prompts: tuple[str, ...] = setting(
        PROBE_PROMPTS, flag="--probe-prompt", metavar="PROMPT", help="a prompt for the logits check (repeatable)"
    )
    tolerances: dict[str, float] = setting(
        default_factory=lambda: dict(TOLERANCES),
        flag=TOLERANCE_FLAG,
        help="max relative logit difference for weights stored in DTYPE, e.g. bfloat16=0.04 (repeatable)",
    )
    expect_single_file: bool = setting(False, help="fail if the weights are split over several files")

    def tolerance(self, dtype: str) -> float:
        return self.tolerances.get(dtype, self.tolerances.get("float32", TOLERANCES["float32"]))


def add_verify_flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, VerifySettings, skip=(TOLERANCE_FLAG,))  # repeatable pairs, merged over the defaults
    help = f"max relative logit difference for weights stored in DTYPE, repeatable (default: {TOLERANCES})"
    parser.add_argument(TOLERANCE_FLAG, action="append", default=[], metavar="DTYPE=VALUE", help=help)


def verify_settings_from_args(args: argparse.Namespace) -> VerifySettings:
    given = parse_tolerances(getattr(args, "tolerance", []) or [])
    return from_args(VerifySettings, args, tolerances={**TOLERANCES, **given})


def parse_tolerances(items: list[str]) -> dict[str, float]:
    tolerances = {}
    for item in items:
        dtype, _, value = item.partition("=")
        try:
            tolerances[dtype] = float(value)
        except ValueError:
            raise DistilleryError(f"--tolerance {item!r} is not DTYPE=NUMBER", hint="e.g. bfloat16=0.04") from None
    return tolerances


def for_model(verify: Mapping, model_verify: Mapping | None = None) -> VerifySettings:
    """The settings of the config's `verify:` section, with the model's own `verify.tolerances` laid over them."""
    settings = from_config(VerifySettings, verify)
    own = (model_verify or {}).get("tolerances") or {}
    return replace(settings, tolerances={**TOLERANCES, **settings.tolerances, **own})


def to_argv(settings: VerifySettings) -> list[str]:
    """The flags that give `settings` back; every tolerance is passed, so the command needs no default."""
    argv = settings_argv(settings, skip=(TOLERANCE_FLAG,))
    for dtype, value in sorted(settings.tolerances.items()):
        argv += [TOLERANCE_FLAG, f"{dtype}={value}"]
    return argv
