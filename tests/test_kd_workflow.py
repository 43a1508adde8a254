"""The KD stage under Snakemake: one job per chunk, dry runs that list exactly what is missing, new files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.snakemake_runs import executed_jobs, planned_jobs, snakemake

from workflow_scripts.kd.tiny_dataset import write_tiny_dataset

pytestmark = [pytest.mark.integration, pytest.mark.long]


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


def test_dry_run_lists_exactly_the_missing_chunks(kd_run, tmp_path):
    workdir, configfile = copy_run(kd_run, tmp_path)
    assert "Nothing to be done" in snakemake(workdir, "-n", configfile=configfile).stdout
    # A run stopped before its last chunk: no dataset yet, one chunk missing.
    for name in ("dataset.jsonl", "summary.json", "chunks/part-000/000000016-000000020.jsonl"):
        (workdir / "results/kd/web" / name).unlink()
    assert planned_jobs(snakemake(workdir, "-n", configfile=configfile)) == [
        ("kd_chunk", "job=web, part=part-000, start=000000016, stop=000000020"),
        ("kd_dataset", "job=web"),
        ("report_kd", "job=web"),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".stats.json"])
def test_deleting_a_chunk_file_reruns_exactly_that_chunk_and_the_dataset(kd_run, tmp_path, suffix):
    workdir, configfile = copy_run(kd_run, tmp_path)
    (workdir / f"results/kd/web/chunks/part-001/000000000-000000016{suffix}").unlink()
    assert planned_jobs(snakemake(workdir, "-n", configfile=configfile)) == [
        ("kd_chunk", "job=web, part=part-001, start=000000000, stop=000000016"),
        ("kd_dataset", "job=web"),
        ("report_kd", "job=web"),
    ]


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
