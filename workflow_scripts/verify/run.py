"""`distillery verify`: every check on a model folder, gathered into one report."""

from __future__ import annotations

import json
from pathlib import Path

from ..architectures.remote_code import allow_remote_code
from .numerics import ReferenceLoader, check_numerics
from .report import FAIL, PASS, SKIP, WARN, Check, Report
from .settings import PROBE_PROMPTS
from .static_checks import run_static_checks


def verify_model(
    model_path: str | Path,
    reference_path: str | Path | None = None,
    expect_single_file: bool = False,
    probe_prompts: list[str] | tuple[str, ...] = PROBE_PROMPTS,
    tolerances: dict[str, float] | None = None,
    plan_reports: list[Path] | tuple[Path, ...] = (),
    trust_remote_code: bool = False,
    load_reference: ReferenceLoader | None = None,
) -> Report:
    """`load_reference`: how to run a reference that is no HF folder (its format's forward), see numerics.py."""
    model_path = Path(model_path)
    trust_remote_code = allow_remote_code(model_path, trust_remote_code)
    checks = run_static_checks(model_path, expect_single_file=expect_single_file, trust_remote_code=trust_remote_code)
    if reference_path is None:
        checks.append(Check("numerics", SKIP, "logits match the reference", "no --reference given"))
    elif any(check.status == FAIL for check in checks):
        checks.append(Check("numerics", SKIP, "logits match the reference", "skipped: earlier checks failed"))
    else:
        checks.append(check_numerics(model_path, Path(reference_path), probe_prompts, tolerances, trust_remote_code,
                                     load_reference))  # fmt: skip
    checks += [parallel_check(Path(path)) for path in plan_reports]
    return Report(
        model_path=str(model_path),
        checks=checks,
        reference_path=str(reference_path) if reference_path else None,
    )


def parallel_check(plan_report: Path) -> Check:
    """One line of the report's TP/PP section, from a `validate-plans` JSON report."""
    data = json.loads(Path(plan_report).read_text())
    label = data["model_path"].rsplit(" at ", 1)[-1]
    failed = [c for c in data["checks"] if c["status"] == FAIL]
    warned = [c for c in data["checks"] if c["status"] == WARN]
    if failed:
        status, detail = FAIL, "; ".join(f"{c['title']}: {c['detail']}" for c in failed)
    elif warned:
        status, detail = WARN, "; ".join(f"{c['title']}: {c['detail']}" for c in warned)
    else:
        status, detail = PASS, "every split and plan check passed"
    return Check(f"parallel:{label}", status, f"vLLM split at {label}", detail, {"report": str(plan_report)})
