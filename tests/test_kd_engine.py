"""KD chunk jobs streaming to an engine job (`kd-engine`) on the CPU: what they write, and the kills they survive.

The engine job runs the transformers engine behind the engine server; chunk jobs are `distillery kd-chunk
--engine-address`, run as separate processes as Snakemake runs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow_scripts.engines.gpus import assign_slot_devices
from workflow_scripts.errors import DistilleryError
from workflow_scripts.kd.manifest import load_manifest
from workflow_scripts.kd.tiny_dataset import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.long(seconds=210)]


def distillery(*args) -> list[str]:
    return [sys.executable, "-m", "workflow_scripts.cli", *(str(arg) for arg in args)]


@pytest.fixture
def model(tiny_model_store) -> Path:
    return tiny_model_store("llama")


def make_manifest(folder: Path, model: Path, rows: int, chunk_rows: int, *flags: str) -> Path:
    data = folder / "data"
    write_tiny_dataset(data, files=1, rows=rows, row_group_rows=16)
    manifest = folder / "job/manifest.json"
    command = distillery("kd-manifest", "--output", manifest, "--model-path", model, "--dataset", data,
                         "--engine", "transformers", "--chunk-rows", chunk_rows, "--max-prompt-tokens", 12,
                         "--seed", 3, *flags)  # fmt: skip
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return manifest


class EngineJob:
    """`distillery kd-engine` in the background, as Snakemake runs a service; its log in a file."""

    def __init__(self, manifest: Path, *flags, env: dict | None = None) -> None:
        self.address = manifest.parent / f"engine-{time.monotonic_ns()}.json"
        self.log = self.address.with_suffix(".log")
        with open(self.log, "w") as sink:
            self.process = subprocess.Popen(distillery("kd-engine", "--manifest", manifest, "--address", self.address,
                                                       *flags), cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                            env=env)  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.address.exists():
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        self.record = json.loads(self.address.read_text())

    def server_pids(self) -> list[int]:
        """The engine servers: the job's children, once it started them (Linux)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        deadline = time.monotonic() + 60
        while not children.read_text().split():
            assert time.monotonic() < deadline, "the engine job started no engine server"
            time.sleep(0.05)
        return [int(pid) for pid in children.read_text().split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)


def chunk_command(manifest: Path, chunk: str, address: Path) -> list[str]:
    # No progress lines: a chunk's stderr is then only its error, which must be one line.
    return distillery("kd-chunk", "--manifest", manifest, "--chunk", chunk, "--engine-address", address,
                      "--progress-seconds", 0)  # fmt: skip


def run_chunk(manifest: Path, chunk: str, address: Path) -> subprocess.CompletedProcess:
    return subprocess.run(chunk_command(manifest, chunk, address), cwd=REPO, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def side_file(manifest: Path, chunk: str) -> Path:
    output = manifest.parent / f"chunks/{chunk}.jsonl"
    return output.parent / f".{output.name}.partial"


def wait_for_rows(side: Path, rows: int, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until `rows` generated rows are saved (skipped rows are saved before any row is generated)."""
    deadline = time.monotonic() + timeout
    while not side.exists() or side.read_text().count('"completion":') < rows:
        assert process.poll() is None, "the chunk ended before the kill"
        assert time.monotonic() < deadline, f"fewer than {rows} rows saved in {timeout} s"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(")")[-1].split()[0] == "Z")


def rows_of_chunk(manifest: Path, chunk: str) -> list[int]:
    output = manifest.parent / f"chunks/{chunk}.jsonl"
    stats = json.loads(output.with_name(output.name.replace(".jsonl", ".stats.json")).read_text())
    generated = [json.loads(line)["row_index"] for line in output.read_text().splitlines()]
    return sorted(generated + [skip["row_index"] for skip in stats["skipped"]])


def test_a_chunk_through_an_engine_job_writes_what_its_own_engine_writes(model, tmp_path):
    # Batches of one row: each row's samples depend on nothing but the row, on both paths.
    manifest = make_manifest(tmp_path, model, 20, 20, "--gen-batch-size", 1, "--max-tokens", 6, "-n", 2)
    chunk = load_manifest(manifest).chunks[0].name
    own = subprocess.run(distillery("kd-chunk", "--manifest", manifest, "--chunk", chunk, "--output",
                                    tmp_path / "own.jsonl"), cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert own.returncode == 0, own.stderr
    engine = EngineJob(manifest)
    try:
        served = run_chunk(manifest, chunk, engine.address)
    finally:
        engine.stop()
    assert served.returncode == 0, served.stderr
    assert (manifest.parent / f"chunks/{chunk}.jsonl").read_text() == (tmp_path / "own.jsonl").read_text()
    stats = json.loads((manifest.parent / f"chunks/{chunk}.stats.json").read_text())
    assert f"engine {stats['engine_id']} ready in" in engine.log.read_text()
    assert f"chunk {chunk}: engine {stats['engine_id']} (slot 0, GPUs none)" in served.stdout


@pytest.mark.parametrize("victim", ["engine job", "its engine server"])
def test_an_engine_killed_mid_chunk_fails_the_chunk_in_one_line_and_the_rerun_resumes_every_row_once(
    model, tmp_path, victim
):
    manifest = make_manifest(tmp_path, model, 40, 40, "--gen-batch-size", 2, "--max-tokens", 24)
    chunk = load_manifest(manifest).chunks[0].name
    engine = EngineJob(manifest)
    job = subprocess.Popen(chunk_command(manifest, chunk, engine.address), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_rows(side_file(manifest, chunk), 6, job)
    servers = engine.server_pids()
    os.kill(engine.process.pid if victim == "engine job" else servers[0], signal.SIGKILL)
    _, stderr = job.communicate(timeout=120)
    engine.process.wait(timeout=60)

    assert job.returncode == 1
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "closed the connection with" in stderr and "run the chunk again to resume" in stderr
    assert not (manifest.parent / f"chunks/{chunk}.jsonl").exists(), "nothing may look complete"
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in servers), "an engine outlived its job"

    again = EngineJob(manifest)
    try:
        rerun = run_chunk(manifest, chunk, again.address)
    finally:
        again.stop()
    assert rerun.returncode == 0, rerun.stderr
    assert rows_of_chunk(manifest, chunk) == list(range(40))
    assert json.loads((manifest.parent / f"chunks/{chunk}.stats.json").read_text())["resumed_rows"] >= 6


def test_an_engine_job_whose_snakemake_is_killed_stops_its_engines(model, tmp_path):
    """Snakemake killed with SIGKILL stops none of its services: the engine job notices its parent is gone."""
    manifest = make_manifest(tmp_path, model, 8, 8)
    address = tmp_path / "engine.json"
    # The stand-in for Snakemake: it starts the engine job, says its pid, and waits for it.
    parent_code = (
        "import subprocess, sys; job = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); print(job.pid, flush=True); job.wait()"
    )
    command = distillery("kd-engine", "--manifest", manifest, "--address", address)
    parent = subprocess.Popen([sys.executable, "-c", parent_code, *command], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    job = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not address.exists():
        assert alive(job) and time.monotonic() < deadline, "the engine job did not publish its address"
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 60
    while alive(job) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(job), "the engine job outlived the process that started it"


def test_a_chunk_job_killed_mid_chunk_resumes_on_the_running_engine_with_every_row_once(model, tmp_path):
    manifest = make_manifest(tmp_path, model, 40, 40, "--gen-batch-size", 2, "--max-tokens", 24)
    chunk = load_manifest(manifest).chunks[0].name
    engine = EngineJob(manifest)
    try:
        job = subprocess.Popen(chunk_command(manifest, chunk, engine.address), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for_rows(side_file(manifest, chunk), 6, job)
        job.kill()
        job.wait()
        rerun = run_chunk(manifest, chunk, engine.address)
        assert engine.process.poll() is None, "the engine job must outlive a chunk job"
    finally:
        engine.stop()
    assert rerun.returncode == 0, rerun.stderr
    assert rows_of_chunk(manifest, chunk) == list(range(40))
    assert "unanswered (cancelled)" in engine.log.read_text()
    assert engine.process.returncode == 0


def test_two_slots_serve_alternate_chunks_each_on_its_own_gpu(model, tmp_path):
    manifest = make_manifest(tmp_path, model, 16, 4, "--max-tokens", 4)
    chunks = [chunk.name for chunk in load_manifest(manifest).chunks]
    # Two "GPUs" on a CPU machine: the engines run on the CPU but each is given its own device.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1", "TMPDIR": str(tmp_path)}
    engine = EngineJob(manifest, "--slots", 2, "--gpus-per-slot", 1, env=env)
    try:
        jobs = [subprocess.Popen(chunk_command(manifest, chunk, engine.address), cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for chunk in chunks]  # fmt: skip
        outputs = [job.communicate(timeout=600) for job in jobs]
    finally:
        engine.stop()
    assert [job.returncode for job in jobs] == [0, 0, 0, 0], [err for _, err in outputs]
    stats = [json.loads((manifest.parent / f"chunks/{chunk}.stats.json").read_text()) for chunk in chunks]
    engines = [s["engine_id"] for s in stats]
    assert engines[0] == engines[2] != engines[1] == engines[3]
    for index, (stdout, _) in enumerate(outputs):
        assert f"(slot {index % 2}, GPUs {index % 2})" in stdout
    assert engine.log.read_text().count("ready in") == 2
    assert "[slot 0] slot 0: starting engine transformers (GPUs 0)" in engine.log.read_text()
    assert "[slot 1] slot 1: starting engine transformers (GPUs 1)" in engine.log.read_text()


def test_an_engine_job_of_other_settings_refuses_the_chunk_in_one_line(model, tmp_path):
    manifest = make_manifest(tmp_path / "a", model, 8, 8, "--max-tokens", 4)
    other = make_manifest(tmp_path / "b", model, 8, 8, "--max-tokens", 5)
    engine = EngineJob(other)
    try:
        result = run_chunk(manifest, load_manifest(manifest).chunks[0].name, engine.address)
    finally:
        engine.stop()
    assert result.returncode == 1
    assert "refused this chunk: this engine serves the KD settings" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_chunk_linked_to_no_engine_job_says_what_to_do(model, tmp_path):
    manifest = make_manifest(tmp_path, model, 8, 8)
    teacher = tmp_path / "job/teacher.json"
    teacher.write_text('{"job": "kd"}\n')
    result = run_chunk(manifest, load_manifest(manifest).chunks[0].name, teacher)
    assert result.returncode == 1
    assert "is not the address of an engine job" in result.stderr and "delete the chunk's files" in result.stderr


def test_slots_under_slurm_split_the_allocations_gpus():
    devices, locks = assign_slot_devices(2, 2, {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    assert (devices, locks) == ([["4", "5"], ["6", "7"]], [])
    devices, _ = assign_slot_devices(2, 1, {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "2"})
    assert devices == [["0"], ["1"]]


def test_slots_on_a_machine_of_ones_own_take_only_gpus_no_other_engine_holds(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": "0,1,2"}
    first, held = assign_slot_devices(1, 1, environ, tmp_path)
    second, also_held = assign_slot_devices(2, 1, environ, tmp_path)
    assert first == [["0"]] and second == [["1"], ["2"]]
    for fd in held:
        os.close(fd)  # the first engine ends: its GPU is free again
    third, _ = assign_slot_devices(1, 1, environ, tmp_path)
    assert third == [["0"]]


def test_slots_that_need_more_gpus_than_visible_are_refused_in_one_line():
    with pytest.raises(DistilleryError, match="2 engine slots of 2 GPUs need 4 GPUs, but 3 are visible"):
        assign_slot_devices(2, 2, {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0,1,2"})
