"""The ICM rules' wiring (workflow/icm_wiring.py), without Snakemake: the model, data and server each job reads,
its flags and what it asks a scheduler for. `local()` is Snakemake's own."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from snakemake.io import is_flagged, local

from workflow_scripts.cli import build_parser
from workflow_scripts.errors import DistilleryError
from workflow_scripts.icm.job import ICMJob
from workflow_scripts.setting import from_args
from workflow_scripts.workflow.icm_jobs import icm_job
from workflow_scripts.workflow.icm_wiring import IcmWiring

MODEL_DIRS = {"tiny-llama": "results/models/tiny-llama/hf"}


def wiring(tmp_path: Path, **jobs: dict) -> IcmWiring:
    entries = {name: {"data": {"path": "claims.jsonl"}, **entry} for name, entry in jobs.items()}
    config = {"results": "results", "work": "work", "icm": {"jobs": entries}}
    return IcmWiring.from_config(config, MODEL_DIRS, basedir=str(tmp_path / "workflow"))


def test_a_workflow_model_is_built_first_a_folder_used_as_is_and_a_served_name_is_no_file(tmp_path, tiny_model_store):
    folder = str(tiny_model_store("llama"))
    icm = wiring(
        tmp_path,
        built={"model": "tiny-llama"},
        folder={"model": folder},
        served={"model": "meta-llama/Llama-3.1-8B", "engine": "openai"},
    )
    assert icm.jobs == ["built", "folder", "served"]
    assert icm.model_input("built") == MODEL_DIRS["tiny-llama"]
    assert icm.model_input("folder") == folder
    assert icm.model_input("served") == []
    assert icm.model_flag("served", []) == "--model meta-llama/Llama-3.1-8B"
    assert icm.model_flag("built", "fetched copy") == "--model 'fetched copy'"


def test_a_job_whose_model_is_nothing_known_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(DistilleryError, match="neither a model of this workflow nor a folder"):
        wiring(tmp_path, lost={"model": "no-such-model"})


def test_a_relative_data_file_missing_here_is_looked_up_beside_the_snakefile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    icm = wiring(tmp_path, job={"model": "tiny-llama"})
    data = icm.data_input("job", local)
    assert data == str(tmp_path / "workflow/claims.jsonl") and is_flagged(data, "local")
    (tmp_path / "claims.jsonl").write_text("")
    assert icm.data_input("job", local) == "claims.jsonl"


def test_only_a_job_that_starts_its_server_waits_for_the_server_job(tmp_path):
    icm = wiring(
        tmp_path,
        starts={"model": "tiny-llama", "engine": "openai", "server": {"start": True}},
        remote={"model": "tiny-llama", "engine": "openai", "server": {"base_url": "http://host:8000/v1"}},
    )
    assert icm.server_input("starts") == "work/icm/starts/server.url"
    assert icm.server_flag("work/icm/starts/server.url") == "--base-url-file work/icm/starts/server.url"
    assert icm.server_input("remote") == [] and icm.server_flag([]) == ""
    assert "--base-url http://host:8000/v1" in icm.flags("remote")
    assert "--base-url" not in icm.flags("starts")


def test_the_rule_flags_give_the_command_the_job_of_the_config(tmp_path):
    entry = {
        "model": "tiny-llama", "engine": "openai", "tokenizer": "/tok", "tensor_parallel_size": 2,
        "data": {"path": "claims.jsonl", "format": "gsm8k", "prompt_template": "Q: {question}"},
        "alpha": 50, "iterations": 12, "seed": 5, "batch_size": 32, "score_unlabeled": False,
        "server": {"base_url": "http://gpu:8000/v1", "max_retries": 9, "api_key_env": "MY_KEY", "self_hosted": True},
    }  # fmt: skip
    flags = wiring(tmp_path, job=entry).flags("job")
    args = build_parser().parse_args(["icm", "--data", "claims.jsonl", "--output-dir", "out", *shlex.split(flags)])
    job = from_args(ICMJob, args)
    assert job == replace(icm_job(entry), data=Path("claims.jsonl"), output_dir=Path("out"))
    assert (job.search.seed, job.engine.seed) == (5, 0)  # the search's seed is not the engine's
    assert (job.engine.kind, job.engine.max_retries, job.api_key_env) == ("openai", 9, "MY_KEY")


def test_a_job_at_the_defaults_has_no_flags(tmp_path):
    assert wiring(tmp_path, job={"model": "tiny-llama"}).flags("job") == ""


def test_resources_follow_the_engine(tmp_path, tiny_model_store):
    folder = str(tiny_model_store("llama"))
    icm = wiring(
        tmp_path,
        vllm={"model": "tiny-llama", "engine": "vllm", "tensor_parallel_size": 2},
        cpu={"model": "tiny-llama", "engine": "transformers", "iterations": 100},
    )
    assert (icm.gpus("vllm"), icm.gpus("cpu"), icm.server_gpus("vllm")) == (2, 0, 2)
    assert icm.mem_mb("vllm", []) == 8192
    assert icm.mem_mb("cpu", folder) == 2048 + 3 * icm_weights_mb(folder)
    assert icm.server_mem_mb(folder) == 16384 + icm_weights_mb(folder)
    assert icm.runtime("cpu") == 30 + 100 // 2


def icm_weights_mb(folder: str) -> int:
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors")) // (1024 * 1024)
