"""The `icm:` section of the config turned into `distillery icm` / `distillery serve` flags and job resources.

Snakemake's rules/common.smk calls these; they are plain functions of a job's config entry (`icm.jobs.*`,
config/schema/config.schema.yaml), tested without Snakemake. The job's settings are `ICMJob`'s (`icm/job.py`):
`from_config` reads them and `to_argv` gives the flags; the paths, the job's resources and the server job's
preset and port are read here.
"""

from __future__ import annotations

import shlex
from dataclasses import replace

from ..icm.job import ICMJob
from ..setting import from_config, to_argv


def icm_job(entry: dict) -> ICMJob:
    """The job a config entry describes, less the paths the rule names itself."""
    job = from_config(ICMJob, entry)
    if starts_server(entry):  # the rule passes the service job's URL file instead
        job = replace(job, engine=replace(job.engine, base_url=None))
    return job


def check_jobs(icm_config: dict, model_names) -> None:
    """Refuse, before anything runs, a job whose model is neither a model of this workflow nor a folder."""
    from pathlib import Path

    from ..errors import DistilleryError

    for name, entry in icm_config.get("jobs", {}).items():
        model = entry["model"]
        if model in model_names or Path(model).exists() or icm_job(entry).engine.kind == "openai":
            continue
        raise DistilleryError(
            f"icm job {name!r}: model {model!r} is neither a model of this workflow nor a folder",
            hint=f"use one of {', '.join(model_names) or '(no models)'} or a model folder",
        )


def starts_server(entry: dict) -> bool:
    return entry.get("engine") == "openai" and bool(entry.get("server", {}).get("start"))


def icm_flags(entry: dict) -> str:
    """Every flag of `distillery icm` except the paths the rule names itself."""
    return shlex.join(to_argv(icm_job(entry)))


def serve_flags(entry: dict) -> str:
    server = entry.get("server", {})
    engine = icm_job(entry).engine
    flags = ["--preset", server.get("preset", "8B"), "--port", str(server.get("port", 8000))]
    if engine.served_model_name:
        flags += ["--served-model-name", engine.served_model_name]
    if engine.enforce_eager:
        flags.append("--enforce-eager")
    return shlex.join(flags)


def icm_gpus(entry: dict) -> int:
    """GPUs the job itself holds: vLLM in-process needs its tensor-parallel GPUs; transformers here runs on
    the CPU; an openai job only talks to a server (whose own service job holds the GPUs)."""
    engine = icm_job(entry).engine
    return engine.tensor_parallel_size if engine.kind == "vllm" else 0


def server_gpus(entry: dict) -> int:
    return icm_job(entry).engine.tensor_parallel_size


def icm_mem_mb(entry: dict, model_mb: int) -> int:
    if entry.get("mem_mb"):
        return int(entry["mem_mb"])
    kind = icm_job(entry).engine.kind
    if kind == "transformers":
        return 2048 + 3 * model_mb  # float32 weights and activations on the CPU
    return 8192 + (model_mb if kind == "vllm" else 0)


def icm_runtime_min(entry: dict) -> int:
    if entry.get("runtime_min"):
        return int(entry["runtime_min"])
    # The guide expects ~32 s per iteration for 405B; smaller models take far less. Set runtime_min to tighten.
    return 30 + icm_job(entry).search.iterations // 2
