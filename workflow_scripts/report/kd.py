"""A KD job's figures: its summary (rows, skips by reason, tokens, throughput), tokens/s per chunk, sample lines.

Made from `summary.json` (written by `kd/dataset.py`'s `summarize`: counts, `skipped_by_reason`, the first
1000 skip lines in `skipped`, and a `per_chunk` list) and the first records of the dataset (schema:
`workflow_scripts/schemas/kd_record.schema.json`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..atomic import atomic_write_texts
from ..output_guard import check_apart_from_inputs
from .artifacts import first_records, read_json
from .html import Cell, heading, key_values, number, page, paragraph, table
from .svg import line_plot

PER_CHUNK_ROWS = 500  # a table of 10,000 chunks helps nobody; the plot shows them all
SAMPLE_TEXT = 600  # characters of a prompt or completion shown; a long one is cut with a note
SAMPLES = 8  # records shown as sample completions


def _skip_details(summary: dict) -> dict[str, str]:
    """Per reason, its details counted over the listed skips (an empty prompt's detail says null or blank)."""
    details: dict[str, Counter] = {}
    for skip in summary.get("skipped", []):
        if skip.get("detail"):
            details.setdefault(skip.get("skipped"), Counter())[skip["detail"]] += 1
    return {
        reason: ", ".join(f"{count} {detail}" for detail, count in counts.most_common())
        for reason, counts in details.items()
    }


def skips_table(summary: dict) -> str:
    reasons = summary.get("skipped_by_reason", {})
    if not reasons:
        return paragraph("no row was skipped", "note")
    details = _skip_details(summary)
    return table(
        ("reason", "rows", "details"),
        [(reason, number(count), details.get(reason, "")) for reason, count in reasons.items()],
    )


# (column, key of a per_chunk entry): the figures of each chunk after its name
_PER_CHUNK = (
    ("rows", "rows"),
    ("skipped", "skipped"),
    ("completion tokens", "completion_tokens"),
    ("generate s", "generate_seconds"),
    ("tokens/s", "output_tokens_per_second"),
    ("resumed rows", "resumed_rows"),
)


def _per_chunk_table(summary: dict) -> str:
    chunks = summary.get("per_chunk", [])
    rows = [
        (chunk.get("chunk"), *(number(chunk.get(key)) for _, key in _PER_CHUNK)) for chunk in chunks[:PER_CHUNK_ROWS]
    ]
    headers = ("chunk", *(column for column, _ in _PER_CHUNK))
    cut = (
        [paragraph(f"the first {PER_CHUNK_ROWS} of {len(chunks)} chunks", "note")]
        if len(chunks) > PER_CHUNK_ROWS
        else []
    )
    return table(headers, rows) + "".join(cut)


def summary_page(summary: dict) -> str:
    figures = key_values(
        [
            ("rows", summary.get("rows")),
            ("rows generated", summary.get("generated_rows")),
            ("rows skipped", summary.get("skipped_rows")),
            ("samples (records)", summary.get("samples")),
            ("files / chunks", f"{summary.get('files')} / {summary.get('chunks')}"),
            ("prompt tokens", summary.get("prompt_tokens")),
            ("completion tokens", summary.get("completion_tokens")),
            ("generate seconds", summary.get("generate_seconds")),
            ("engine start seconds", summary.get("engine_start_seconds")),
            ("output tokens/s", summary.get("output_tokens_per_second")),
            ("output tokens/s with engine start", summary.get("output_tokens_per_second_with_engine_start")),
            ("engines", ", ".join(summary.get("engines", []))),
            ("settings hash", summary.get("settings_hash")),
        ]
    )
    parts = [
        figures,
        heading("Skipped rows by reason"),
        skips_table(summary),
        heading("Per chunk"),
        _per_chunk_table(summary),
    ]
    return page(f"KD job {summary.get('job')}", parts)


def throughput_plot(summary: dict) -> str:
    chunks = summary.get("per_chunk", [])
    points = [
        (index, chunk["output_tokens_per_second"])
        for index, chunk in enumerate(chunks, 1)
        if chunk.get("output_tokens_per_second") is not None
    ]
    title = f"KD job {summary.get('job')}: output tokens per second of each chunk"
    return line_plot(title, points, "chunk (in dataset order)", "tokens / s")


def _cut(text: object) -> Cell:
    text = "" if text is None else str(text)
    shown = text if len(text) <= SAMPLE_TEXT else text[:SAMPLE_TEXT] + f" … ({len(text) - SAMPLE_TEXT} more characters)"
    return Cell(shown, "text")


def samples_page(job: str, records: list[dict]) -> str:
    title = f"KD job {job}: sample completions"
    if not records:
        return page(title, [paragraph("the dataset holds no record", "note")])
    rows = [
        (
            record.get("id"),
            record.get("sample_index"),
            _cut(record.get("prompt")),
            _cut(record.get("completion")),
            record.get("finish_reason"),
            number(record.get("completion_tokens")),
        )
        for record in records
    ]
    intro = paragraph(f"the first {len(records)} records of the dataset, in its order", "note")
    return page(title, [intro, table(("id", "sample", "prompt", "completion", "finish", "tokens"), rows)])


def write_figures(
    summary: Path, dataset: Path, summary_html: Path, throughput_svg: Path, samples_html: Path, samples: int = SAMPLES
) -> None:
    for output in (summary_html, throughput_svg, samples_html):
        check_apart_from_inputs(output, [summary, dataset])
    figures = read_json(summary)
    atomic_write_texts(
        {
            Path(summary_html): summary_page(figures),
            Path(throughput_svg): throughput_plot(figures),
            Path(samples_html): samples_page(str(figures.get("job")), first_records(dataset, samples)),
        }
    )
