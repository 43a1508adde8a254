"""`distillery verify`: every check on a model folder, gathered into one report."""

from __future__ import annotations

from pathlib import Path

from .numerics import DEFAULT_PROBE_PROMPTS, check_numerics
from .report import FAIL, SKIP, Check, Report
from .static_checks import run_static_checks


def verify_model(
    model_path: str | Path,
    reference_path: str | Path | None = None,
    expect_single_file: bool = False,
    probe_prompts: list[str] | tuple[str, ...] = DEFAULT_PROBE_PROMPTS,
    tolerances: dict[str, float] | None = None,
) -> Report:
    model_path = Path(model_path)
    checks = run_static_checks(model_path, expect_single_file=expect_single_file)
    if reference_path is None:
        checks.append(Check("numerics", SKIP, "logits match the reference", "no --reference given"))
    elif any(check.status == FAIL for check in checks):
        checks.append(Check("numerics", SKIP, "logits match the reference", "skipped: earlier checks failed"))
    else:
        checks.append(check_numerics(model_path, Path(reference_path), probe_prompts, tolerances))
    return Report(
        model_path=str(model_path),
        checks=checks,
        reference_path=str(reference_path) if reference_path else None,
    )
