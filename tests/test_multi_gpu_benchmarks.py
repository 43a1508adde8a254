"""The multi-GPU runs (benchmarks/multi_gpu_runs.sh and its scripts) on the CPU: their --dry-run paths, which run
the same steps with tiny models on the transformers engine, and how they compare what vLLM did with the verdicts.
The GPU runs themselves need two GPUs and vLLM (benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
pytestmark = pytest.mark.long(seconds=200)  # its dry runs; the other tests take seconds
sys.path.insert(0, str(BENCHMARKS))

import kd_data_parallel  # noqa: E402
import parallel_plans_vllm  # noqa: E402

SCRIPTS = ["kd_throughput.py", "kd_data_parallel.py", "kd_scale.py", "icm_vllm.py", "parallel_plans_vllm.py"]


def run(*command: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, env=environment,
                          cwd=REPO, timeout=900)  # fmt: skip


def script(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    return run(sys.executable, BENCHMARKS / name, *args)


def saved(out: Path, prefix: str) -> dict:
    (path,) = out.glob(f"{prefix}-*.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_explains_its_flags(name):
    result = script(name, "--help")
    assert result.returncode == 0 and "--dry-run" in result.stdout and "--out" in result.stdout


def test_the_runs_script_names_each_run_and_refuses_a_wrong_call_in_one_line(tmp_path):
    shell = BENCHMARKS / "multi_gpu_runs.sh"
    assert all(name in run("bash", shell, "--help").stdout for name in ("kd-tp2", "kd-pp2", "data-parallel", "icm"))
    unknown = run("bash", shell, "kd-tp4", env={"OUT": str(tmp_path)})
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "unknown run 'kd-tp4'" in unknown.stderr
    no_out = run("bash", shell, "plans", env={"OUT": ""})
    assert no_out.returncode == 2 and "set OUT" in no_out.stderr


def test_the_kd_runs_script_takes_one_step_per_device_call_and_refuses_a_wrong_call_in_one_line(tmp_path):
    shell = BENCHMARKS / "gpu_kd_runs.sh"
    assert all(step in run("bash", shell, "--help").stdout for step in ("throughput", "scale", "--dry-run"))
    unknown = run("bash", shell, "scale-bare", env={"OUT": str(tmp_path)})
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "unknown step 'scale-bare'" in unknown.stderr
    assert "name a step" in run("bash", shell, env={"OUT": str(tmp_path)}).stderr
    assert "set OUT" in run("bash", shell, "scale", env={"OUT": ""}).stderr


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_kd_runs_script_stops_before_its_step_where_vllm_is_missing(tmp_path):
    result = run("bash", BENCHMARKS / "gpu_kd_runs.sh", "throughput", env={"OUT": str(tmp_path)})
    assert result.returncode == 2 and "vLLM is not importable" in result.stderr
    assert not (tmp_path / "gpu_kd_runs.tsv").exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_runs_script_stops_before_any_run_where_vllm_is_missing(tmp_path):
    result = run("bash", BENCHMARKS / "multi_gpu_runs.sh", "plans", env={"OUT": str(tmp_path)})
    assert result.returncode == 2 and "vLLM is not importable" in result.stderr
    assert not (tmp_path / "multi_gpu_runs.tsv").exists()


# --- how a verdict is set beside what vLLM did (the GPU run's figures, made up here) ---


def verdict(**changes) -> dict:
    row = {"validator_accepts": True, "validator_layers_per_stage": [2, 1], "validator_heads_per_gpu": 4,
           "validator_kv_heads_per_gpu": 2, "transformers_tokens": [5, 6], "vllm_serves": True}  # fmt: skip
    return {**row, **changes}


def test_a_split_is_compared_layer_by_layer_and_head_by_head():
    ranks = [
        {"tp_rank": 0, "pp_rank": 0, "layers": [0, 2], "heads": 4, "kv_heads": 2},
        {"tp_rank": 0, "pp_rank": 1, "layers": [2, 3], "heads": 4, "kv_heads": 2},
    ]
    row = verdict(**parallel_plans_vllm.vllm_split(ranks), vllm_tokens=[5, 6])
    assert parallel_plans_vllm.agreement(row) == {
        "agree": True, "layers_agree": True, "heads_agree": True, "kv_heads_agree": True,
        "tokens_equal_transformers": True,
    }  # fmt: skip
    ranks[0]["layers"], ranks[1]["layers"] = [0, 1], [1, 3]  # vLLM gave the extra layer to the last stage
    assert parallel_plans_vllm.agreement(verdict(**parallel_plans_vllm.vllm_split(ranks)))["layers_agree"] is False


def test_a_model_the_validator_accepts_but_vllm_refuses_is_a_disagreement():
    assert parallel_plans_vllm.agreement(verdict(vllm_serves=False)) == {"agree": False}
    assert parallel_plans_vllm.agreement(verdict(validator_accepts=False, vllm_serves=False)) == {"agree": True}


def test_data_parallel_chunks_are_the_rows_cut_evenly_and_the_speed_up_is_end_to_end():
    assert kd_data_parallel.row_slices(5000, 2) == [(0, 2500), (2500, 5000)]
    assert kd_data_parallel.row_slices(5, 2) == [(0, 3), (3, 5)]
    one, two = {"output_tokens": 1000, "wall_seconds": 10.0}, {"output_tokens": 1000, "wall_seconds": 6.0}
    assert kd_data_parallel.speed_up(two, one) == 1.667
    assert kd_data_parallel.speed_up({"failed": "engine died"}, one) is None
    sampled = {"gpus": {"0": {"peak_memory_mib": 90000}, "1": {"peak_memory_mib": 500}}}
    assert kd_data_parallel.gpus_that_worked(sampled) == ["0"]  # GPU 1 held no engine


# --- each script's CPU path, as multi_gpu_runs.sh --dry-run runs it ---


@pytest.mark.integration
def test_kd_dry_run_holds_every_row_once_and_records_the_parallel_sizes(tmp_path):
    result = script("kd_throughput.py", "--dry-run", "--runner", "generate", "--tensor-parallel-size", "2",
                    "--prompts", "5", "--max-tokens", "2", "--out", tmp_path / "out",
                    "--work", tmp_path / "work")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = saved(tmp_path / "out", "kd_throughput-tp2_pp1-dry-run")
    assert record["rows"]["every_row_once"] and record["rows"]["rows_in_dataset"] == 5
    assert record["workflow"]["config"]["engine"]["tensor_parallel_size"] == 2
    assert {"command", "machine", "versions"} <= record.keys()


@pytest.mark.integration
def test_kd_scale_dry_run_streams_every_chunk_to_one_engine_and_holds_every_row_once(tmp_path):
    # Three chunks, not the full run's ten: each chunk job is a process start, and the path is the same.
    result = script("kd_scale.py", "--dry-run", "--rows", "12", "--chunks", "3", "--max-tokens", "2",
                    "--out", tmp_path / "out", "--work", tmp_path / "work")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = saved(tmp_path / "out", "kd_scale-dry-run")
    assert record["workflow"]["chunks"] == 3 and record["workflow"]["engine_starts"] == 1
    assert record["rows_check"]["every_row_once"] and record["rows_check"]["rows_in_dataset"] == 12
    assert record["workflow"]["config"]["chunks_per_engine"] == 3 and "ratio" in record


@pytest.mark.integration
def test_data_parallel_dry_run_records_the_four_runs_and_both_speed_ups(tmp_path):
    result = script("kd_data_parallel.py", "--dry-run", "--runner", "generate", "--out", tmp_path / "out",
                    "--work", tmp_path / "work", "--prompts", "4", "--max-tokens", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = saved(tmp_path / "out", "kd_data_parallel-dry-run")
    assert list(record["runs"]) == ["bare, 1 GPU", "workflow, 1 GPU", "bare, 2 GPUs", "workflow, 2 GPUs"]
    assert [part["rows"] for part in record["runs"]["bare, 2 GPUs"]["parts"]] == [2, 2]
    assert record["runs"]["workflow, 2 GPUs"]["rows_check"]["every_row_once"]
    assert set(record["speed_up"]) == {"bare", "workflow"}


@pytest.mark.integration
def test_plans_dry_run_records_the_verdict_of_heads_that_do_not_divide(tmp_path):
    result = script("parallel_plans_vllm.py", "--dry-run", "--cases", "heads3-t2", "--out", tmp_path / "out",
                    "--work-dir", tmp_path / "work")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (case,) = saved(tmp_path / "out", "parallel_plans_vllm-dry-run")["cases"]
    assert case["validator_accepts"] is False and "tp_heads" in case["validator_failed"]
    assert len(case["transformers_tokens"]) == parallel_plans_vllm.NEW_TOKENS
    assert "vllm_serves" not in case  # the dry run never claims what vLLM did


@pytest.mark.integration
def test_icm_dry_run_compares_each_tensor_parallel_size_with_the_first(tmp_path):
    result = script("icm_vllm.py", "--dry-run", "--tensor-parallel-sizes", "1,2", "--configs", "batched",
                    "--iterations", "1", "--batch-size", "4", "--out", tmp_path / "out",
                    "--work", tmp_path / "work")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = saved(tmp_path / "out", "icm_vllm-dry-run")
    assert list(record["in_process"]) == ["1", "2"]
    assert set(record["tensor_parallel"]["in-process, batched"]["seconds_per_iteration"]) == {"T=1", "T=2"}
