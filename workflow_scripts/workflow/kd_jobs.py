"""The KD jobs a config asks for: the model folder, the dataset files Snakemake should watch, and the flags of
`distillery kd-manifest` (the same flags a person would type).

Environment variables in string values are expanded, so a config can say `model: $MODEL_PATH` as the MaxText
guide's script did.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import DistilleryError
from ..kd.local_copies import dataset_root
from ..kd.settings import KdJob, teacher_record
from ..kd.sources import is_url
from ..setting import from_config, to_argv

_UNSET_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class KdJobWiring:
    name: str
    model_path: str  # what the engine loads
    model_input: str | None  # a file target or existing folder Snakemake tracks, if any
    model_is_built: bool  # model_input is a model folder the workflow itself writes
    dataset_inputs: list[str]  # local parquet files (or a folder another rule builds) the manifest depends on
    built_dataset: str | None  # that folder, when a rule of the workflow builds the dataset
    flags: str
    gpus: int
    output_format: str
    dataset: str
    settings_hash: str
    # Chunk jobs stream to engine jobs (kd_engine) of `engine_slots` engines of `gpus` GPUs each, one engine job
    # per `chunks_per_engine` chunks; without (engine_server: false, or the openai engine) each starts its own.
    engine_server: bool = False
    engine_slots: int = 1
    chunks_per_engine: int = 1
    teacher: dict = field(default_factory=dict)  # what teacher.json holds once kd_teacher ran on this config
    engine_kind: str = "auto"


def manifest_is_current(manifest_path: str, plan: KdJobWiring) -> bool:
    """Whether an existing manifest already lists this job's local files with these settings.

    Then the workflow reads it directly instead of through the Snakemake checkpoint, whose re-evaluation costs
    more than the rest of planning at 10,000 chunks. Anything uncertain (a URL dataset, a new or newer file,
    other settings) answers False, and the checkpoint decides.
    """
    from ..kd.manifest import load_manifest
    from ..kd.sources import list_parquet_files

    path = Path(manifest_path)
    if is_url(plan.dataset) or not path.is_file():
        return False
    try:
        manifest = load_manifest(path)
        files, _ = list_parquet_files(plan.dataset)
    except DistilleryError:
        return False
    if manifest.settings_hash != plan.settings_hash:
        return False
    if sorted(entry["path"] for entry in manifest.data["files"]) != files:
        return False
    written = path.stat().st_mtime
    return all(os.stat(file).st_mtime <= written for file in files)


def chunk_files(job_folder: str, chunks) -> list[str]:
    """The two files of each of a manifest's chunks (kd/{job}/chunks/{part}/{start}-{stop}.jsonl, .stats.json)."""
    return [f"{job_folder}/chunks/{chunk.name}{suffix}" for chunk in chunks for suffix in (".jsonl", ".stats.json")]


def chunk_targets(job_folder: str, chunks) -> list[str]:
    """What kd_dataset asks for where Snakemake sees the files (no storage provider): every chunk file, and a
    chunk's `.stats.json` only where it is gone beside its chunk file (kd_chunk_stats then redoes that chunk).

    The chunk job writes both files, but declares only the chunk file: a second output of each of 10,000 jobs,
    and a second input of the dataset for each, cost a third of the time Snakemake takes to plan them
    (benchmarks/dry_run_scale.py). One listing per folder, no stat per file.
    """
    listed: dict[str, set[str]] = {}
    targets = []
    for chunk in chunks:
        folder, name = f"{job_folder}/chunks/{chunk.part}", chunk.name.rsplit("/", 1)[1]
        if folder not in listed:
            listed[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        targets.append(f"{folder}/{name}.jsonl")
        if f"{name}.jsonl" in listed[folder] and f"{name}.stats.json" not in listed[folder]:
            targets.append(f"{folder}/{name}.stats.json")
    return targets


def missing_chunk_files(plan: KdJobWiring, job_folder: str, dataset_outputs: list[str]) -> list[str]:
    """The chunk files missing beside a finished dataset. As targets they make Snakemake redo them (and then the
    dataset): it remakes a missing file only where a target or a job that runs needs it, and the dataset is up
    to date. Only the missing ones (one stat per file): every chunk a target would double the chunk lookups of
    planning. An unfinished dataset, or one without a current manifest, runs anyway and needs its chunks itself.
    """
    from ..kd.manifest import load_manifest

    manifest = f"{job_folder}/manifest.json"
    if not all(os.path.exists(path) for path in dataset_outputs) or not manifest_is_current(manifest, plan):
        return []
    return [path for path in chunk_targets(job_folder, load_manifest(manifest).chunks) if not os.path.exists(path)]


def check_teachers(plans: dict[str, KdJobWiring], jobs: dict[str, dict], model_names) -> None:
    """Refuse, before anything runs, a job whose teacher is neither a model of `models:` nor a folder (a served
    model's name is fine for engine openai): found at run time, it would fail only after the jobs before it."""
    for name, plan in plans.items():
        if plan.model_is_built or os.path.isdir(plan.model_path) or jobs[name]["engine"]["kind"] == "openai":
            continue
        raise DistilleryError(
            f"kd job {name!r}: model {plan.model_path!r} is neither a model of this workflow nor a folder",
            hint=f"use one of {', '.join(model_names) or '(no models)'} or an HF model folder",
        )


def expand(value: str, where: str) -> str:
    expanded = os.path.expandvars(value)
    unset = _UNSET_VARIABLE.search(expanded)
    if unset:
        raise DistilleryError(f"config {where} refers to ${unset.group(1)}, which is not set", hint="export it first")
    return expanded


def _built_dataset(name: str, path: str, built_datasets: dict[str, str]) -> str | None:
    """The workflow-built folder the dataset is in. It must be the dataset's own folder: `--local-dataset` copies
    that one."""
    for folder in built_datasets.values():
        folder = folder.rstrip("/")
        if path.rstrip("/") == folder or path.startswith(folder + "/"):
            if os.path.normpath(dataset_root(path)) != os.path.normpath(folder):
                raise DistilleryError(
                    f"config kd.{name}.dataset.path {path!r} is below {folder}, which the workflow builds",
                    hint=f"name {folder} itself, a parquet file in it or a glob of its files",
                )
            return folder
    return None


def _dataset_inputs(path: str, built: str | None) -> list[str]:
    if is_url(path):
        return []
    if built:
        return [built]
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    return sorted(glob.glob(path, recursive=True))


def kd_job(name: str, entry: dict, model_path: str, dataset: str) -> KdJob:
    """The job a config entry describes (the settings' own config keys), with its paths resolved."""
    job = from_config(KdJob, entry, name=name, model=model_path, dataset=dataset)
    tokenizer = entry.get("tokenizer") and expand(entry["tokenizer"], f"kd.{name}.tokenizer")
    base_url = entry["engine"].get("base_url") and expand(entry["engine"]["base_url"], f"kd.{name}.engine.base_url")
    return replace(job, engine=replace(job.engine, model_path=model_path, tokenizer_path=tokenizer, base_url=base_url))


def _flags(job: KdJob) -> str:
    """The flags of `distillery kd-manifest` (and kd-teacher) that give this job back: the paths first, for the
    reader of a log, then every setting not at its default."""
    paths = {"--job-name": job.name, "--model-path": job.model, "--tokenizer-path": job.engine.tokenizer_path}
    paths["--dataset"] = job.dataset
    lead = [word for flag, value in paths.items() if value is not None for word in (flag, value)]
    return shlex.join(lead + to_argv(job, skip=tuple(paths)))


def wire_kd_jobs(jobs: dict[str, dict], model_dirs: dict[str, str], built_datasets: dict[str, str]) -> dict:
    """`model_dirs`: the HF folder of each workflow model; `built_datasets`: folders the workflow writes itself."""
    plans = {}
    for name, entry in jobs.items():
        model = expand(entry["model"], f"kd.{name}.model")
        if model in model_dirs:
            model_path, model_input = model_dirs[model], model_dirs[model]
        else:
            model_path = model
            model_input = model if os.path.isdir(model) else None
        dataset = expand(entry["dataset"]["path"], f"kd.{name}.dataset.path")
        built = None if is_url(dataset) else _built_dataset(name, dataset, built_datasets)
        job = kd_job(name, entry, model_path, dataset)
        gpus = entry.get("gpus")
        if gpus is None:
            parallel = job.engine.tensor_parallel_size * job.engine.pipeline_parallel_size
            gpus = parallel if job.engine.kind in ("vllm", "auto") else 0
        engine_server, slots, per_engine = _engine_layout(name, entry, job)
        plans[name] = KdJobWiring(
            name=name,
            model_path=model_path,
            model_input=model_input,
            model_is_built=model in model_dirs,
            dataset_inputs=_dataset_inputs(dataset, built),
            built_dataset=built,
            flags=_flags(job),
            gpus=gpus,
            output_format=job.output_format,
            dataset=dataset,
            settings_hash=job.settings_hash(),
            engine_server=engine_server,
            engine_slots=slots,
            chunks_per_engine=per_engine,
            teacher=teacher_record(job),
            engine_kind=job.engine.kind,
        )
    return plans


def _engine_layout(name: str, entry: dict, job: KdJob) -> tuple[bool, int, int]:
    """Whether the job's chunks stream to engine jobs, the engines side by side in one, and its chunks."""
    slots, per_engine = entry.get("engine_slots", 1), entry.get("chunks_per_engine", 8)
    if per_engine < slots:
        raise DistilleryError(
            f"kd job {name!r}: chunks_per_engine ({per_engine}) is below engine_slots ({slots}): slots would idle",
            hint="give each engine job at least one chunk per slot",
        )
    # An openai engine is a server already: its chunk jobs call it directly.
    return entry.get("engine_server", True) and job.engine.kind != "openai", slots, per_engine
