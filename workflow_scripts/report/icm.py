"""An ICM job's figures: accuracy and label balance (report.json, checked against labels.jsonl) and U per iteration.

`report.json` and `labels.jsonl` are described in `icm/run.py`; `objective_by_iteration` is U = α·P − I of the
labels kept after each iteration (`IterationStats.objective` in `icm/algorithm.py`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..atomic import atomic_write_texts
from ..output_guard import check_apart_from_inputs
from .artifacts import read_json, read_jsonl
from .html import Cell, heading, key_values, number, page, paragraph, table
from .svg import line_plot, message_plot

LABEL_ROWS = 200  # claims listed; the counts above the list cover all of them
_NAMES = {1: "True", 0: "False"}
_LABELED = {1: "labeled True", 0: "labeled False", None: "unlabeled"}
_GOLD = {1: "gold True", 0: "gold False", None: "no gold"}


def _accuracy_figures(report: dict) -> list[tuple[str, object]]:
    """Every accuracy the report states (against gold, and any other it gains), as a percentage."""
    return [
        (key.replace("_", " "), f"{value:.1%}" if isinstance(value, int | float) else value)
        for key, value in report.items()
        if "accuracy" in key and (value is None or isinstance(value, int | float))
    ]


def _zero_shot_figures(zero_shot: dict | None) -> list[tuple[str, object]]:
    """The model asked with no demonstrations (icm/zero_shot.py): the baseline the labels are judged against."""
    if not zero_shot:  # a report written before zero-shot answers were recorded
        return []
    percent = lambda value: "-" if value is None else f"{value:.1%}"  # noqa: E731
    return [
        ("zero-shot accuracy", percent(zero_shot.get("accuracy"))),
        ("zero-shot answered True", percent(zero_shot.get("answered_true"))),
        ("labels agreeing with zero-shot", percent(zero_shot.get("icm_labels_agreeing"))),
    ]


def agreement_table(labels: list[dict]) -> str:
    """Labels against gold, counted from labels.jsonl itself: the numbers the report's accuracy comes from."""
    counts = Counter((row.get("label"), row.get("gold")) for row in labels)
    golds = [gold for gold in (1, 0, None) if any(key[1] == gold for key in counts)]
    rows = [
        (
            _LABELED[label],
            *(number(counts[(label, gold)]) for gold in golds),
            number(sum(counts[(label, gold)] for gold in golds)),
        )
        for label in (1, 0, None)
    ]
    headers = ("", *(_GOLD[gold] for gold in golds), "claims")
    return table(headers, rows)


def _labels_list(labels: list[dict]) -> str:
    rows = [
        (
            row.get("uid"),
            Cell(row.get("prompt"), "text"),
            _NAMES.get(row.get("label"), "unlabeled"),
            _NAMES.get(row.get("gold"), "-"),
            number(row.get("score")),
        )
        for row in labels[:LABEL_ROWS]
    ]
    cut = [paragraph(f"the first {LABEL_ROWS} of {len(labels)} claims", "note")] if len(labels) > LABEL_ROWS else []
    return table(("uid", "claim", "label", "gold", "score (log-odds of True)"), rows) + "".join(cut)


def summary_page(job: str, report: dict, labels: list[dict]) -> str:
    balance = report.get("label_balance", {})
    figures = key_values(
        [
            *_accuracy_figures(report),
            ("gold labels compared", report.get("gold_labels_compared")),
            *_zero_shot_figures(report.get("zero_shot")),
            (
                "labeled True / False / unlabeled",
                f"{balance.get('true')} / {balance.get('false')} / {balance.get('unlabeled')}",
            ),
            ("claims", report.get("examples")),
            ("iterations", report.get("iterations")),
            ("proposals accepted", f"{report.get('accepted')} of {report.get('proposals')}"),
            ("consistency violations left", report.get("consistency_violations_left")),
            ("objective U at the end", report.get("score_U")),
            ("mutual predictability", report.get("mutual_predictability")),
            ("seconds per iteration (mean)", report.get("seconds_per_iteration", {}).get("mean")),
            ("model", report.get("model")),
            ("engine", report.get("engine")),
        ]
    )
    parts = [figures]
    if report.get("note"):
        parts.append(paragraph(report["note"], "note"))
    parts += [heading("Labels against gold"), agreement_table(labels), heading("Claims"), _labels_list(labels)]
    return page(f"ICM job {job}", parts)


def objective_plot(job: str, report: dict) -> str:
    title = f"ICM job {job}: objective U = α·P − I after each iteration"
    values = report.get("objective_by_iteration")
    if values is None:
        return message_plot(title, "this report.json has no objective_by_iteration (made before it was recorded)")
    points = [(iteration, value) for iteration, value in enumerate(values, 1) if value is not None]
    return line_plot(title, points, "iteration", "U")


def write_figures(job: str, report: Path, labels: Path, summary_html: Path, objective_svg: Path) -> None:
    for output in (summary_html, objective_svg):
        check_apart_from_inputs(output, [report, labels])
    figures, rows = read_json(report), read_jsonl(labels)
    atomic_write_texts(
        {Path(summary_html): summary_page(job, figures, rows), Path(objective_svg): objective_plot(job, figures)}
    )
