"""The KD stage under Snakemake: one job per chunk streaming to an engine job, dry runs that list exactly what is
missing, new files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.snakemake_runs import executed_jobs, planned_jobs, snakemake

from workflow_scripts.kd.tiny_dataset import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.long(seconds=350)]


def kd_config(workdir: Path, model: Path, **changes) -> Path:
    job = {
        "model": str(model),
        "dataset": {"path": "data/*.parquet"},
        "max_prompt_tokens": 12,
        "chunk_rows": 16,
        "gpus": 0,
        "sampling": {"max_tokens": 6},
        "engine": {"kind": "transformers", "gen_batch_size": 8},
    }
    job.update(changes)
    config = {"models": {}, "tiny_models": {}, "kd": {"web": job}}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, tiny_model_store) -> tuple[Path, Path]:
    workdir = tmp_path_factory.mktemp("kd-workflow")
    write_tiny_dataset(workdir / "data", files=2, rows=20)
    configfile = kd_config(workdir, tiny_model_store("llama"))
    result = snakemake(workdir, configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, configfile


def copy_run(kd_run, tmp_path: Path) -> tuple[Path, Path]:
    workdir = tmp_path / "run"
    shutil.copytree(kd_run[0], workdir, symlinks=True)
    return workdir, workdir / "config.yaml"


def test_each_chunk_is_one_job_and_the_dataset_merges_them(kd_run):
    workdir, _ = kd_run
    summary = json.loads((workdir / "results/kd/web/summary.json").read_text())
    assert summary["chunks"] == 4 and summary["rows"] == 47
    assert sorted(p.name for p in (workdir / "results/kd/web/chunks/part-001").glob("*.jsonl")) == [
        "000000000-000000016.jsonl",
        "000000016-000000027.jsonl",
    ]
    assert len((workdir / "logs/kd_chunk/web/part-001").glob("*.log").__iter__().__next__().read_text()) > 0


def test_the_chunks_of_an_engine_job_start_one_engine_and_the_summary_counts_it(kd_run):
    workdir, _ = kd_run
    summary = json.loads((workdir / "results/kd/web/summary.json").read_text())
    assert summary["engine_starts"] == 1 and summary["engine_runs"][0]["chunks"] == 4
    assert summary["engine_start_seconds"] == summary["engine_runs"][0]["start_seconds"] > 0
    assert (workdir / "logs/kd_engine/web/000000.log").read_text().count("ready in") == 1
    engine = summary["engine_runs"][0]["engine_id"]
    for log in (workdir / "logs/kd_chunk/web").glob("*/*.log"):
        assert f"engine {engine} (slot 0" in log.read_text()


def test_kd_status_reads_the_chunk_logs_of_the_run(kd_run):
    workdir, _ = kd_run
    status = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.cli", "kd-status", "results/kd/web", "--json", "--window", "86400"],
        cwd=workdir, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert (summary["done_chunks"], summary["done_rows"], summary["logs"]) == (4, 47, "logs/kd_chunk/web")
    assert summary["rows_per_second"] > 0 and summary["eta_seconds"] == 0
    log = (workdir / "logs/kd_chunk/web/part-001/000000000-000000016.log").read_text()
    assert "kd-chunk part-001/000000000-000000016: 16/16 rows," in log


def test_dry_run_lists_exactly_the_missing_chunks(kd_run, tmp_path):
    workdir, configfile = copy_run(kd_run, tmp_path)
    assert "Nothing to be done" in snakemake(workdir, "-n", configfile=configfile).stdout
    # A run stopped before its last chunk: no dataset yet, one chunk missing.
    for name in ("dataset.jsonl", "summary.json", "chunks/part-000/000000016-000000020.jsonl"):
        (workdir / "results/kd/web" / name).unlink()
    assert planned_jobs(snakemake(workdir, "-n", configfile=configfile)) == [
        ("kd_chunk", "job=web, part=part-000, start=000000016, stop=000000020"),
        ("kd_dataset", "job=web"),
        ("kd_engine", "job=web, engine=000000"),
        ("report_kd", "job=web"),
    ]


@pytest.mark.parametrize(("suffix", "rule"), [(".jsonl", "kd_chunk"), (".stats.json", "kd_chunk_stats")])
def test_deleting_a_chunk_file_reruns_exactly_that_chunk_its_engine_job_and_the_dataset(kd_run, tmp_path, suffix, rule):
    workdir, configfile = copy_run(kd_run, tmp_path)
    (workdir / f"results/kd/web/chunks/part-001/000000000-000000016{suffix}").unlink()
    assert planned_jobs(snakemake(workdir, "-n", configfile=configfile)) == [
        (rule, "job=web, part=part-001, start=000000000, stop=000000016"),
        ("kd_dataset", "job=web"),
        ("kd_engine", "job=web, engine=000000"),
        ("report_kd", "job=web"),
    ]


def test_an_engine_job_rerun_for_one_chunk_leaves_its_finished_siblings_alone(kd_run, tmp_path):
    workdir, configfile = copy_run(kd_run, tmp_path)
    chunks = workdir / "results/kd/web/chunks"
    redone = chunks / "part-001/000000000-000000016.jsonl"
    redone.unlink()
    siblings = {path: path.stat().st_mtime_ns for path in chunks.glob("*/*.jsonl")}
    result = snakemake(workdir, configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    assert executed_jobs(result) == [
        ("kd_chunk", "job=web, part=part-001, start=000000000, stop=000000016"),
        ("kd_dataset", "job=web"),
        ("kd_engine", "job=web, engine=000000"),
        ("report_kd", "job=web"),
    ]
    assert redone.exists() and {path: path.stat().st_mtime_ns for path in siblings} == siblings


def test_a_chunk_whose_stats_file_is_gone_is_generated_again_with_both_files(kd_run, tmp_path):
    workdir, configfile = copy_run(kd_run, tmp_path)
    chunk = workdir / "results/kd/web/chunks/part-001/000000000-000000016.jsonl"
    records = chunk.read_text()
    chunk.with_name("000000000-000000016.stats.json").unlink()
    (workdir / "results/kd/web/dataset.jsonl").unlink()  # a dataset still to build asks for the stats file too
    result = snakemake(workdir, configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    assert executed_jobs(result) == [
        ("kd_chunk_stats", "job=web, part=part-001, start=000000000, stop=000000016"),
        ("kd_dataset", "job=web"),
        ("kd_engine", "job=web, engine=000000"),
        ("report_kd", "job=web"),
    ]
    stats = json.loads(chunk.with_name("000000000-000000016.stats.json").read_text())
    assert stats["rows"] == 16 and chunk.read_text() == records  # the same seeds draw the same samples


def test_a_new_parquet_file_runs_only_its_own_chunks(kd_run, tmp_path):
    workdir, configfile = copy_run(kd_run, tmp_path)
    write_tiny_dataset(tmp_path / "more", files=3, rows=20)
    shutil.copy(tmp_path / "more/part-002.parquet", workdir / "data/part-002.parquet")
    result = snakemake(workdir, configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    assert executed_jobs(result) == [
        ("kd_chunk", "job=web, part=part-002, start=000000000, stop=000000016"),
        ("kd_chunk", "job=web, part=part-002, start=000000016, stop=000000032"),
        ("kd_chunk", "job=web, part=part-002, start=000000032, stop=000000034"),
        ("kd_dataset", "job=web"),
        ("kd_engine", "job=web, engine=000000"),
        ("kd_manifest", "job=web"),
        ("report_kd", "job=web"),
    ]
    assert json.loads((workdir / "results/kd/web/summary.json").read_text())["rows"] == 47 + 34


def test_changed_sampling_settings_rerun_every_chunk(kd_run, tmp_path):
    workdir, _ = copy_run(kd_run, tmp_path)
    configfile = kd_config(workdir, Path(yaml.safe_load((workdir / "config.yaml").read_text())["kd"]["web"]["model"]),
                           sampling={"max_tokens": 6, "temperature": 0.3})  # fmt: skip
    result = snakemake(workdir, configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    ran = executed_jobs(result)
    assert ("kd_manifest", "job=web") in ran and len([job for job in ran if job[0] == "kd_chunk"]) == 4
    assert ("kd_engine", "job=web, engine=000000") in ran


def test_chunks_per_engine_splits_a_job_into_engine_jobs_of_that_many_chunks(kd_run, tmp_path):
    workdir, _ = copy_run(kd_run, tmp_path)
    for path in (workdir / "results/kd/web").glob("chunks/*/*"):
        path.unlink()
    model = Path(yaml.safe_load((workdir / "config.yaml").read_text())["kd"]["web"]["model"])
    configfile = kd_config(workdir, model, chunks_per_engine=2, engine_slots=2, engine_server=True)
    planned = planned_jobs(snakemake(workdir, "-n", configfile=configfile))
    assert [job for job in planned if job[0] == "kd_engine"] == [
        ("kd_engine", "job=web, engine=000000"),
        ("kd_engine", "job=web, engine=000001"),
    ]
    assert len([job for job in planned if job[0] == "kd_chunk"]) == 4


def test_model_path_from_the_environment(tmp_path, tiny_model_store, monkeypatch):
    write_tiny_dataset(tmp_path / "data", files=1, rows=8)
    configfile = kd_config(tmp_path, Path("$TEACHER_MODEL"))
    unset = snakemake(tmp_path, "-n", configfile=configfile)
    assert (
        unset.returncode != 0
        and "config kd.web.model refers to $TEACHER_MODEL, which is not set" in unset.stdout + unset.stderr
    )
    monkeypatch.setenv("TEACHER_MODEL", str(tiny_model_store("llama")))
    result = snakemake(tmp_path, configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "results/kd/web/dataset.jsonl").exists()


def test_missing_column_stops_the_job_at_the_manifest(tmp_path, tiny_model_store):
    write_tiny_dataset(tmp_path / "data", files=1, rows=8)
    configfile = kd_config(
        tmp_path, tiny_model_store("llama"), dataset={"path": "data/*.parquet", "text_column": "body"}
    )
    result = snakemake(tmp_path, configfile=configfile)
    assert result.returncode != 0
    assert executed_jobs(result) == [("kd_manifest", "job=web")]
    log = (tmp_path / "logs/kd_manifest/web.log").read_text()
    assert "part-000.parquet: has no column 'body'" in log
