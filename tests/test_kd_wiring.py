"""The sequence-KD rules' wiring (workflow/kd_wiring.py), without Snakemake: what each job reads, with or without a
storage provider, and what it asks a scheduler for. `local()` and `ancient()` are Snakemake's own."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake.io import ancient, is_flagged, local
from snakemake.utils import validate

from workflow_scripts.kd.manifest import load_manifest
from workflow_scripts.kd.tiny_dataset import write_tiny_dataset
from workflow_scripts.workflow.kd_wiring import KdWiring

REPO = Path(__file__).resolve().parents[1]
MODEL_DIRS = {"tiny-llama": "results/models/tiny-llama/hf"}


def kd_config(tmp_path: Path, **jobs: dict) -> dict:
    """A validated config (schema defaults filled in) with these KD jobs; `tiny-web` is a dataset it builds."""
    defaults = {
        "model": "tiny-llama",
        "dataset": {"path": str(tmp_path / "work/datasets/tiny-web")},
        "max_prompt_tokens": 12,
        "chunk_rows": 8,
    }
    config = {
        "results": str(tmp_path / "results"),
        "work": str(tmp_path / "work"),
        "tiny_datasets": {"tiny-web": {"files": 1, "rows": 8}},
        "kd": {name: {**defaults, **entry} for name, entry in jobs.items()},
    }
    validate(config, str(REPO / "config/schema/config.schema.yaml"))
    return config


def wiring(tmp_path: Path, uses_storage: bool = False, **jobs: dict) -> KdWiring:
    return KdWiring.from_config(kd_config(tmp_path, **jobs), MODEL_DIRS, uses_storage)


@pytest.fixture
def parquet_files(tmp_path) -> Path:
    folder = tmp_path / "user-data"
    write_tiny_dataset(folder, files=2, rows=16, row_group_rows=8)
    return folder


def by_job(wildcards_function):
    """What Snakemake does with a rule's function of wildcards: call it with the job's wildcards."""
    return lambda job, *args: wildcards_function(SimpleNamespace(job=job), *args)


def test_without_storage_a_chunk_job_reads_manifest_model_and_dataset_by_path(tmp_path):
    kd = wiring(tmp_path, web={})
    results = tmp_path / "results"
    assert kd.chunk_inputs(ancient, model=None, data=None) == {"teacher": f"{results}/kd/{{job}}/teacher.json"}
    assert kd.chunk_params(copies=None) == {"manifest": f"{results}/kd/{{job}}/manifest.json", "copies": ""}


def test_with_storage_a_chunk_job_fetches_manifest_teacher_model_and_dataset(tmp_path):
    kd = wiring(tmp_path, uses_storage=True, web={})

    def model(wildcards):
        return kd.chunk_model(wildcards.job, local)

    inputs = kd.chunk_inputs(ancient, model=model, data="the rule's data function")
    assert set(inputs) == {"teacher", "manifest", "model", "data"}
    assert is_flagged(inputs["manifest"], "ancient"), "a rewritten manifest must not redo finished chunks"
    assert inputs["model"] is model and inputs["data"] == "the rule's data function"
    params = kd.chunk_params(copies="the rule's copies function")
    assert params["copies"] == "the rule's copies function"
    fetched = SimpleNamespace(manifest=".snakemake/storage/s3/bucket/kd/web/manifest.json")
    assert params["manifest"](SimpleNamespace(job="web"), fetched) == fetched.manifest


def test_the_workflows_teacher_follows_storage_and_a_users_folder_is_read_where_it_is(tmp_path, tiny_model_store):
    user_model = tiny_model_store("llama")
    kd = wiring(tmp_path, built={}, users={"model": str(user_model)})
    built = kd.chunk_model("built", local)
    assert built == MODEL_DIRS["tiny-llama"] and not is_flagged(built, "local")
    users = kd.chunk_model("users", local)
    assert users == str(user_model) and is_flagged(users, "local")
    assert kd.teacher_inputs("users", local) == {"model": str(user_model)}


def test_a_teacher_that_is_no_folder_is_no_input(tmp_path):
    kd = wiring(tmp_path, served={"model": "meta-llama/Llama-3.1-8B", "engine": {"kind": "openai"}})
    assert kd.teacher_inputs("served", local) == {}
    assert kd.chunk_model("served", local) == []
    assert kd.local_model_flag([]) == ""


def test_a_built_dataset_is_the_manifests_input_and_its_copy_is_passed_on(tmp_path, parquet_files):
    kd = wiring(tmp_path, built={}, users={"dataset": {"path": str(parquet_files)}})
    folder = str(tmp_path / "work/datasets/tiny-web")
    assert kd.manifest_inputs("built", local) == {"data": folder}
    assert kd.chunk_data("built") == folder
    copy = ".snakemake/storage/s3/bucket/work/datasets/tiny-web"
    assert kd.copies_flags("built", "teacher copy", copy) == f"--local-model='teacher copy' --local-dataset={copy}"

    users = kd.manifest_inputs("users", local)["data"]
    assert [Path(path).name for path in users] == ["part-000.parquet", "part-001.parquet"]
    assert all(is_flagged(path, "local") for path in users)
    assert kd.chunk_data("users") == [] and kd.local_dataset_flag("users", []) == ""


def test_each_dataset_rule_matches_only_the_jobs_of_its_output_format(tmp_path):
    kd = wiring(tmp_path, lines={}, table={"output_format": "parquet"})
    assert kd.jobs_by_format() == {"jsonl": "lines", "parquet": "table"}
    assert kd.dataset_outputs("table")[0].endswith("/kd/table/dataset.parquet")
    assert wiring(tmp_path, lines={}).jobs_by_format()["parquet"] == "(?!)"


def test_a_chunk_log_is_where_kd_status_looks_for_it(tmp_path):
    from workflow_scripts.kd.manifest import Chunk
    from workflow_scripts.kd.status import chunk_logs

    chunk = Chunk("part-000", "part-000.parquet", 16, 24)
    log = wiring(tmp_path, web={}).chunk_log().format(job="web", part=chunk.part, start="000000016", stop="000000024")
    assert Path(log) == chunk_logs("web") / f"{chunk.name}.log"


def test_chunk_resources_are_plain_values_when_every_job_agrees(tmp_path):
    cpu = wiring(tmp_path, a={"gpus": 0}, b={"gpus": 0})
    assert cpu.chunk_resources(gpus=None, mem_mb=None) == {"gpu": 0, "mem_mb": 4096}
    assert cpu.chunk_env() == "../envs/generate.yaml"


def test_chunk_resources_are_the_rules_functions_when_jobs_differ(tmp_path):
    mixed = wiring(tmp_path, a={"gpus": 0}, b={"engine": {"tensor_parallel_size": 2}})
    gpus, mem_mb = by_job(lambda wildcards: mixed.gpus(wildcards.job)), "mem function"
    assert mixed.chunk_resources(gpus=gpus, mem_mb=mem_mb) == {"gpu": gpus, "mem_mb": mem_mb}
    assert (mixed.gpus("a"), mixed.gpus("b")) == (0, 2)
    assert (mixed.chunk_mem_mb("a"), mixed.chunk_mem_mb("b")) == (4096, 32768)
    assert mixed.chunk_env() == "../envs/vllm.yaml"


class Checkpoint:
    """Snakemake's `checkpoints.kd_manifest`, as far as chunk_files uses it: the manifest once the job ran."""

    def __init__(self, manifest: Path | None):
        self.manifest, self.asked = manifest, 0

    def get(self, job: str):
        self.asked += 1
        return SimpleNamespace(output=[self.manifest])


def write_manifest(run_cli, kd: KdWiring, job: str) -> Path:
    import shlex

    path = Path(kd.manifest_path(job))
    result = run_cli("kd-manifest", "--output", path, *shlex.split(kd.flags(job)))
    assert result.exit_code == 0, result.stderr
    return path


def test_a_current_manifest_is_read_without_the_checkpoint(run_cli, tmp_path, parquet_files, tiny_model_store):
    kd = wiring(tmp_path, web={"model": str(tiny_model_store("llama")), "dataset": {"path": str(parquet_files)}})
    chunks = load_manifest(write_manifest(run_cli, kd, "web")).chunks
    checkpoint = Checkpoint(None)
    files = kd.chunk_files("web", checkpoint)
    assert checkpoint.asked == 0
    assert files[:2] == [
        f"{tmp_path}/results/kd/web/chunks/part-000/000000000-000000008.jsonl",
        f"{tmp_path}/results/kd/web/chunks/part-000/000000008-000000016.jsonl",
    ]
    assert len(files) == len(chunks)
    assert kd.dataset_inputs("web", checkpoint) == {"chunks": files}


def test_the_dataset_asks_for_a_stats_file_only_where_it_is_gone_beside_its_chunk_file(
    run_cli, tmp_path, parquet_files, tiny_model_store
):
    job = {"model": str(tiny_model_store("llama")), "dataset": {"path": str(parquet_files)}}
    kd = wiring(tmp_path, web=job)
    manifest = load_manifest(write_manifest(run_cli, kd, "web"))
    chunks = Path(kd.folder("web")) / "chunks/part-000"
    chunks.mkdir(parents=True)
    for name in ("000000000-000000008.jsonl", "000000000-000000008.stats.json", "000000008-000000016.jsonl"):
        (chunks / name).write_text("")
    files = kd.chunk_files("web", Checkpoint(None))
    # A finished chunk and one not started give their chunk files; one whose stats file is gone gives that too,
    # which only kd_chunk_stats makes.
    assert files[:3] == [
        f"{chunks}/000000000-000000008.jsonl",
        f"{chunks}/000000008-000000016.jsonl",
        f"{chunks}/000000008-000000016.stats.json",
    ]
    assert len(files) == len(manifest.chunks) + 1
    assert kd.chunk_outputs() == {"chunk": f"{tmp_path}/results/kd/{{job}}/chunks/{{part}}/{{start}}-{{stop}}.jsonl"}
    assert kd.lone_stats_output() == f"{tmp_path}/results/kd/{{job}}/chunks/{{part}}/{{start}}-{{stop}}.stats.json"


def test_with_storage_every_chunk_job_declares_both_files_and_the_dataset_asks_for_both(
    run_cli, tmp_path, parquet_files, tiny_model_store
):
    job = {"model": str(tiny_model_store("llama")), "dataset": {"path": str(parquet_files)}}
    kd = wiring(tmp_path, uses_storage=True, web=job)
    manifest = load_manifest(write_manifest(run_cli, kd, "web"))
    files = kd.chunk_files("web", Checkpoint(None))
    assert len(files) == 2 * len(manifest.chunks)
    assert files[1] == f"{tmp_path}/results/kd/web/chunks/part-000/000000000-000000008.stats.json"
    assert set(kd.chunk_outputs()) == {"chunk", "stats"}
    # kd_chunk_stats then serves no job: the stats file is kd_chunk's.
    assert re.fullmatch(kd.lone_stats_jobs(), "web") is None


def test_a_manifest_of_other_settings_is_asked_of_the_checkpoint(run_cli, tmp_path, parquet_files, tiny_model_store):
    job = {"model": str(tiny_model_store("llama")), "dataset": {"path": str(parquet_files)}}
    manifest = write_manifest(run_cli, wiring(tmp_path, web=job), "web")
    changed = wiring(tmp_path, uses_storage=True, web={**job, "sampling": {"temperature": 0.5}})
    checkpoint = Checkpoint(manifest)
    inputs = changed.dataset_inputs("web", checkpoint)
    assert checkpoint.asked == 1
    assert inputs["manifest"] == str(manifest) and len(inputs["chunks"]) == 2 * len(load_manifest(manifest).chunks)
    assert changed.dataset_manifest("web", None) == str(manifest)
    assert changed.dataset_manifest("web", "fetched copy") == "fetched copy"
