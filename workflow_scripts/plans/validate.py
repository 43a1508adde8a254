"""`distillery validate-plans`: every plan and split check for one (T, P), gathered into one report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from ..verify.report import FAIL, WARN, Report
from .plan_checks import check_no_split, check_pp_plan, check_tp_plan, model_plans
from .vllm_limits import Budget, check_memory, check_native, check_split_arithmetic


def validate_plans(
    model: nn.Module, tp: int, pp: int, budget: Budget | None = None, strict: bool = False, name: str = ""
) -> Report:
    budget = budget or Budget()
    config = model.config
    tp_plan, pp_plan, no_split = model_plans(model)
    checks = check_split_arithmetic(config, tp, pp)
    checks.append(check_memory(config, tp, pp, budget))
    checks.append(check_native(config, tp, pp, bool(tp_plan), bool(pp_plan)))
    if tp > 1 or tp_plan:
        checks += check_tp_plan(model, tp_plan)
    if pp > 1 or pp_plan:
        checks += check_pp_plan(model, pp_plan)
    checks.append(check_no_split(model, no_split))
    if strict:
        checks = [replace(c, status=FAIL, detail=f"{c.detail} (--strict)") if c.status == WARN else c for c in checks]
    return Report(model_path=f"{name or type(model).__name__} at T={tp}, P={pp}", checks=checks)


def write_plan_report(report: Report, path: Path) -> None:
    report.write(Path(path), Path(path).with_suffix(".md"))
