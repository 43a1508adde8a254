"""A model's verification report and its TP/PP plans (verification.json, plans/tp{T}_pp{P}.json) as HTML pages.

Both files are `verify/report.py`'s Report as JSON: a verdict and a list of checks (name, status, title, detail,
data). A plan report's model_path ends in " at T=.., P=.." and its memory check carries each pipeline stage's
weights and KV cache in its data.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write_texts
from ..output_guard import check_apart_from_inputs
from ..sizes import format_size
from .artifacts import read_json
from .html import Cell, heading, key_values, number, page, paragraph, status, table


def size(num_bytes: int | None) -> Cell:
    return number(None if num_bytes is None else format_size(num_bytes))


def verdict(report: dict) -> str:
    return "passed" if report.get("passed") else "failed: " + ", ".join(report.get("failed_checks") or ["?"])


def plan_label(plan: dict) -> str:
    """The plan's sizes ("T=2, P=1"), as verify's TP/PP lines name them (`parallel_check` in verify/run.py)."""
    return str(plan.get("model_path", "?")).rsplit(" at ", 1)[-1]


def checks_table(report: dict) -> str:
    rows = [
        (check.get("title", check.get("name")), status(check.get("status", "")), check.get("detail", ""))
        for check in report.get("checks", [])
    ]
    return table(("check", "result", "detail"), rows)


def verification_page(report: dict) -> str:
    summary = key_values(
        [
            ("model", report.get("model_path")),
            ("verdict", verdict(report)),
            ("numeric reference", report.get("reference_path") or "none (static checks only)"),
            ("checked", report.get("created")),
        ]
    )
    return page(f"Verification of {report.get('model_path')}", [summary, heading("Checks"), checks_table(report)])


def _stage_rows(plan: dict) -> list[tuple]:
    memory = next((check for check in plan.get("checks", []) if check.get("name") == "memory"), {})
    return [
        (index, number(stage.get("layers")), size(stage.get("weights_bytes")), size(stage.get("kv_cache_bytes")))
        for index, stage in enumerate(memory.get("data", {}).get("stages", []))
    ]


def plans_page(model: str, plans: list[dict]) -> str:
    """An overview of the plans' verdicts, then per plan its checks and the memory of each pipeline stage."""
    title = f"Parallel plans of {model}"
    if not plans:
        return page(title, [paragraph("verify.parallel_sizes lists no plan to check", "note")])
    parts = [table(("plan", "verdict"), [(plan_label(plan), verdict(plan)) for plan in plans])]
    for plan in plans:
        parts += [heading(plan_label(plan)), checks_table(plan)]
        stages = _stage_rows(plan)
        if stages:
            parts.append(table(("pipeline stage", "layers", "weights", "KV cache"), stages))
    return page(title, parts)


def write_figures(verification: Path, plans: list[Path], verification_html: Path, plans_html: Path) -> None:
    for output in (verification_html, plans_html):
        check_apart_from_inputs(output, [verification, *plans])
    report, plan_reports = read_json(verification), [read_json(plan) for plan in plans]
    atomic_write_texts(
        {
            Path(verification_html): verification_page(report),
            Path(plans_html): plans_page(str(report.get("model_path")), plan_reports),
        }
    )
