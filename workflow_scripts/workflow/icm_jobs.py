"""The `icm:` section of the config turned into `distillery icm` / `distillery serve` flags and job resources.

Snakemake's rules/common.smk calls these; they are plain functions of the config so they are tested without
Snakemake. Keys and defaults are those of config/schema/config.schema.yaml (`icm.jobs.*`).
"""

from __future__ import annotations

import shlex

from ..engines.base import EngineSettings
from ..icm.algorithm import ICMSettings
from ..setting import config_defaults, fields_of

# The search settings (the reference's ICM.py arguments and defaults) come from ICMSettings' fields; the job's and
# engine's keys of the `icm.jobs.*` entry follow.
_SEARCH = [field for field in fields_of(ICMSettings) if field.config and field.setting.flag]
_REQUESTS = ("max_concurrency", "request_timeout_s", "max_retries")  # EngineSettings fields, keys of `server:`
JOB_DEFAULTS = {
    "engine": "auto",
    **config_defaults(ICMSettings),
    "batch_size": 256,
    "top_logprobs": 20,
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.9,
    "dtype": "auto",
    "enforce_eager": False,
}
SEARCH_FLAGS = {
    **{field.config: field.setting.flag for field in _SEARCH},
    "batch_size": "--batch-size",
    "top_logprobs": "--top-logprobs",
    "tensor_parallel_size": "--tensor-parallel-size",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "dtype": "--dtype",
    "max_model_len": "--max-model-len",
}
SERVER_FLAGS = {
    "served_model_name": "--served-model-name",
    "requests_per_minute": "--requests-per-minute",
    "api_key_env": "--api-key-env",
    **{field.name: field.setting.flag for field in fields_of(EngineSettings) if field.name in _REQUESTS},
}


def job_settings(icm_config: dict, job: str) -> dict:
    return {**JOB_DEFAULTS, **icm_config["jobs"][job]}


def check_jobs(icm_config: dict, model_names) -> None:
    """Refuse, before anything runs, a job whose model is neither a model of this workflow nor a folder."""
    from pathlib import Path

    from ..errors import DistilleryError

    for job in icm_config.get("jobs", {}):
        settings = job_settings(icm_config, job)
        model = settings["model"]
        if model in model_names or Path(model).exists() or settings["engine"] == "openai":
            continue
        raise DistilleryError(
            f"icm job {job!r}: model {model!r} is neither a model of this workflow nor a folder",
            hint=f"use one of {', '.join(model_names) or '(no models)'} or a model folder",
        )


def starts_server(settings: dict) -> bool:
    return settings["engine"] == "openai" and bool(settings.get("server", {}).get("start"))


def icm_flags(settings: dict) -> str:
    """Every flag of `distillery icm` except the paths the rule names itself."""
    flags = [f"--testbed {settings['data'].get('format', 'generic')}", f"--engine {settings['engine']}"]
    if settings["data"].get("prompt_template"):
        flags.append(f"--prompt-template {shlex.quote(settings['data']['prompt_template'])}")
    for key, flag in SEARCH_FLAGS.items():
        if settings.get(key) is not None:
            flags.append(f"{flag} {shlex.quote(str(settings[key]))}")
    if settings.get("score_unlabeled") is not None:
        flags.append("--score-unlabeled" if settings["score_unlabeled"] else "--no-score-unlabeled")
    if settings.get("enforce_eager"):
        flags.append("--enforce-eager")
    if settings.get("trust_remote_code"):
        flags.append("--trust-remote-code")
    if settings.get("tokenizer"):
        flags.append(f"--tokenizer {shlex.quote(settings['tokenizer'])}")
    server = settings.get("server", {})
    if server.get("base_url") and not starts_server(settings):
        flags.append(f"--base-url {shlex.quote(server['base_url'])}")
    for key, flag in SERVER_FLAGS.items():
        if server.get(key) is not None:
            flags.append(f"{flag} {shlex.quote(str(server[key]))}")
    if server.get("self_hosted") is not None:
        flags.append("--self-hosted" if server["self_hosted"] else "--no-self-hosted")
    return " ".join(flags)


def serve_flags(settings: dict) -> str:
    server = settings.get("server", {})
    flags = [f"--preset {server.get('preset', '8B')}", f"--port {server.get('port', 8000)}"]
    if server.get("served_model_name"):
        flags.append(f"--served-model-name {shlex.quote(server['served_model_name'])}")
    if settings.get("enforce_eager"):
        flags.append("--enforce-eager")
    return " ".join(flags)


def icm_gpus(settings: dict) -> int:
    """GPUs the job itself holds: vLLM in-process needs its tensor-parallel GPUs; transformers here runs on
    the CPU; an openai job only talks to a server (whose own service job holds the GPUs)."""
    return int(settings["tensor_parallel_size"]) if settings["engine"] == "vllm" else 0


def icm_mem_mb(settings: dict, model_mb: int) -> int:
    if settings.get("mem_mb"):
        return int(settings["mem_mb"])
    if settings["engine"] == "transformers":
        return 2048 + 3 * model_mb  # float32 weights and activations on the CPU
    return 8192 + (model_mb if settings["engine"] == "vllm" else 0)


def icm_runtime_min(settings: dict) -> int:
    if settings.get("runtime_min"):
        return int(settings["runtime_min"])
    # The guide expects ~32 s per iteration for 405B; smaller models take far less. Set runtime_min to tighten.
    return 30 + int(settings["iterations"]) // 2
