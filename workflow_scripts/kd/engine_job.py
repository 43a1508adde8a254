"""A KD engine job (`distillery kd-engine`): the engines a group of chunk jobs stream their rows through.

The job writes the address file at once (Snakemake's `service()` output: the chunk jobs wait only seconds for
it): `{"host", "pid", "tag", "slots": [{"slot", "socket"}]}`. Then it starts one engine server per slot
(`engines/engine_server.py`), each on its own GPUs (`engines/gpus.py`), which binds its socket once ready. Chunk i
streams to slot i mod slots (`connect_chunk`). The servers' output goes to this job's log, each line prefixed
with its slot.

It runs until Snakemake stops it (SIGTERM, once its chunk jobs are done), then stops the servers. A server that
dies stops the job (exit 1); the job's own death stops the servers (they die with their parent), and so does the
death of the process that started it (a Snakemake killed with SIGKILL stops no service), so nothing is left
holding the GPUs, and the chunk jobs fail with one line, keeping the rows they saved.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..atomic import atomic_write_text, pid_alive
from ..engines.base import resolve_engine_kind
from ..engines.engine_server import SlotSpec
from ..engines.gpus import assign_slot_devices
from ..engines.remote import RemoteEngine
from ..errors import DistilleryError
from .local_copies import IN_PLACE, LocalCopies
from .manifest import Manifest
from .settings import job_from_dict

ADDRESS_VERSION = 1
STOP_GRACE_S = 30.0
DEFAULT_START_TIMEOUT_S = 3600.0


def slot_of_chunk(chunk_index: int, slots: int) -> int:
    return chunk_index % slots


def auto_engine_gpus(engine) -> int:
    """The GPUs an `auto` engine configured with none takes where it becomes vLLM (a GPU and vLLM are here): its
    tensor x pipeline devices, claimed like any engine's, so two engine jobs on one machine never share a GPU.
    The default config sets `gpus: 0` so that it plans and runs on any machine; on a GPU machine its engines still
    run on vLLM."""
    if engine.kind != "auto" or resolve_engine_kind("auto") != "vllm":
        return 0
    return engine.tensor_parallel_size * engine.pipeline_parallel_size


def run_engine_job(
    manifest: Manifest, address: Path, slots: int, gpus_per_slot: int, copies: LocalCopies = IN_PLACE
) -> int:
    """Start the slots, publish the address, supervise; the exit code of the job."""
    if slots < 1:
        raise DistilleryError(f"--slots must be at least 1, not {slots}")
    job = copies.job_reading_copies(job_from_dict(manifest.settings))
    parent = os.getppid()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    sockets = _socket_folder()
    servers: list[subprocess.Popen] = []
    locks: list[int] = []
    try:
        _publish(address, manifest.settings_hash, sockets, slots)
        print(f"engine job: {slots} slot(s) for {manifest.job} on {socket.gethostname()}"
              f"{_slurm_note()}; address {address}", flush=True)  # fmt: skip
        devices, locks = assign_slot_devices(slots, gpus_per_slot or auto_engine_gpus(job.engine))
        for slot, slot_devices in enumerate(devices):
            spec = SlotSpec(job.engine, job.sampling, manifest.settings_hash, slot, ",".join(slot_devices))
            servers.append(_start_server(spec, sockets / f"slot{slot}.sock", slot_devices, slots))
        return _supervise(servers, stopping, parent)
    finally:
        _stop(servers)
        shutil.rmtree(sockets, ignore_errors=True)
        for fd in locks:
            os.close(fd)


def _socket_folder() -> Path:
    """A private folder for the slots' sockets; a socket's path may not exceed ~107 bytes, so a long TMPDIR (a
    cluster's per-job scratch) gives way to /tmp."""
    folder = Path(tempfile.mkdtemp(prefix="distillery-kd-engine-"))
    if len(str(folder / "slot000.sock")) <= 100:
        return folder
    folder.rmdir()
    return Path(tempfile.mkdtemp(prefix="distillery-kd-engine-", dir="/tmp"))


def _start_server(spec: SlotSpec, path: Path, devices: list[str], slots: int) -> subprocess.Popen:
    environment = dict(os.environ)
    if devices:
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    threads = environment.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # Snakemake's threads for the job: each slot gets its share
        environment["OMP_NUM_THREADS"] = str(max(1, int(threads) // slots))
    command = [sys.executable, "-m", "workflow_scripts.engines.engine_server", "--socket", str(path),
               "--spec", spec.to_json()]  # fmt: skip
    server = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threading.Thread(target=_relay, args=(server, spec.slot), name=f"slot{spec.slot}-log", daemon=True).start()
    return server


def _relay(server: subprocess.Popen, slot: int) -> None:
    """Copy a server's output into this job's log, each line marked with its slot."""
    for raw in server.stdout:
        sys.stdout.write(f"[slot {slot}] {raw.decode(errors='replace')}")
        sys.stdout.flush()


def _publish(address: Path, tag: str, sockets: Path, slots: int) -> None:
    record = {
        "version": ADDRESS_VERSION, "host": socket.gethostname(), "pid": os.getpid(), "tag": tag,
        "slots": [{"slot": slot, "socket": str(sockets / f"slot{slot}.sock")} for slot in range(slots)],
    }  # fmt: skip
    address.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(address, json.dumps(record, indent=1) + "\n")


def _supervise(servers: list[subprocess.Popen], stopping: threading.Event, parent: int) -> int:
    while not stopping.wait(0.5):
        # A Snakemake killed with SIGKILL never stops its services: the job would hold its GPUs for good.
        if os.getppid() != parent:
            print(f"engine job: the process that started it (pid {parent}) is gone; stopping the engines", flush=True)
            return 1
        for slot, server in enumerate(servers):
            if server.poll() is not None:
                print(f"engine job: slot {slot} exited with code {server.returncode}; stopping the others", flush=True)
                return 1
    print("engine job: stopped by Snakemake (its chunk jobs are done); stopping the engines", flush=True)
    return 0


def _stop(servers: list[subprocess.Popen]) -> None:
    for server in servers:
        if server.poll() is None:
            server.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for server in servers:
        try:
            server.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _slurm_note() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return f" (SLURM job {job})" if job else ""


def read_address(path: Path, chunk_name: str) -> dict:
    """The engine job's address; a file that is none (what Snakemake gives a chunk whose files were complete
    when it planned) is a one-line error."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("version") != ADDRESS_VERSION or not record.get("slots"):
        raise DistilleryError(
            f"is not the address of an engine job, so chunk {chunk_name} has no engine: Snakemake reran a chunk "
            "whose files were complete when it planned (--forcerun, or a changed rule)",
            path,
            "delete the chunk's files to generate it again, or set engine_server: false for the job",
        )
    if record["host"] != socket.gethostname():
        raise DistilleryError(f"names an engine on {record['host']}, not on this host", path)
    return record


def connect_chunk(
    address: Path, manifest: Manifest, chunk_name: str, timeout_s: float = DEFAULT_START_TIMEOUT_S
) -> RemoteEngine:
    """The engine of a chunk: its slot of the engine job at `address`, once that slot is ready."""
    record = read_address(address, chunk_name)
    slot = record["slots"][slot_of_chunk(manifest.positions[chunk_name], len(record["slots"]))]
    describe = f"slot {slot['slot']} of engine job {address.name}, pid {record['pid']}"
    # The job exits as soon as one of its slots dies: its pid says whether the slot may still get ready.
    return RemoteEngine.connect(
        slot["socket"], manifest.settings_hash, f"chunk {chunk_name}", lambda: pid_alive(record["pid"]), timeout_s,
        describe,
    )  # fmt: skip
