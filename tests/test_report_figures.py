"""The figures of `snakemake --report`: HTML tables and SVG plots made from the stages' JSON artifacts.

The pages are read back as a browser's parser sees them (html.parser, an XML parser for the SVG); the report
itself is opened in a real Chromium by tests/test_workflow.py."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import pytest

from workflow_scripts.icm.algorithm import ICMSearch, ICMSettings
from workflow_scripts.icm.run import label_rows, summarize
from workflow_scripts.icm.zero_shot import zero_shot_margins, zero_shot_summary
from workflow_scripts.report import icm, kd, models
from workflow_scripts.report.artifacts import first_records
from workflow_scripts.report.svg import nice_ticks
from workflow_scripts.verify.report import FAIL, PASS, SKIP, Check, Report
from workflow_scripts.workflow.report_figures import ReportFigures

SVG = "{http://www.w3.org/2000/svg}"


class Tables(HTMLParser):
    """The text of every table cell, table by table and row by row; and the page's whole text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def figures(table: list[list[str]]) -> dict[str, str]:
    """A two-column table of named figures as a dict."""
    return {row[0]: row[1] for row in table}


def points(svg: str) -> list[tuple[float, float]]:
    root = ElementTree.fromstring(svg)
    return [(float(c.get("cx")), float(c.get("cy"))) for c in root.iter(f"{SVG}circle")]


def test_verification_page_lists_every_check_with_its_result():
    checks = [
        Check("files", PASS, "weights and config present", "2 files"),
        Check("numerics", FAIL, "logits match the reference", "max rel diff 0.3 (above the bfloat16 tolerance 0.005)"),
        Check("parallel:T=2, P=1", SKIP, "vLLM split at T=2, P=1", "<no plan>"),
    ]
    page = Tables(models.verification_page(Report("results/models/m/hf", checks, "work/src").to_dict()))
    summary, checks_table = page.tables
    assert figures(summary)["verdict"] == "failed: numerics"
    assert figures(summary)["numeric reference"] == "work/src"
    assert checks_table[1:] == [
        ["weights and config present", "pass", "2 files"],
        ["logits match the reference", "fail", "max rel diff 0.3 (above the bfloat16 tolerance 0.005)"],
        ["vLLM split at T=2, P=1", "skip", "<no plan>"],  # text, escaped, never markup
    ]


def plan(tp: int, pp: int, stages: list[dict]) -> dict:
    memory = Check("memory", PASS, "fits in GPU memory", "~1 GiB", {"stages": stages})
    return Report(f"results/models/m/hf at T={tp}, P={pp}", [Check("tp_heads", PASS, "heads split"), memory]).to_dict()


def test_plans_page_shows_each_plan_and_the_memory_of_each_pipeline_stage():
    stage = {"layers": 15, "weights_bytes": 3 << 30, "kv_cache_bytes": 1 << 29}
    page = Tables(models.plans_page("results/models/m/hf", [plan(2, 1, [stage]), plan(1, 2, [stage, stage])]))
    overview = page.tables[0]
    assert overview[1:] == [["T=2, P=1", "passed"], ["T=1, P=2", "passed"]]
    second_plan_stages = page.tables[4]
    assert second_plan_stages[1:] == [["0", "15", "3.2 GB", "536.9 MB"], ["1", "15", "3.2 GB", "536.9 MB"]]


def test_plans_page_without_plans_says_why():
    assert "verify.parallel_sizes lists no plan" in models.plans_page("m", [])


def kd_summary(per_chunk: list[dict], skipped: list[dict]) -> dict:
    """summary.json as kd-dataset writes it (kd/dataset.py, summarize), the keys the figures read."""
    reasons: dict[str, int] = {}
    for skip in skipped:
        reasons[skip["skipped"]] = reasons.get(skip["skipped"], 0) + 1
    return {
        "job": "web", "rows": 40, "generated_rows": 40 - len(skipped), "samples": 2 * (40 - len(skipped)),
        "skipped_rows": len(skipped), "skipped_by_reason": reasons, "skipped": skipped, "files": 1,
        "chunks": len(per_chunk), "prompt_tokens": 500, "completion_tokens": 600, "generate_seconds": 3.0,
        "engine_start_seconds": 1.0, "output_tokens_per_second": 200.0,
        "output_tokens_per_second_with_engine_start": 150.0, "engines": ["transformers"], "per_chunk": per_chunk,
    }  # fmt: skip


def chunk(name: str, tokens: int, seconds: float) -> dict:
    rate = round(tokens / seconds, 2) if seconds else None
    return {"chunk": name, "rows": 16, "skipped": 0, "completion_tokens": tokens, "generate_seconds": seconds,
            "output_tokens_per_second": rate, "resumed_rows": 0}  # fmt: skip


def test_kd_summary_counts_skipped_rows_by_reason_with_their_details():
    skipped = [
        {"skipped": "empty", "detail": "null", "row_index": 3, "id": "a"},
        {"skipped": "empty", "detail": "blank", "row_index": 4, "id": "b"},
        {"skipped": "empty", "detail": "null", "row_index": 9, "id": "c"},
        {"skipped": "prompt_too_long", "detail": "", "row_index": 5, "id": "d"},
    ]
    page = Tables(kd.summary_page(kd_summary([chunk("part-000/000000000-000000016", 300, 1.5)], skipped)))
    summary, skips, per_chunk = page.tables
    assert figures(summary)["rows skipped"] == "4" and figures(summary)["output tokens/s"] == "200"
    assert skips[1:] == [["empty", "3", "2 null, 1 blank"], ["prompt_too_long", "1", ""]]
    assert per_chunk[1] == ["part-000/000000000-000000016", "16", "0", "300", "1.5", "200", "0"]


def test_kd_summary_of_many_chunks_lists_the_first_ones_and_says_so():
    chunks = [chunk(f"part-000/{i:09d}", 10, 1.0) for i in range(kd.PER_CHUNK_ROWS + 5)]
    page = kd.summary_page(kd_summary(chunks, []))
    assert len(Tables(page).tables[-1]) == 1 + kd.PER_CHUNK_ROWS
    assert f"the first {kd.PER_CHUNK_ROWS} of {kd.PER_CHUNK_ROWS + 5} chunks" in page
    assert "no row was skipped" in page


def test_throughput_plot_has_a_point_per_chunk_that_generated():
    chunks = [chunk("a", 100, 1.0), chunk("b", 300, 1.0), chunk("c", 0, 0.0), chunk("d", 200, 1.0)]
    drawn = points(kd.throughput_plot(kd_summary(chunks, [])))
    assert len(drawn) == 3  # chunk c generated nothing (all rows skipped): no rate to draw
    heights = [y for _, y in drawn]
    assert heights[1] < heights[2] < heights[0]  # SVG's y grows downwards: 300 tokens/s is drawn highest


def test_sample_completions_are_cut_when_long():
    records = [{"id": "r1", "sample_index": 0, "prompt": "Once upon", "completion": "x" * (kd.SAMPLE_TEXT + 50),
                "finish_reason": "length", "completion_tokens": 16}]  # fmt: skip
    rows = Tables(kd.samples_page("web", records)).tables[0]
    assert rows[1][:3] == ["r1", "0", "Once upon"]
    assert rows[1][3] == "x" * kd.SAMPLE_TEXT + " … (50 more characters)"


def test_first_records_read_a_parquet_dataset_without_the_rest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": str(i), "prompt": f"p{i}", "completion": f"c{i}"} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "dataset.parquet", row_group_size=20)
    assert first_records(tmp_path / "dataset.parquet", 3) == rows[:3]
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert first_records(tmp_path / "dataset.jsonl", 3) == rows[:3]


@pytest.fixture
def icm_run():
    """A real ICM search (test_icm_algorithm's planted scorer) and the report.json and labels.jsonl of it."""
    from test_icm_algorithm import PlantedScorer, gsm8k_like

    examples, planted = gsm8k_like(4)
    settings = ICMSettings(alpha=30, num_seed=4, iterations=40, seed=3)
    state = ICMSearch(examples, PlantedScorer(planted), settings).run()
    zero_shot = zero_shot_margins(PlantedScorer(planted), examples)
    report = {**summarize(examples, state, settings), "zero_shot": zero_shot_summary(examples, state.labels, zero_shot)}
    return report, label_rows(examples, state, zero_shot)


def test_icm_summary_counts_the_labels_against_gold_from_labels_jsonl(icm_run):
    report, labels = icm_run
    page = Tables(icm.summary_page("claims", report, labels))
    summary, agreement, claims = page.tables
    assert figures(summary)["accuracy"] == f"{report['accuracy']:.1%}"
    balance = report["label_balance"]
    assert (
        figures(summary)["labeled True / False / unlabeled"]
        == f"{balance['true']} / {balance['false']} / {balance['unlabeled']}"
    )
    assert agreement[0] == ["", "gold True", "gold False", "claims"]
    counts = {row[0]: [int(cell) for cell in row[1:]] for row in agreement[1:]}
    right = counts["labeled True"][0] + counts["labeled False"][1]
    labeled = counts["labeled True"][2] + counts["labeled False"][2]
    assert right / labeled == pytest.approx(report["accuracy"], abs=1e-4)
    assert counts["labeled True"][2] == balance["true"] and counts["unlabeled"][2] == balance["unlabeled"]
    assert len(claims) == 1 + len(labels)


def test_objective_plot_has_a_point_per_iteration(icm_run):
    report, _ = icm_run
    assert len(report["objective_by_iteration"]) == report["iterations"] == 40
    drawn = points(icm.objective_plot("claims", report))
    assert len(drawn) == 40 and [x for x, _ in drawn] == sorted(x for x, _ in drawn)


def test_objective_plot_of_a_report_without_it_says_why():
    svg = icm.objective_plot("claims", {"iterations": 5})
    assert points(svg) == [] and "no objective_by_iteration" in svg
    ElementTree.fromstring(svg)  # still an image a browser renders


@pytest.mark.parametrize(("low", "high"), [(0, 1), (-3.2, 17.9), (5, 5), (1e-4, 3e-4), (1, 40)])
def test_axis_ticks_are_round_and_cover_the_values(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 12
    steps = {round(b - a, 12) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_report_commands_write_the_figures_and_name_a_missing_input(tmp_path, run_cli, icm_run):
    report, labels = icm_run
    write_json(tmp_path / "report.json", report)
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in labels))
    result = run_cli("report-icm", "--job", "claims", "--report", tmp_path / "report.json", "--labels",
                     tmp_path / "labels.jsonl", "--summary-html", tmp_path / "out/summary.html", "--objective-svg",
                     tmp_path / "out/objective.svg")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "ICM job claims" in (tmp_path / "out/summary.html").read_text()
    assert len(points((tmp_path / "out/objective.svg").read_text())) == 40

    result = run_cli("report-model", "--verification", tmp_path / "missing.json", "--verification-html",
                     tmp_path / "v.html", "--plans-html", tmp_path / "p.html")  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"distillery report-model: error: {tmp_path / 'missing.json'}: does not exist; "
        "rerun the step that writes it (snakemake rebuilds a missing or stale artifact)"
    ]
    assert not (tmp_path / "v.html").exists()


def test_without_chromium_the_browser_test_is_skipped_unless_ci_requires_a_browser(monkeypatch, tmp_path):
    from helpers.headless_chromium import chromium_or_skip

    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on it
    monkeypatch.delenv("DISTILLERY_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium here"):
        chromium_or_skip()
    monkeypatch.setenv("DISTILLERY_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="DISTILLERY_REQUIRE_BROWSER=1 but no Chromium here"):
        chromium_or_skip()


def test_a_run_asks_for_each_figure_of_each_model_and_job_at_the_paths_the_rules_write():
    figures = ReportFigures("results")
    assert figures.path("kd", "throughput") == "results/report/kd/{job}/throughput.svg"  # the rule's output
    assert figures.all(["m"], [], ["claims"]) == [
        "results/report/models/m/verification.html",
        "results/report/models/m/plans.html",
        "results/report/icm/claims/summary.html",
        "results/report/icm/claims/objective.svg",
    ]
