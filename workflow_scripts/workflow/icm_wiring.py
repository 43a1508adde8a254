"""How the ICM rules (rules/icm.smk) are wired: each job's model, data and server inputs, its flags and resources.

Plain Python of the config's `icm:` section, tested without Snakemake (tests/test_icm_wiring.py); the flags and
sizes themselves come from workflow/icm_jobs.py. icm.smk passes Snakemake's `local()` in and binds wildcards.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import icm_jobs
from .resources import weights_mb

SERVER_BASE_MEM_MB = 16384


@dataclass(frozen=True)
class IcmWiring:
    config: dict  # the config's `icm:` section
    model_dirs: dict[str, str]  # the HF folder of each workflow model
    results: str
    work: str
    basedir: str  # the Snakefile's folder, where relative data paths are also looked up
    jobs: list[str] = field(init=False)

    def __post_init__(self) -> None:
        icm_jobs.check_jobs(self.config, self.model_dirs)
        object.__setattr__(self, "jobs", list(self.config.get("jobs", {})))

    @classmethod
    def from_config(cls, config: dict, model_dirs: dict[str, str], basedir: str) -> IcmWiring:
        return cls(config.get("icm", {}), model_dirs, config["results"], config["work"], basedir)

    def entry(self, job: str) -> dict:
        return self.config["jobs"][job]

    def labels_path(self, job: str) -> str:
        return f"{self.results}/icm/{job}/labels.jsonl"

    # Inputs
    def model_input(self, job: str) -> str | list:
        """A workflow model is built first; a folder is used as is; a served model name is no file at all."""
        model = self.entry(job)["model"]
        if model in self.model_dirs:
            return self.model_dirs[model]
        return model if Path(model).exists() else []

    def data_input(self, job: str, local: Callable) -> str:
        """The user's data file, read where it is (also with --default-storage-provider). A relative path missing
        from the working directory is looked up beside the Snakefile (config/icm/)."""
        path = Path(self.entry(job)["data"]["path"])
        if not (path.is_absolute() or path.exists()):
            path = Path(self.basedir) / path
        return local(str(path))

    def server_input(self, job: str) -> str | list:
        if icm_jobs.starts_server(self.entry(job)):
            return f"{self.work}/icm/{job}/server.url"
        return []

    # Params
    def model_flag(self, job: str, model_input) -> str:
        return f"--model {shlex.quote(str(model_input or self.entry(job)['model']))}"

    @staticmethod
    def server_flag(server_input) -> str:
        return f"--base-url-file {server_input}" if server_input else ""

    def flags(self, job: str) -> str:
        return icm_jobs.icm_flags(self.entry(job))

    def serve_flags(self, job: str) -> str:
        return icm_jobs.serve_flags(self.entry(job))

    # Resources
    def gpus(self, job: str) -> int:
        return icm_jobs.icm_gpus(self.entry(job))

    def server_gpus(self, job: str) -> int:
        return icm_jobs.server_gpus(self.entry(job))

    def mem_mb(self, job: str, model_input) -> int:
        return icm_jobs.icm_mem_mb(self.entry(job), weights_mb(model_input) if model_input else 0)

    @staticmethod
    def server_mem_mb(model_input) -> int:
        return SERVER_BASE_MEM_MB + weights_mb(model_input)

    def runtime(self, job: str) -> int:
        return icm_jobs.icm_runtime_min(self.entry(job))
