"""Which engine job each KD chunk job streams its rows to (rules/generate.smk: `kd_engine`, kd_chunk's `engine`).

Chunk i of the manifest belongs to engine job i // chunks_per_engine, whose address file is a `service()`:
Snakemake runs an engine job together with the chunk jobs that consume it (all of them at once, in one SLURM
allocation through the profile's group), and stops it when they are done.

Snakemake reruns every consumer of a service that runs. So a chunk whose files are complete is linked to
teacher.json instead (flagged as a service input too: Snakemake's metadata records any service input as
"<service>", so the link can move without the chunk counting as changed). An engine job then runs only for
chunks that are missing, and never regenerates a finished sibling. "Complete" mirrors Snakemake's own test:
the files the chunk's rule declares (kd_chunk: the .jsonl; kd_chunk_stats: the .stats.json) present and not
older than teacher.json, and teacher.json already what kd_teacher would write for
this config (otherwise kd_teacher runs first and every chunk is redone). The link reads only local files, so
with a storage provider chunk jobs keep their own engines.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

from ..kd.manifest import load_manifest
from .kd_jobs import KdJobWiring

ADDRESS = "{work}/kd/{job}/engines/{engine}.json"


def engine_address(work: str, job: str, index: int) -> str:
    return ADDRESS.format(work=work, job=job, engine=f"{index:06d}")


@functools.lru_cache(maxsize=64)
def _teacher_record(path: str, mtime_ns: int) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def chunk_is_complete(wired: KdJobWiring, job_folder: str, chunk_name: str, declared: tuple[str, ...]) -> bool:
    """Whether Snakemake will find the chunk's `declared` files (suffixes) up to date (see the module's docstring)."""
    teacher = f"{job_folder}/teacher.json"
    try:
        teacher_mtime = os.stat(teacher).st_mtime_ns
        base = f"{job_folder}/chunks/{chunk_name}"
        oldest = min(os.stat(f"{base}{suffix}").st_mtime_ns for suffix in declared)
    except FileNotFoundError:
        return False
    return oldest >= teacher_mtime and _teacher_record(teacher, teacher_mtime) == wired.teacher


def chunk_engine(
    wired: KdJobWiring, job_folder: str, work: str, chunk_name: str, service: Callable, declared: tuple[str, ...]
):
    """The engine input of a chunk job: its engine job's address, or teacher.json once the chunk is complete.
    A chunk whose .stats.json alone is gone is then complete for kd_chunk, so only kd_chunk_stats consumes the
    engine job (a consumer of a service that runs would run too, and write the same chunk at the same time)."""
    if chunk_is_complete(wired, job_folder, chunk_name, declared):
        return service(f"{job_folder}/teacher.json")
    position = load_manifest(f"{job_folder}/manifest.json").positions[chunk_name]
    return service(engine_address(work, wired.name, position // wired.chunks_per_engine))


def engine_flags(wired: KdJobWiring) -> str:
    return f"--slots {wired.engine_slots} --gpus-per-slot {wired.gpus}"
