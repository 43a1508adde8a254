"""`distillery kd-status` on job folders and chunk logs built by hand: which chunks are done, running, failed or
pending, and the rates and ETA the progress lines give. Runs of real chunk jobs are in test_kd.py."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from workflow_scripts.kd.chunk_progress import ProgressPoint, format_progress_line, parse_progress_line
from workflow_scripts.kd.manifest import load_manifest
from workflow_scripts.kd.status import job_status

NOW = 1_800_000_000.0  # the moment every status below is taken
CHUNKS = [
    ("part-000", 0, 100),
    ("part-000", 100, 200),
    ("part-000", 200, 300),
    ("part-001", 0, 100),
    ("part-001", 100, 150),
]


def chunk_name(part: str, start: int, stop: int) -> str:
    return f"{part}/{start:09d}-{stop:09d}"


@pytest.fixture
def job(tmp_path) -> Path:
    """A job folder with a manifest of five chunks (450 rows), none of them started."""
    folder = tmp_path / "results/kd/web"
    folder.mkdir(parents=True)
    manifest = {
        "version": 1,
        "job": "web",
        "settings_hash": "0123456789abcdef",
        "settings": {"sampling": {"n": 1}},
        "files": [],
        "rows": 450,
        "chunks": [{"part": part, "file": f"{part}.parquet", "start": a, "stop": b} for part, a, b in CHUNKS],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def touch(path: Path, text: str, seconds_ago: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (NOW - seconds_ago, NOW - seconds_ago))


def finish(job: Path, name: str, seconds_ago: float = 3600) -> None:
    touch(job / f"chunks/{name}.stats.json", "{}\n", seconds_ago)
    touch(job / f"chunks/{name}.jsonl", "", seconds_ago)


def save_rows(job: Path, name: str, rows: range, seconds_ago: float) -> None:
    """A side file holding `rows`, as a chunk job appends them (skip lines are whole rows too)."""
    part, span = name.split("/")
    lines = [{"skipped": "empty_prompt", "detail": "blank", "row_index": row, "id": f"{part}:{row}"} for row in rows]
    touch(job / f"chunks/{part}/.{span}.jsonl.partial", "".join(json.dumps(line) + "\n" for line in lines), seconds_ago)


def write_log(logs: Path, name: str, points: list[tuple[float, int, int]], total: int, last_line: str = "") -> Path:
    """A chunk log with a progress line per (seconds ago, rows, tokens), its time that of its last line."""
    lines = ["INFO: loading the engine"]
    lines += [format_progress_line(ProgressPoint(NOW - ago, name, rows, total, tokens)) for ago, rows, tokens in points]
    log = logs / f"{name}.log"
    touch(log, "\n".join(lines + ([last_line] if last_line else [])) + "\n", min(ago for ago, _, _ in points))
    return log


def status_of(job: Path, logs: Path | None, **kwargs) -> dict:
    return job_status(load_manifest(job / "manifest.json"), logs, now=NOW, **kwargs)


def test_a_progress_line_reads_back_as_what_it_says():
    point = ProgressPoint(NOW, "part-000/000000000-000000100", 42, 100, 5310)
    line = format_progress_line(point, "3.20 rows/s, 410 tok/s over the last 30s; ETA 18s")
    assert line == (
        "2027-01-15T08:00:00Z kd-chunk part-000/000000000-000000100: 42/100 rows, 5310 output tokens; "
        "3.20 rows/s, 410 tok/s over the last 30s; ETA 18s"
    )
    assert parse_progress_line(line) == point
    assert parse_progress_line("2027-01-15T08:00:00Z INFO vllm: 42/100 rows") is None


def test_each_chunk_is_done_running_failed_or_pending_from_what_is_on_disk(job, tmp_path):
    logs = tmp_path / "logs/kd_chunk/web"
    names = [chunk_name(*chunk) for chunk in CHUNKS]
    finish(job, names[0])
    write_log(logs, names[0], [(3700, 0, 0), (3600, 100, 900)], 100)  # done, its log long finished
    save_rows(job, names[1], range(100, 130), seconds_ago=10)
    write_log(logs, names[1], [(40, 0, 0), (10, 30, 300)], 100)  # running: its log grew 10 s ago
    save_rows(job, names[2], range(200, 250), seconds_ago=900)
    write_log(logs, names[2], [(950, 0, 0), (900, 50, 500)], 100, "distillery kd-chunk: error: CUDA out of memory")
    save_rows(job, names[3], range(0, 20), seconds_ago=900)  # killed, with no log (or a log elsewhere)

    status = status_of(job, logs)
    assert [status[f"{state}_chunks"] for state in ("done", "running", "failed", "pending")] == [1, 1, 2, 1]
    assert status["running"] == [{"chunk": names[1], "rows": 30, "log": str(logs / f"{names[1]}.log")}]
    assert status["failed"] == [
        {"chunk": names[2], "rows": 50, "log": str(logs / f"{names[2]}.log"),
         "why": "distillery kd-chunk: error: CUDA out of memory"},
        {"chunk": names[3], "rows": 20, "log": None, "why": "stopped with no error (killed, or its node went away)"},
    ]  # fmt: skip
    assert status["remaining"] == names[1:]
    # Rows done: the done chunk's 100 and the 30 + 50 + 20 saved in side files.
    assert (status["rows"], status["done_rows"], status["rows_in_unfinished_chunks"]) == (450, 200, 100)


def test_a_chunk_whose_log_stopped_growing_has_failed_even_without_an_error_line(job, tmp_path):
    logs = tmp_path / "logs/kd_chunk/web"
    name = chunk_name(*CHUNKS[0])
    write_log(logs, name, [(700, 0, 0), (400, 60, 600)], 100)
    assert status_of(job, logs)["failed"][0]["why"] == "stopped with no error (killed, or its node went away)"
    assert status_of(job, logs, stale_after=600)["running_chunks"] == 1


@pytest.mark.parametrize(
    "warning",
    [
        "/venv/torch/nn/modules/module.py:1789: FutureWarning: `past_key_values` is deprecated\n  return f(*args)",
        "WARNING: `past_key_values`/`cache_params` are deprecated. Use `cache` instead.",
        "2026-12-01 10:42:05,123 WARNING transformers.utils.generic: `cache_params` are deprecated.",
        "[transformers] `past_key_values`/`cache_params` are deprecated. Use `cache` instead.",
    ],
    ids=["python warning", "logged warning", "logged warning with --verbose", "a library's own log format"],
)
def test_a_warning_after_the_last_progress_line_is_not_why_a_chunk_stopped(job, tmp_path, warning):
    logs = tmp_path / "logs/kd_chunk/web"
    name = chunk_name(*CHUNKS[0])
    write_log(logs, name, [(700, 0, 0), (400, 60, 600)], 100, warning)
    assert status_of(job, logs)["failed"][0]["why"] == "stopped with no error (killed, or its node went away)"


def test_a_traceback_after_the_last_progress_line_is_why_a_chunk_stopped(job, tmp_path):
    logs = tmp_path / "logs/kd_chunk/web"
    name = chunk_name(*CHUNKS[0])
    traceback = "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nKeyError: 'row_index'"
    write_log(logs, name, [(700, 0, 0), (400, 60, 600)], 100, traceback)
    assert status_of(job, logs)["failed"][0]["why"] == "KeyError: 'row_index'"


def test_rates_are_the_rows_and_tokens_the_logs_show_over_the_window(job, tmp_path):
    logs = tmp_path / "logs/kd_chunk/web"
    names = [chunk_name(*chunk) for chunk in CHUNKS]
    # Running for ten minutes: 100 rows and 1000 tokens in the last five.
    save_rows(job, names[1], range(100, 160), seconds_ago=0)
    write_log(logs, names[1], [(600, 0, 0), (300, 30, 300), (0, 130, 1300)], 100)
    # Started four minutes ago and finished: all of its 50 rows in the window.
    finish(job, names[4], seconds_ago=60)
    write_log(logs, names[4], [(240, 0, 0), (60, 50, 700)], 50)
    # Finished long before the window: not counted.
    finish(job, names[0])
    write_log(logs, names[0], [(4000, 0, 0), (3600, 100, 900)], 100)

    status = status_of(job, logs, window=300)
    assert status["rows_per_second"] == pytest.approx(150 / 300)
    assert status["output_tokens_per_second"] == pytest.approx(1700 / 300, abs=0.1)
    # 450 rows, 100 + 50 done and 60 saved: 240 to go at 0.5 rows/s.
    assert status["eta_seconds"] == 480


def test_the_rate_of_a_job_younger_than_the_window_is_over_its_own_age(job, tmp_path):
    logs = tmp_path / "logs/kd_chunk/web"
    name = chunk_name(*CHUNKS[0])
    save_rows(job, name, range(0, 60), seconds_ago=0)
    write_log(logs, name, [(60, 0, 0), (0, 60, 600)], 100)
    assert status_of(job, logs, window=300)["rows_per_second"] == pytest.approx(1.0)


def test_without_logs_rates_and_eta_are_unknown_and_said_so(job, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    finish(job, chunk_name(*CHUNKS[0]))
    result = run_cli("kd-status", job)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "job web: 100/450 rows done, 350 remaining (0 saved in unfinished chunks)",
        "chunks: 1 done, 0 running, 0 failed, 4 pending (5 in all)",
        "last 5m00s: no progress lines in the chunk logs (no log folder); rates and ETA unknown",
    ]


def test_the_command_reads_the_workflows_log_folder_by_default(job, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = chunk_name(*CHUNKS[0])
    save_rows(job, name, range(0, 40), seconds_ago=0)
    now = time.time()
    log = tmp_path / "logs/kd_chunk/web" / f"{name}.log"
    log.parent.mkdir(parents=True)
    lines = [ProgressPoint(now - 100, name, 0, 100, 0), ProgressPoint(now, name, 40, 100, 400)]
    log.write_text("".join(format_progress_line(point) + "\n" for point in lines))
    result = run_cli("kd-status", job, "--json")
    status = json.loads(result.stdout)
    assert status["logs"] == "logs/kd_chunk/web" and status["running_chunks"] == 1
    assert status["rows_per_second"] == pytest.approx(0.4, abs=0.02)
    text = run_cli("kd-status", job).stdout.splitlines()
    assert re.fullmatch(r"last 5m00s: 0\.\d\d rows/s, \d output tokens/s; ETA 1\dm\d\ds", text[2]), text[2]
    assert text[3] == f"  running: {name}: 40 rows saved (logs/kd_chunk/web/{name}.log)"
