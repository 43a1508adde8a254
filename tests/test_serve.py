"""`distillery serve` presets and the `icm:` config turned into commands and resources."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_scripts.errors import DistilleryError
from workflow_scripts.serve import ServerSettings, load_presets, serve_arguments
from workflow_scripts.workflow import icm_jobs

REPO = Path(__file__).resolve().parents[1]


def flag(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


@pytest.mark.parametrize(("preset", "tensor_parallel"), [("8B", "1"), ("70B", "4"), ("405B", "8")])
def test_presets_set_parallelism_batching_and_always_prefix_caching(preset, tensor_parallel):
    arguments = serve_arguments(ServerSettings("/models/llama", preset), load_presets())
    assert arguments[0] == "/models/llama"
    assert flag(arguments, "--tensor-parallel-size") == tensor_parallel
    for name in ("--max-num-seqs", "--max-num-batched-tokens", "--gpu-memory-utilization"):
        assert name in arguments
    assert "--enable-prefix-caching" in arguments
    assert flag(arguments, "--max-logprobs") == "20"


def test_405b_preset_keeps_the_guides_batch_limits():
    arguments = serve_arguments(ServerSettings("m", "405B"), load_presets())
    assert (flag(arguments, "--max-num-seqs"), flag(arguments, "--max-num-batched-tokens")) == ("256", "32768")


def test_command_line_overrides_the_preset():
    settings = ServerSettings("m", "70B", overrides={"tensor_parallel_size": 8, "max_num_seqs": None})
    arguments = serve_arguments(settings, load_presets())
    assert flag(arguments, "--tensor-parallel-size") == "8"
    assert flag(arguments, "--max-num-seqs") == "256"


def test_prefix_caching_cannot_be_turned_off_and_unknown_presets_are_named():
    with pytest.raises(DistilleryError, match="prefix caching cannot be turned off"):
        serve_arguments(ServerSettings("m", "8B", extra_args=("--no-enable-prefix-caching",)), load_presets())
    with pytest.raises(DistilleryError, match="unknown preset '13B'.*8B, 70B, 405B"):
        serve_arguments(ServerSettings("m", "13B"), load_presets())


def test_serve_dry_run_prints_the_vllm_command(run_cli):
    result = run_cli(
        "serve", "--preset", "70B", "--model", "/m", "--port", "8100", "--dry-run", "--", "--quantization", "fp8"
    )
    assert result.exit_code == 0
    assert "serve /m --host 127.0.0.1 --port 8100 --tensor-parallel-size 4" in result.stdout
    assert result.stdout.strip().endswith("--quantization fp8")


def test_icm_job_flags_follow_the_config():
    server = {"base_url": "http://gpu:8000/v1", "requests_per_minute": 60}
    job = {"model": "m", "data": {"path": "d.json", "format": "truthfulqa"}, "alpha": 50, "engine": "openai"}
    flags = icm_jobs.icm_flags({**job, "server": server})
    assert "--testbed truthfulqa" in flags and "--alpha 50" in flags and "--K" not in flags  # the default 3000
    assert "--base-url http://gpu:8000/v1" in flags and "--requests-per-minute 60" in flags
    assert icm_jobs.icm_gpus({**job, "server": server}) == 0  # the server holds the GPUs


def test_icm_job_resources_hold_gpus_only_for_in_process_vllm():
    base = {"model": "m", "data": {"path": "d"}}
    vllm = {**base, "engine": "vllm", "tensor_parallel_size": 4}
    cpu = {**base, "engine": "transformers"}
    assert (icm_jobs.icm_gpus(vllm), icm_jobs.icm_gpus(cpu)) == (4, 0)
    assert icm_jobs.icm_mem_mb(cpu, 100) == 2048 + 300


def test_a_job_that_starts_its_server_gets_the_url_from_the_service_job():
    entry = {"model": "m", "data": {"path": "d"}, "engine": "openai",
             "server": {"start": True, "preset": "70B", "base_url": "http://ignored/v1"}}  # fmt: skip
    assert icm_jobs.starts_server(entry)
    assert "--base-url " not in icm_jobs.icm_flags(entry)
    assert icm_jobs.serve_flags(entry) == "--preset 70B --port 8000"


def test_a_job_whose_model_is_neither_a_workflow_model_nor_a_folder_is_refused():
    from workflow_scripts.errors import DistilleryError

    jobs = {"jobs": {"j": {"model": "tiny-llama", "data": {"path": "d"}}}}
    with pytest.raises(DistilleryError, match="icm job 'j': model 'tiny-llama' is neither"):
        icm_jobs.check_jobs(jobs, {"other": None})
    icm_jobs.check_jobs(jobs, {"tiny-llama": None})


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None or shutil.which("vllm") is not None, reason="vLLM is installed"
)
def test_serve_without_vllm_says_so_in_one_line_without_a_traceback(tmp_path):
    command = [sys.executable, "-m", "workflow_scripts.cli", "serve", "--model", str(tmp_path), "--preset", "8B"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("distillery serve: error: vLLM is not installed")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
