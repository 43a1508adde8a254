"""How the sequence-KD rules (rules/generate.smk) are wired: each job's inputs, params, resources and conda env,
with or without a storage provider (`--default-storage-provider`).

Plain Python of the wired jobs (`KdJobWiring`, workflow/kd_jobs.py), tested without Snakemake
(tests/test_kd_wiring.py). Snakemake's own objects (`local()`, `ancient()`, the `kd_manifest` checkpoint) and the
rule's wrappers of `wildcards` are passed in by generate.smk, which only binds wildcards to these methods.

A chunk job is outdated by teacher.json (the model or the settings changed), never by the manifest: a new parquet
file rewrites the manifest, and that must not redo finished chunks. With a storage provider every job fetches
what it reads, so the manifest (`ancient`), the teacher and the built dataset become inputs (a new teacher also
makes a new teacher.json; a rebuilt dataset has other rows, so its chunks are redone). Without one they are read
by path: as inputs, the manifest would put the checkpoint among the dependencies of every chunk, which Snakemake
re-evaluates (it tripled the planning time of 10,000 chunks).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from ..kd.manifest import load_manifest
from ..kd.status import CHUNK_LOGS
from . import kd_engines
from .kd_jobs import (
    KdJobWiring,
    check_teachers,
    chunk_files,
    chunk_targets,
    manifest_is_current,
    missing_chunk_files,
    wire_kd_jobs,
)

OUTPUT_FORMATS = ("jsonl", "parquet")
GPU_CHUNK_MEM_MB = 32768  # host memory of one vLLM engine (a chunk job's own, or an engine slot's)
CPU_CHUNK_MEM_MB = 4096
SERVED_CHUNK_MEM_MB = 1024  # a chunk job of an engine job: the tokenizer and its rows, no engine
ENGINE_RUNTIME_MIN = 240
# vLLM's environment (it pins its own torch) where any job runs on GPUs, else the CPU one.
GPU_ENV = "../envs/vllm.yaml"
CPU_ENV = "../envs/generate.yaml"


def built_datasets(config: dict) -> dict[str, str]:
    """The dataset folders the workflow writes itself (rules/sources.smk's build_tiny_dataset)."""
    return {name: f"{config['work']}/datasets/{name}" for name in config.get("tiny_datasets", {})}


def _input_manifest(wildcards, input) -> str:
    return input.manifest


@dataclass(frozen=True)
class KdWiring:
    jobs: dict[str, KdJobWiring]
    results: str
    uses_storage: bool  # a default storage provider fetches every job's inputs
    work: str = "work"

    @classmethod
    def from_config(cls, config: dict, model_dirs: dict[str, str], uses_storage: bool) -> KdWiring:
        """`model_dirs`: the HF folder of each workflow model."""
        jobs = wire_kd_jobs(config.get("kd", {}), model_dirs, built_datasets(config))
        check_teachers(jobs, config.get("kd", {}), model_dirs)
        return cls(jobs, config["results"], uses_storage, config.get("work", "work"))

    # Paths
    def folder(self, job: str) -> str:
        return f"{self.results}/kd/{job}"

    def manifest_path(self, job: str) -> str:
        return f"{self.folder(job)}/manifest.json"

    def dataset_path(self, job: str) -> str:
        return f"{self.folder(job)}/dataset.{self.jobs[job].output_format}"

    def dataset_outputs(self, job: str) -> list[str]:
        return [self.dataset_path(job), f"{self.folder(job)}/summary.json"]

    def chunk_outputs(self) -> dict[str, str]:
        """kd_chunk's outputs: the chunk file, and its stats file with a storage provider only (see chunk_targets;
        a job cannot see the bucket to ask for a lone missing stats file)."""
        chunk = self._chunk_file(".jsonl")
        return {"chunk": chunk, "stats": self._chunk_file(".stats.json")} if self.uses_storage else {"chunk": chunk}

    def lone_stats_output(self) -> str:
        """kd_chunk_stats's output: a stats file gone beside its chunk file, which that rule's job writes anew."""
        return self._chunk_file(".stats.json")

    def lone_stats_jobs(self) -> str:
        """The jobs kd_chunk_stats serves: none with a storage provider, where kd_chunk declares the stats file."""
        return "(?!)" if self.uses_storage else "[^/]+"

    def _chunk_file(self, suffix: str) -> str:
        return f"{self.results}/kd/{{job}}/chunks/{{part}}/{{start}}-{{stop}}{suffix}"

    @staticmethod
    def chunk_log() -> str:
        """kd_chunk's log, where `distillery kd-status` looks for it (kd/status.py)."""
        return f"{CHUNK_LOGS}/{{job}}/{{part}}/{{start}}-{{stop}}.log"

    def jobs_by_format(self) -> dict[str, str]:
        """A regex per output format matching the jobs of that format only; "(?!)" matches no name at all."""
        return {
            output_format: "|".join(
                re.escape(name) for name, job in self.jobs.items() if job.output_format == output_format
            )
            or "(?!)"
            for output_format in OUTPUT_FORMATS
        }

    def flags(self, job: str) -> str:
        return self.jobs[job].flags

    # Inputs
    def model_input(self, job: str, local: Callable) -> str | None:
        """The teacher folder as an input: the workflow's own model follows --default-storage-provider, a folder
        of the user's is read where it is (`local`)."""
        wired = self.jobs[job]
        if not wired.model_input:
            return None
        return wired.model_input if wired.model_is_built else local(wired.model_input)

    def manifest_inputs(self, job: str, local: Callable) -> dict:
        wired = self.jobs[job]
        if wired.built_dataset:
            return {"data": wired.built_dataset}
        return {"data": [local(path) for path in wired.dataset_inputs]}

    def teacher_inputs(self, job: str, local: Callable) -> dict:
        model = self.model_input(job, local)
        return {"model": model} if model else {}

    def chunk_model(self, job: str, local: Callable) -> str | list:
        return self.model_input(job, local) or []

    def chunk_data(self, job: str) -> str | list:
        return self.jobs[job].built_dataset or []

    def chunk_inputs(self, ancient: Callable, model: Callable, data: Callable, engine: Callable) -> dict:
        """kd_chunk's inputs: teacher.json, the engine job's address where a job has them, and with a storage
        provider what a job fetches (`model`, `data`, `engine`: the rule's functions of wildcards). No job with
        engine jobs: an empty engine input, so planning evaluates no function per chunk for it."""
        teacher = f"{self.results}/kd/{{job}}/teacher.json"
        engine = engine if any(self.served(job) for job in self.jobs) else []
        if not self.uses_storage:
            return {"teacher": teacher, "engine": engine}
        manifest = ancient(f"{self.results}/kd/{{job}}/manifest.json")
        return {"teacher": teacher, "engine": engine, "manifest": manifest, "model": model, "data": data}

    def chunk_params(self, copies: Callable) -> dict:
        """kd_chunk's params: the manifest (the storage plugin's copy where there is one) and the --local-* flags
        (`copies`: the rule's function of wildcards and input, calling `copies_flags`)."""
        if not self.uses_storage:
            return {"manifest": f"{self.results}/kd/{{job}}/manifest.json", "copies": ""}
        return {"manifest": _input_manifest, "copies": copies}

    def dataset_inputs(self, job: str, checkpoint) -> dict:
        chunks = {"chunks": self.chunk_files(job, checkpoint)}
        return {"manifest": self.manifest_path(job), **chunks} if self.uses_storage else chunks

    def dataset_manifest(self, job: str, manifest_input: str | None) -> str:
        """The storage plugin's copy where there is one (the inputs are complete only once the checkpoint ran)."""
        return manifest_input or self.manifest_path(job)

    def chunk_files(self, job: str, checkpoint) -> list[str]:
        """The files of the job's chunks that kd_dataset asks for: both of each chunk with a storage provider (it
        sees no file), else those of chunk_targets. A current manifest is read directly: a checkpoint in the DAG makes
        Snakemake redo its bookkeeping after every job, which at 10,000 chunks costs more than the planning itself.
        """
        path = self.manifest_path(job)
        if manifest_is_current(path, self.jobs[job]):
            chunks = load_manifest(path).chunks
        else:
            manifest = checkpoint.get(job=job).output[0]
            # open(): where a storage provider keeps the manifest, Snakemake fetches it first and asks again.
            with manifest.open():
                chunks = load_manifest(manifest).chunks
        return (chunk_files if self.uses_storage else chunk_targets)(self.folder(job), chunks)

    def missing_chunks(self) -> list[str]:
        """Chunk files deleted beside a finished dataset, as targets of `all` and `kd` (see missing_chunk_files)."""
        return [
            path
            for job, wired in self.jobs.items()
            for path in missing_chunk_files(wired, self.folder(job), self.dataset_outputs(job))
        ]

    # Params
    def local_dataset_flag(self, job: str, data) -> str:
        """Where a job reads the built dataset: the storage plugin's copy, or the folder itself."""
        return f"--local-dataset={shlex.quote(str(data))}" if self.jobs[job].built_dataset else ""

    @staticmethod
    def local_model_flag(model) -> str:
        return f"--local-model={shlex.quote(str(model))}" if model else ""

    def copies_flags(self, job: str, model, data) -> str:
        return f"{self.local_model_flag(model)} {self.local_dataset_flag(job, data)}"

    # Engine jobs (workflow/kd_engines.py)
    def served(self, job: str) -> bool:
        """Whether the job's chunk jobs stream to engine jobs (not with a storage provider: the link reads local
        files)."""
        return self.jobs[job].engine_server and not self.uses_storage

    def chunk_engine(self, job: str, chunk: str, service: Callable, declared: tuple[str, ...] = (".jsonl",)):
        """kd_chunk's `engine` input (kd_chunk_stats': `declared` its .stats.json): the address of the chunk's
        engine job, if its job has them. Served jobs have no storage provider, so kd_chunk declares the .jsonl."""
        if not self.served(job):
            return []
        return kd_engines.chunk_engine(self.jobs[job], self.folder(job), self.work, chunk, service, declared)

    def engine_address_pattern(self) -> str:
        """kd_engine's output, with wildcards {job} and {engine}."""
        return kd_engines.ADDRESS.format(work=self.work, job="{job}", engine="{engine}")

    def engine_flags(self, job: str) -> str:
        return kd_engines.engine_flags(self.jobs[job])

    def engine_gpus(self, job: str) -> int:
        return self.jobs[job].engine_slots * self.jobs[job].gpus

    def _vllm_engines(self, job: str) -> bool:
        """Whether the engine job's engines are vLLM's: auto is vLLM where a job asks for GPUs."""
        wired = self.jobs[job]
        return wired.engine_kind == "vllm" or (wired.engine_kind == "auto" and wired.gpus > 0)

    def engine_mem_mb(self, job: str) -> int:
        per_slot = GPU_CHUNK_MEM_MB if self._vllm_engines(job) else CPU_CHUNK_MEM_MB
        return self.jobs[job].engine_slots * per_slot

    def engine_threads(self, job: str) -> int:
        """Two CPUs per vLLM engine (its front end and its busy engine core), one per transformers engine."""
        return self.jobs[job].engine_slots * (2 if self._vllm_engines(job) else 1)

    # Resources
    def gpus(self, job: str) -> int:
        """What a chunk job asks for: nothing where an engine job holds the GPUs."""
        return 0 if self.served(job) else self.jobs[job].gpus

    def chunk_mem_mb(self, job: str) -> int:
        if self.served(job):
            return SERVED_CHUNK_MEM_MB
        return GPU_CHUNK_MEM_MB if self.gpus(job) else CPU_CHUNK_MEM_MB

    def chunk_threads(self, job: str) -> int:
        """None where an engine job generates: Snakemake sums a service group's threads into one request, and the
        chunk jobs mostly wait for results."""
        return 0 if self.served(job) else 2

    def chunk_resources(self, gpus: Callable, mem_mb: Callable, threads: Callable | None = None) -> dict:
        """Plain values where every job has the same one, else the rule's functions of wildcards: Snakemake
        evaluates a function per job, which costs seconds at 10,000 chunks."""
        resources = {
            "gpu": self._same_for_all_jobs(self.gpus, gpus),
            "mem_mb": self._same_for_all_jobs(self.chunk_mem_mb, mem_mb),
        }
        if threads is not None:
            resources["threads"] = self._same_for_all_jobs(self.chunk_threads, threads)
        return resources

    def _same_for_all_jobs(self, value_of: Callable[[str], int], per_job: Callable):
        values = {value_of(job) for job in self.jobs}
        return values.pop() if len(values) == 1 else per_job

    def chunk_env(self) -> str:
        return GPU_ENV if any(job.gpus for job in self.jobs.values()) else CPU_ENV
