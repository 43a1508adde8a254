"""Which GPUs each engine slot of a job uses: its own `tensor x pipeline` devices, never another engine's.

Snakemake counts GPUs (`resources: gpu`) but does not say which ones a job got. Under SLURM the allocation's
devices are the job's alone: the slots split `CUDA_VISIBLE_DEVICES` (or, where SLURM sets only a count,
devices 0..n-1 of the step). On a machine of one's own, several engine jobs may run at once: each takes
devices nobody holds, by an exclusive `flock` on one lock file per device (released by the kernel when the
process ends, however it ends).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from ..errors import DistilleryError

LOCK_WAIT_S = 300.0


def visible_devices(environ: Mapping[str, str]) -> list[str]:
    """The devices this process may use, as CUDA names them."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    if environ.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return [str(index) for index in range(int(environ["SLURM_GPUS_ON_NODE"]))]
    return [str(index) for index in range(_gpu_count())]


def _gpu_count() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    return len(re.findall(r"^GPU \d+:", listing.stdout, flags=re.MULTILINE))


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"distillery-gpu-locks-{os.getuid()}"


def assign_slot_devices(
    slots: int, per_slot: int, environ: Mapping[str, str] | None = None, lock_dir: Path | None = None
) -> tuple[list[list[str]], list[int]]:
    """The devices of each slot, and the lock file descriptors to keep open while the slots run.

    No GPUs per slot (a CPU engine): empty lists. Too few devices: a one-line error."""
    environ = os.environ if environ is None else environ
    if per_slot == 0:
        return [[] for _ in range(slots)], []
    devices = visible_devices(environ)
    needed = slots * per_slot
    if len(devices) < needed:
        raise DistilleryError(
            f"{slots} engine slots of {per_slot} GPUs need {needed} GPUs, but {len(devices)} are visible "
            f"({', '.join(devices) or 'none'})",
            hint="ask for fewer engine_slots, or run where the GPUs are",
        )
    if environ.get("SLURM_JOB_ID"):
        taken, locks = devices[:needed], []
    else:
        taken, locks = _claim(devices, needed, lock_dir or default_lock_dir())
    return [taken[slot * per_slot : (slot + 1) * per_slot] for slot in range(slots)], locks


def _claim(devices: list[str], needed: int, lock_dir: Path) -> tuple[list[str], list[int]]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        taken, locks = [], []
        for device in devices:
            fd = os.open(lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock", os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            taken.append(device)
            locks.append(fd)
            if len(taken) == needed:
                return taken, locks
        for fd in locks:
            os.close(fd)
        if time.monotonic() > deadline:
            raise DistilleryError(
                f"only {len(taken)} of the {len(devices)} visible GPUs are free; {needed} are needed",
                lock_dir,
                "other engines hold the rest (their lock files are here): wait for them, or give fewer GPUs "
                "to Snakemake (--resources gpu=N)",
            )
        time.sleep(2.0)
