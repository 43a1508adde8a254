"""The workflow on a real SLURM cluster through profiles/slurm: a full run, and the faults it must survive.

Needs a SLURM with accounting (the executor polls `sacct`); `.ci/run` starts a single-node one with
`.ci/slurm/start-slurm.sh` and sets DISTILLERY_REQUIRE_SLURM=1, so there a missing cluster fails the tests
instead of skipping them. The profile is used unchanged: partition and account reach it through the environment,
as on a user's cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slurm]

# The executor waits 40 s before its first sacct poll by default; a test cluster answers at once.
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5")


def _slurm_missing() -> str | None:
    if not shutil.which("sinfo"):
        return "no SLURM here (sinfo not found); .ci/run starts one with .ci/slurm/start-slurm.sh"
    probe = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or " up" not in probe.stdout:
        return f"SLURM does not answer: {(probe.stderr or probe.stdout).strip()[:200]}"
    accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=30)
    if accounting.returncode != 0:
        return f"SLURM accounting is off (the executor polls sacct): {accounting.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """The environment a user sets for profiles/slurm, read from the cluster: its default partition, our account."""
    reason = _slurm_missing()
    if reason:
        if os.environ.get("DISTILLERY_REQUIRE_SLURM") == "1":
            pytest.fail(f"DISTILLERY_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    pytest.importorskip("snakemake_executor_plugin_slurm")
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout
    default = next(p.rstrip("*") for p in partitions.split() if p.endswith("*"))
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    associations = subprocess.run(
        ["sacctmgr", "-n", "-P", "show", "associations", f"user={user}", "format=account"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout
    gpus = re.search(r"gpu(?::\w+)?:(\d+)", gres)
    return {
        **os.environ,
        "DISTILLERY_SLURM_PARTITION": default,
        # An account other than SLURM's own `root` one, to see the profile pass it on.
        "DISTILLERY_SLURM_ACCOUNT": next((a for a in associations if a != "root"), associations[0]),
        "DISTILLERY_SLURM_GPUS_PER_NODE": gpus.group(1) if gpus else "1",
    }


def snakemake_command(workdir: Path, configfile: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(configfile), "--profile", str(REPO / "profiles/slurm"), *FAST_POLLING, *args,
    ]  # fmt: skip


def run_snakemake(env, workdir, configfile, *args, timeout=600) -> subprocess.CompletedProcess:
    command = snakemake_command(workdir, configfile, *args)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def submitted_jobs(log: str) -> list[tuple[str, str]]:
    """(rule, or group and rules, SLURM job id) of each submission a Snakemake run logged."""
    pattern = r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/(?:rule|group)_(\w+?)/"
    return [(name, jobid) for jobid, name in re.findall(pattern, log)]


def run_id(log: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", log).group(1)


def accounting(run: str) -> dict[str, dict[str, str]]:
    """sacct's record of each job of a run (the executor names every job of a run after the run's id)."""
    fields = ["JobID", "State", "Partition", "Account", "ExitCode"]
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--name", run, "-S", "now-1hour", "-o", ",".join(fields)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {line.split("|")[0]: dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line}


def write_config(tmp_path: Path, change=None) -> Path:
    config = yaml.safe_load((REPO / "config/examples/tiny-models.yaml").read_text())
    if change:
        change(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_model(config):
    config["tiny_models"] = {"src": {"architecture": "llama", "layout": "safetensors_sharded", "seed": 3}}
    config["models"] = {"m": {"source": {"format": "hf", "path": "work/sources/src"}, "dtype": "bfloat16"}}
    config["verify"]["parallel_sizes"] = []
    config["kd"], config["tiny_datasets"] = {}, {}  # the default KD and ICM jobs use the models replaced here
    config.pop("icm", None)


def wait_for_running_job(process: subprocess.Popen, log: Path, rule: str, timeout: float = 300) -> str:
    """The SLURM job id of `rule` once SLURM reports it RUNNING (Snakemake still waiting on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"Snakemake ended before {rule} ran:\n{log.read_text()[-3000:]}"
        for name, jobid in submitted_jobs(log.read_text()):
            state = subprocess.run(["squeue", "-h", "-j", jobid, "-o", "%T"], capture_output=True, text=True)
            if (name == rule or name.startswith(f"{rule}_")) and state.stdout.strip() == "RUNNING":
                return jobid
        time.sleep(1)
    raise AssertionError(f"no {rule} job ran within {timeout} s:\n{log.read_text()[-3000:]}")


def test_killed_snakemake_restarts_with_rerun_incomplete_and_reruns_only_the_unfinished_job(slurm_env, tmp_path):
    """Also: the restart runs with no DISTILLERY_SLURM_* variable set, which means the cluster's defaults (its
    default partition, the user's default account, any GPU)."""
    configfile = write_config(tmp_path, one_model)
    workdir = tmp_path / "run"
    first_log = tmp_path / "first.log"
    with first_log.open("w") as sink:
        first = subprocess.Popen(
            snakemake_command(workdir, configfile), stdout=sink, stderr=subprocess.STDOUT, env=slurm_env,
            start_new_session=True,
        )  # fmt: skip
        try:
            orphan = wait_for_running_job(first, first_log, "verify_model")
        finally:
            # The submit host dies: no clean-up by Snakemake (its lock and the job's incomplete marker stay).
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    # What README tells a user to do after that: cancel the dead run's jobs, unlock, run again.
    subprocess.run(["scancel", "--name", run_id(first_log.read_text())], check=True)
    while subprocess.run(["squeue", "-h", "-j", orphan], capture_output=True, text=True).stdout.strip():
        time.sleep(1)
    unset = {name: value for name, value in slurm_env.items() if not name.startswith("DISTILLERY_SLURM_")}
    unlock = run_snakemake(unset, workdir, configfile, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-2000:]

    second = run_snakemake(unset, workdir, configfile, "--rerun-incomplete")
    assert second.returncode == 0, second.stderr[-4000:]

    # Only the job that was running reran; what had finished before the kill was neither lost nor redone.
    before = Counter(rule for rule, _ in submitted_jobs(first_log.read_text()))
    after = Counter(rule for rule, _ in submitted_jobs(second.stderr))
    assert before == {"build_tiny_model": 1, "hf_merge": 1, "verify_model": 1}
    assert after == {"verify_model": 1}
    report = json.loads((workdir / "results/models/m/verification.json").read_text())
    assert report["passed"], report["failed_checks"]
    # Without the variables the job went to the cluster's default partition, under the user's default account.
    (rerun,) = accounting(run_id(second.stdout + second.stderr)).values()
    assert rerun["State"] == "COMPLETED" and rerun["Partition"] == slurm_env["DISTILLERY_SLURM_PARTITION"]
    again = run_snakemake(unset, workdir, configfile, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def every_stage_once(config):
    """The tiny-models config with one model, one parallel plan, one parquet file (three chunks) and a short ICM
    search: every rule of the workflow still runs, each as few times as it can (a SLURM job costs seconds)."""
    del config["tiny_models"]["tiny-qwen3-src"], config["models"]["tiny-qwen3"]
    config["verify"]["parallel_sizes"] = config["verify"]["parallel_sizes"][:1]
    config["tiny_datasets"]["tiny-web"]["files"] = 1
    config["icm"]["jobs"]["tiny-claims"]["iterations"] = 10


def test_every_stage_runs_to_completion_through_the_slurm_profile_past_a_cancelled_chunk_job(slurm_env, tmp_path):
    """The tiny-models config through profiles/slurm, and a KD chunk job cancelled with `scancel` mid-chunk on the way:
    it fails, the profile's retries resubmit it, it resumes its chunk, and the dataset has every row once."""
    configfile = write_config(tmp_path, every_stage_once)
    workdir = tmp_path / "run"
    log = tmp_path / "run.log"
    with log.open("w") as sink:
        run = subprocess.Popen(
            snakemake_command(workdir, configfile), stdout=sink, stderr=subprocess.STDOUT, env=slurm_env,
            start_new_session=True,
        )  # fmt: skip
        try:
            # The engine job and its chunk jobs share an allocation (profiles/slurm: group kd_engines).
            victim = wait_for_running_job(run, log, "kd_engines")
            # Wait until a chunk is generating (its side file exists), so the cancel lands mid-chunk.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not list((workdir / "results/kd").glob("*/chunks/*/.*.partial")):
                time.sleep(0.2)
            subprocess.run(["scancel", victim], check=True)
            assert run.wait(timeout=900) == 0, log.read_text()[-4000:]
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    text = log.read_text()

    report = json.loads((workdir / "results/models/tiny-llama/verification.json").read_text())
    assert report["passed"], report["failed_checks"]
    assert (workdir / "results/icm/tiny-claims/labels.jsonl").is_file()
    # Every job went through SLURM (none ran on the submit host), and sacct records each as completed, on the
    # partition and account the profile took from the environment; the cancelled one as cancelled.
    jobs = submitted_jobs(text)
    counts = Counter(rule for rule, _ in jobs)
    expected = {"build_tiny_model": 1, "hf_merge": 1, "validate_plans": 1, "verify_model": 1, "build_tiny_dataset": 1,
                "kd_teacher": 1, "kd_manifest": 1, "kd_dataset": 1, "icm_labels": 1}  # fmt: skip
    assert {rule: counts[rule] for rule in expected} == expected
    records = accounting(run_id(text))
    assert sorted(records) == sorted(jobid for _, jobid in jobs)
    assert records.pop(victim)["State"].startswith("CANCELLED by ")
    for record in records.values():
        assert record["State"] == "COMPLETED", record
        assert record["Partition"] == slurm_env["DISTILLERY_SLURM_PARTITION"]
        assert record["Account"] == slurm_env["DISTILLERY_SLURM_ACCOUNT"]
    assert "Trying to restart job" in text  # Snakemake's retry, not a second run, brought the chunks back

    manifest = json.loads((workdir / "results/kd/tiny-web-kd/manifest.json").read_text())
    samples = manifest["settings"]["sampling"]["n"]
    generated, skipped = set(), set()
    for chunk in manifest["chunks"]:
        name = f"{chunk['part']}/{chunk['start']:09d}-{chunk['stop']:09d}"
        stats = json.loads((workdir / f"results/kd/tiny-web-kd/chunks/{name}.stats.json").read_text())
        skipped |= {(chunk["file"], skip["row_index"]) for skip in stats["skipped"]}
        generated |= {(chunk["file"], row) for row in range(chunk["start"], chunk["stop"])}
    generated -= skipped
    lines = [json.loads(line) for line in (workdir / "results/kd/tiny-web-kd/dataset.jsonl").read_text().splitlines()]
    keys = [(line["source_file"], line["row_index"], line["sample_index"]) for line in lines]
    assert len(keys) == len(set(keys)), "a sample appears twice in the dataset"
    assert {(file, row) for file, row, _ in keys} == generated, "a row is missing from the dataset"
    assert len(keys) == samples * len(generated)

    again = run_snakemake(slurm_env, workdir, configfile, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_group_of_chunk_jobs_starts_one_engine_job_with_a_slot_per_gpu_in_one_allocation(
    slurm_env, tmp_path, tiny_model_store
):
    """What profiles/slurm says of KD: one sbatch per engine job, its slots side by side on the allocation's GPUs
    (two fake GPUs here), all its chunk jobs at once in it, each on slot i mod 2; proven from the jobs' logs."""
    from workflow_scripts.kd.tiny_dataset import write_tiny_dataset

    workdir = tmp_path / "run"
    write_tiny_dataset(workdir / "data", files=1, rows=64)
    # Enough work per chunk that generating outlasts the jitter of four processes starting on a loaded node.
    job = {"model": str(tiny_model_store("llama")), "dataset": {"path": "data/*.parquet"}, "max_prompt_tokens": 12,
           "chunk_rows": 16, "gpus": 1, "engine_slots": 2, "chunks_per_engine": 4, "sampling": {"max_tokens": 16},
           "engine": {"kind": "transformers", "gen_batch_size": 4}}  # fmt: skip
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump({"models": {}, "tiny_models": {}, "kd": {"web": job}}))
    result = run_snakemake(slurm_env, workdir, configfile, "kd", timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]

    groups = [jobid for name, jobid in submitted_jobs(result.stderr) if name.startswith("kd_engines_")]
    assert len(groups) == 1, "one allocation for the engine job and its four chunk jobs"
    allocation = groups[0]
    engine_log = (workdir / "logs/kd_engine/web/000000.log").read_text()
    assert "engine job: 2 slot(s) for web on " in engine_log and f"(SLURM job {allocation})" in engine_log
    ready = re.findall(r"\[slot (\d)\] slot \d: engine (\S+) ready in [\d.]+ s \(GPUs (\d)", engine_log)
    assert [(slot, gpus) for slot, _, gpus in ready] in ([("0", "0"), ("1", "1")], [("1", "1"), ("0", "0")])
    engines = {slot: engine for slot, engine, _ in ready}

    manifest = json.loads((workdir / "results/kd/web/manifest.json").read_text())
    spans = []
    for index, chunk in enumerate(manifest["chunks"]):
        name = f"{chunk['part']}/{chunk['start']:09d}-{chunk['stop']:09d}"
        log = (workdir / f"logs/kd_chunk/web/{name}.log").read_text()
        slot = str(index % 2)
        assert f"engine {engines[slot]} (slot {slot}, SLURM job {allocation}, GPUs {slot})" in log
        stats = json.loads((workdir / f"results/kd/web/chunks/{name}.stats.json").read_text())
        spans.append((stats["generated_from"], stats["generated_until"]))
    assert len(spans) == 4 and max(start for start, _ in spans) < min(end for _, end in spans), "all ran at once"
    summary = json.loads((workdir / "results/kd/web/summary.json").read_text())
    assert summary["engine_starts"] == 2 and [run["chunks"] for run in summary["engine_runs"]] == [2, 2]
    assert accounting(run_id(result.stderr))[allocation]["State"] == "COMPLETED"
