"""The sequence-KD rules' wiring (workflow/kd_wiring.py), without Snakemake: what each job reads, with or without a
storage provider, and what it asks a scheduler for. `local()` and `ancient()` are Snakemake's own."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake.io import ancient, is_flagged, local, service
from snakemake.utils import validate

from workflow_scripts.errors import DistilleryError
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
    assert kd.chunk_inputs(ancient, model=None, data=None, engine="the rule's engine function") == {
        "teacher": f"{results}/kd/{{job}}/teacher.json",
        "engine": "the rule's engine function",
    }
    own_engines = wiring(tmp_path, web={"engine_server": False})
    assert own_engines.chunk_inputs(ancient, model=None, data=None, engine="unused")["engine"] == []
    assert kd.chunk_params(copies=None) == {"manifest": f"{results}/kd/{{job}}/manifest.json", "copies": ""}


def test_with_storage_a_chunk_job_fetches_manifest_teacher_model_and_dataset(tmp_path):
    kd = wiring(tmp_path, uses_storage=True, web={})

    def model(wildcards):
        return kd.chunk_model(wildcards.job, local)

    inputs = kd.chunk_inputs(ancient, model=model, data="the rule's data function", engine="unused")
    assert set(inputs) == {"teacher", "engine", "manifest", "model", "data"}
    assert inputs["engine"] == [], "engine jobs read local files: with storage, chunk jobs keep their own engines"
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
    cpu = wiring(tmp_path, a={"gpus": 0, "engine_server": False}, b={"gpus": 0, "engine_server": False})
    assert cpu.chunk_resources(gpus=None, mem_mb=None, threads=None) == {"gpu": 0, "mem_mb": 4096}
    assert cpu.chunk_resources(gpus=None, mem_mb=None, threads="threads function")["threads"] == 2
    assert cpu.chunk_env() == "../envs/generate.yaml"


def test_chunk_jobs_of_engine_jobs_ask_for_no_gpu_and_little_memory_the_engine_job_for_its_slots(tmp_path):
    kd = wiring(tmp_path, a={"engine": {"tensor_parallel_size": 2}, "engine_slots": 4})
    assert kd.chunk_resources(gpus=None, mem_mb=None, threads="f") == {"gpu": 0, "mem_mb": 1024, "threads": 0}
    assert (kd.engine_gpus("a"), kd.engine_mem_mb("a"), kd.engine_threads("a")) == (8, 4 * 32768, 8)
    cpu = wiring(tmp_path, b={"gpus": 1, "engine_slots": 2, "engine": {"kind": "transformers"}})
    assert (cpu.engine_gpus("b"), cpu.engine_mem_mb("b"), cpu.engine_threads("b")) == (2, 2 * 4096, 2)
    assert kd.engine_flags("a") == "--slots 4 --gpus-per-slot 2"
    assert kd.engine_address_pattern() == f"{tmp_path}/work/kd/{{job}}/engines/{{engine}}.json"


def test_chunk_resources_are_the_rules_functions_when_jobs_differ(tmp_path):
    mixed = wiring(
        tmp_path, a={"gpus": 0, "engine_server": False},
        b={"engine": {"tensor_parallel_size": 2}, "engine_server": False},
    )  # fmt: skip
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


def engine_job_of(kd: KdWiring, job: str, chunk: str) -> str:
    engine = kd.chunk_engine(job, chunk, service)
    assert is_flagged(engine, "service"), "Snakemake's metadata must record every engine link alike"
    return str(engine)


def test_chunks_stream_to_the_engine_job_of_their_place_in_the_manifest(run_cli, tmp_path, parquet_files):
    kd = wiring(tmp_path, web={"dataset": {"path": str(parquet_files)}, "chunks_per_engine": 2, "engine_slots": 2})
    chunks = [chunk.name for chunk in load_manifest(write_manifest(run_cli, kd, "web")).chunks]
    engines = [Path(engine_job_of(kd, "web", chunk)).name for chunk in chunks]
    assert len(chunks) >= 4 and engines == [f"{index // 2:06d}.json" for index in range(len(chunks))]
    assert engine_job_of(kd, "web", chunks[0]) == f"{tmp_path}/work/kd/web/engines/000000.json"


def finish_chunk(kd: KdWiring, job: str, chunk: str) -> None:
    for suffix in (".jsonl", ".stats.json"):
        path = Path(kd.folder(job)) / f"chunks/{chunk}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")


def test_a_complete_chunk_is_linked_to_teacher_json_so_no_engine_job_regenerates_it(
    run_cli, tmp_path, parquet_files, tiny_model_store
):
    import os
    import shlex

    job = {"model": str(tiny_model_store("llama")), "dataset": {"path": str(parquet_files)}}
    kd = wiring(tmp_path, web=job)
    first, second = [chunk.name for chunk in load_manifest(write_manifest(run_cli, kd, "web")).chunks][:2]
    teacher = Path(kd.folder("web")) / "teacher.json"
    assert run_cli("kd-teacher", "--output", teacher, *shlex.split(kd.flags("web"))).exit_code == 0
    assert json_of(teacher) == kd.jobs["web"].teacher, "the wiring predicts what kd-teacher writes"
    finish_chunk(kd, "web", first)
    assert engine_job_of(kd, "web", first) == str(teacher)
    assert engine_job_of(kd, "web", second).endswith("engines/000000.json"), "a missing chunk needs its engine"

    older = teacher.stat().st_mtime_ns - 10**9  # a chunk older than its teacher: Snakemake redoes it
    os.utime(Path(kd.folder("web")) / f"chunks/{first}.jsonl", ns=(older, older))
    assert engine_job_of(kd, "web", first).endswith("engines/000000.json")
    finish_chunk(kd, "web", first)
    assert engine_job_of(kd, "web", first) == str(teacher)
    changed = wiring(tmp_path, web={**job, "sampling": {"temperature": 0.1}})
    assert engine_job_of(changed, "web", first).endswith("engines/000000.json"), "kd_teacher reruns first"


def test_a_chunk_whose_stats_file_alone_is_gone_streams_only_its_kd_chunk_stats_job_to_the_engine(
    run_cli, tmp_path, parquet_files, tiny_model_store
):
    import shlex

    job = {"model": str(tiny_model_store("llama")), "dataset": {"path": str(parquet_files)}}
    kd = wiring(tmp_path, web=job)
    chunk = load_manifest(write_manifest(run_cli, kd, "web")).chunks[0].name
    teacher = Path(kd.folder("web")) / "teacher.json"
    assert run_cli("kd-teacher", "--output", teacher, *shlex.split(kd.flags("web"))).exit_code == 0
    finish_chunk(kd, "web", chunk)
    (Path(kd.folder("web")) / f"chunks/{chunk}.stats.json").unlink()
    # kd_chunk (its .jsonl is up to date) stays off the engine job; kd_chunk_stats, which remakes the file, is on it.
    assert engine_job_of(kd, "web", chunk) == str(teacher)
    assert str(kd.chunk_engine("web", chunk, service, (".stats.json",))).endswith("engines/000000.json")


def json_of(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_jobs_on_a_server_already_or_without_engine_jobs_get_no_engine_link(tmp_path):
    kd = wiring(tmp_path, api={"engine": {"kind": "openai", "base_url": "http://gpu:8000/v1"}},
                own={"engine_server": False, "gpus": 1})  # fmt: skip
    assert kd.chunk_engine("api", "part-000/000000000-000000008", service) == []
    assert kd.chunk_engine("own", "part-000/000000000-000000008", service) == []
    assert kd.gpus("own") == 1


def test_more_engine_slots_than_chunks_per_engine_job_are_refused_in_one_line(tmp_path):
    with pytest.raises(DistilleryError, match="chunks_per_engine \\(2\\) is below engine_slots \\(4\\)"):
        wiring(tmp_path, web={"chunks_per_engine": 2, "engine_slots": 4})
