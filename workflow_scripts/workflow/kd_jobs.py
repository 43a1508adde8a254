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
from dataclasses import dataclass
from pathlib import Path

from ..engines.base import REQUEST_FLAGS
from ..errors import DistilleryError
from ..kd.local_copies import dataset_root
from ..kd.sources import is_url

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
    return [path for path in chunk_files(job_folder, load_manifest(manifest).chunks) if not os.path.exists(path)]


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


def _flags(name: str, entry: dict, model_path: str, dataset: str) -> str:
    data, sampling, engine = entry["dataset"], entry["sampling"], entry["engine"]
    pairs = [
        ("--job-name", name),
        ("--model-path", model_path),
        ("--tokenizer-path", entry.get("tokenizer") and expand(entry["tokenizer"], f"kd.{name}.tokenizer")),
        ("--dataset", dataset),
        ("--prompt-mode", data["prompt_mode"]),
        ("--text-column", data["text_column"]),
        ("--messages-column", data["messages_column"]),
        ("--id-column", data.get("id_column")),
        ("--max-prompt-tokens", entry["max_prompt_tokens"]),
        ("--chunk-rows", entry["chunk_rows"]),
        ("--output-format", entry["output_format"]),
        ("--max-target-length", entry.get("max_target_length")),
        ("--engine", engine["kind"]),
        ("--tensor-parallel-size", engine["tensor_parallel_size"]),
        ("--pipeline-parallel-size", engine["pipeline_parallel_size"]),
        ("--dtype", engine["dtype"]),
        ("--max-model-len", engine.get("max_model_len")),
        ("--gpu-memory-utilization", engine["gpu_memory_utilization"]),
        ("--gen-batch-size", engine["gen_batch_size"]),
        ("--base-url", engine.get("base_url") and expand(engine["base_url"], f"kd.{name}.engine.base_url")),
        ("--served-model-name", engine.get("served_model_name")),
        *((flag, engine[name]) for name, (flag, _) in REQUEST_FLAGS.items()),
        ("-n", sampling["n"]),
        ("--temperature", sampling["temperature"]),
        ("--top-p", sampling["top_p"]),
        ("--top-k", sampling["top_k"]),
        ("--max-tokens", sampling["max_tokens"]),
        ("--seed", sampling["seed"]),
    ]
    flags = [f"{flag} {shlex.quote(str(value))}" for flag, value in pairs if value is not None]
    flags += [f"--stop {shlex.quote(stop)}" for stop in sampling["stop"]]
    switches = {
        "--shuffle-chunks": entry["shuffle_chunks"],
        "--return-token-ids": entry["return_token_ids"],
        "--no-prefix-caching": not engine["enable_prefix_caching"],
        "--enforce-eager": engine["enforce_eager"],
        "--trust-remote-code": engine.get("trust_remote_code", False),
    }
    flags += [flag for flag, on in switches.items() if on]
    return " ".join(flags)


def _settings_hash(flags: str) -> str:
    """The hash `distillery kd-manifest` will write for these flags: computed by parsing them with its own parser,
    so the workflow and the command cannot disagree on what the settings are."""
    import argparse

    from ..kd.commands import add_job_flags, job_from_args

    parser = argparse.ArgumentParser()
    add_job_flags(parser)
    return job_from_args(parser.parse_args(shlex.split(flags))).settings_hash()


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
        engine = entry["engine"]
        gpus = entry.get("gpus")
        if gpus is None:
            parallel = engine["tensor_parallel_size"] * engine["pipeline_parallel_size"]
            gpus = parallel if engine["kind"] in ("vllm", "auto") else 0
        flags = _flags(name, entry, model_path, dataset)
        plans[name] = KdJobWiring(
            name=name,
            model_path=model_path,
            model_input=model_input,
            model_is_built=model in model_dirs,
            dataset_inputs=_dataset_inputs(dataset, built),
            built_dataset=built,
            flags=flags,
            gpus=gpus,
            output_format=entry["output_format"],
            dataset=dataset,
            settings_hash=_settings_hash(flags),
        )
    return plans
