"""The KD commands: kd-manifest, kd-teacher, kd-chunk, kd-dataset, kd-status and the standalone `generate`.

The job flags are those of the KD settings (`kd/settings.py`, `engines/base.py`), named as in the MaxText guide's
script. Only `generate`, the guide's `run_sequence_kd.sh` as one command, falls back on the guide's environment
variables (MODEL_PATH, DATASET_PATH, ...): the workflow's rules pass every setting as a flag, and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..engines.base import EngineSettings, SamplingSettings
from ..errors import DistilleryError
from ..kd.chunk_progress import PROGRESS_SECONDS
from ..kd.local_copies import LocalCopies
from ..kd.settings import OUTPUT_FORMATS, KdJob, PromptSettings, job_to_dict, teacher_record
from ..output_guard import check_apart_from_inputs
from ..setting import add_flags, from_args


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """The settings of a KD job, in the groups `--help` shows."""
    add_flags(parser.add_argument_group("data"), PromptSettings)
    add_flags(parser.add_argument_group("model and engine"), EngineSettings)
    add_flags(parser.add_argument_group("sampling"), SamplingSettings)
    add_flags(parser.add_argument_group("job"), KdJob)


def job_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> KdJob:
    """The job the flags describe; with `environ`, unset flags fall back on the guide's environment variables."""
    job = from_args(KdJob, args, environ)
    if not job.model:
        raise DistilleryError("no model: pass --model-path" + (" or set MODEL_PATH" if environ is not None else ""))
    if not job.dataset:
        raise DistilleryError("no dataset: pass --dataset" + (" or set DATASET_PATH" if environ is not None else ""))
    if job.chunk_rows < 1:
        raise DistilleryError(f"--chunk-rows must be at least 1, not {job.chunk_rows}")
    return job


def read_paths(settings: dict, copies: LocalCopies | None = None, files: list[dict] = ()) -> list[str | None]:
    """What a KD job reads (its model unless it is served, its dataset, their local copies): no output may be
    or lie inside one of them."""
    model = settings["model"] if settings["engine"]["kind"] != "openai" else None
    copies = copies or LocalCopies()
    return [model, settings["dataset"], copies.model, copies.dataset, *(file["path"] for file in files)]


def _run_manifest(args: argparse.Namespace) -> int:
    from ..kd.manifest import write_manifest

    job = job_from_args(args)
    check_apart_from_inputs(args.output, read_paths(job_to_dict(job), _copies(args)))
    manifest = write_manifest(job, job_to_dict(job), args.output, _copies(args))
    print(
        f"✓ {args.output}: {len(manifest['chunks'])} chunks over {len(manifest['files'])} files, "
        f"{manifest['rows']} rows"
    )
    return 0


def _run_teacher(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_text

    job = job_from_args(args)
    check_apart_from_inputs(args.output, read_paths(job_to_dict(job), _copies(args)))
    model = Path(_copies(args).job_reading_copies(job).engine.model_path)
    if job.engine.kind != "openai" and not (model / "config.json").is_file():
        where = model if model.exists() else model.parent
        raise DistilleryError(f"no HF model folder {model.name!r} here (config.json missing)", where)
    record = teacher_record(job)
    atomic_write_text(args.output, json.dumps(record, indent=1) + "\n")
    print(f"✓ {args.output}: teacher {job.model}, settings {record['settings_hash']}")
    return 0


def _run_chunk(args: argparse.Namespace) -> int:
    if os.environ.get("OMP_NUM_THREADS") == "0":
        # Snakemake passes a served chunk job's `threads: 0` on as OMP_NUM_THREADS=0, which OpenMP rejects
        # with a warning in the log when torch loads; the job only tokenizes, one thread is plenty.
        os.environ["OMP_NUM_THREADS"] = "1"
    from ..kd.chunk import ChunkRunner, chunk_output
    from ..kd.manifest import load_manifest
    from ..kd.records import chunk_of

    manifest = load_manifest(args.manifest)
    output = chunk_of(args.output) if args.output else chunk_output(manifest, manifest.chunk(args.chunk))
    check_apart_from_inputs(output, read_paths(manifest.settings, _copies(args), manifest.data["files"]))
    engine = _engine_of_chunk(args, manifest) if args.engine_address else None
    runner = ChunkRunner(manifest, engine, copies=_copies(args), progress_seconds=args.progress_seconds)
    try:
        stats = runner.run(manifest.chunk(args.chunk), output)
    finally:
        runner.close()
    print(
        f"✓ chunk {stats['chunk']}: {stats['generated_rows']} rows generated, {len(stats['skipped'])} skipped, "
        f"{stats['completion_tokens']} tokens in {stats['generate_seconds']} s"
    )
    return 0


def _engine_of_chunk(args: argparse.Namespace, manifest):
    """The chunk's slot of the engine job at --engine-address, named in the log (which engine, which GPUs)."""
    from ..kd.engine_job import connect_chunk

    chunk = manifest.chunk(args.chunk)
    engine = connect_chunk(args.engine_address, manifest, chunk.name, args.engine_start_timeout)
    where = f"SLURM job {os.environ['SLURM_JOB_ID']}, " if os.environ.get("SLURM_JOB_ID") else ""
    print(f"chunk {chunk.name}: engine {engine.engine_id} (slot {engine.slot}, {where}GPUs {engine.gpus or 'none'}), "
          f"ready after {engine.wait_seconds:.1f} s", flush=True)  # fmt: skip
    return engine


def _run_engine(args: argparse.Namespace) -> int:
    from ..kd.engine_job import run_engine_job
    from ..kd.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    return run_engine_job(manifest, args.address, args.slots, args.gpus_per_slot, _copies(args))


def _run_dataset(args: argparse.Namespace) -> int:
    from ..kd.dataset import build_dataset
    from ..kd.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    for output in (args.output, args.summary):
        check_apart_from_inputs(output, read_paths(manifest.settings, files=manifest.data["files"]))
    output_format = args.format or manifest.settings["output_format"]
    summary = build_dataset(manifest, args.output, args.summary, output_format)
    print(
        f"✓ {args.output}: {summary['samples']} samples from {summary['generated_rows']} rows "
        f"({summary['skipped_rows']} skipped), {summary['completion_tokens']} output tokens"
    )
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from ..kd.manifest import load_manifest
    from ..kd.status import chunk_logs, format_status, job_status

    target = Path(args.job)
    manifest = load_manifest(target / "manifest.json" if target.is_dir() else target)
    logs = args.logs or chunk_logs(manifest.job)
    status = job_status(manifest, logs if logs.is_dir() else None, window=args.window, stale_after=args.stale_after)
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from ..kd.standalone import run_standalone_job

    output_dir = args.output_dir or os.environ.get("GCS_BUCKET_PATH")
    if not output_dir:
        raise DistilleryError("no output folder: pass --output-dir or set GCS_BUCKET_PATH")
    if not 0 <= args.worker_index < args.num_workers:
        raise DistilleryError(f"--worker-index must be in [0, {args.num_workers}), not {args.worker_index}")
    job = job_from_args(args, environ=os.environ)
    check_apart_from_inputs(Path(output_dir) / job.name, read_paths(job_to_dict(job)))
    run_standalone_job(job, Path(output_dir), args.worker_index, args.num_workers, make_dataset=not args.no_dataset)
    return 0


_LOCAL_MODEL_HELP = "read the model from this copy (e.g. a storage plugin's); records keep the job's model path"
_LOCAL_DATASET_HELP = (
    "read the dataset from this copy of what --dataset names (e.g. a storage plugin's); records keep the job's paths"
)


def _copies(args: argparse.Namespace) -> LocalCopies:
    return LocalCopies(model=getattr(args, "local_model", None), dataset=getattr(args, "local_dataset", None))


def _add_manifest(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Read only the parquet footers of the dataset and write the chunk list (row ranges of "
        "--chunk-rows per file) with the job's settings. Fails on a missing column or unreadable file."
    )
    parser.add_argument("--output", required=True, type=Path, help="manifest.json to write")
    parser.add_argument("--local-dataset", metavar="PATH", help=_LOCAL_DATASET_HELP)
    add_job_flags(parser)
    parser.set_defaults(handler=_run_manifest)


def _add_teacher(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=Path, help="teacher.json to write")
    parser.add_argument("--local-model", metavar="PATH", help=_LOCAL_MODEL_HELP)
    add_job_flags(parser)
    parser.set_defaults(handler=_run_teacher)


def _add_chunk(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Generate one chunk of a KD job. Finished rows are saved as they come; a restarted job continues "
        "where the killed one stopped. The chunk file appears only when complete."
    )
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--chunk", required=True, help="PART/START-STOP, as in the chunk's path")
    parser.add_argument(
        "--output",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="where the chunk's files go: its .jsonl, its .stats.json (the .jsonl beside it) or both, as the rule's "
        "outputs are (default: chunks/PART/START-STOP.jsonl beside the manifest)",
    )
    parser.add_argument("--local-model", metavar="PATH", help=_LOCAL_MODEL_HELP)
    parser.add_argument("--local-dataset", metavar="PATH", help=_LOCAL_DATASET_HELP)
    parser.add_argument(
        "--engine-address", type=lambda text: Path(text) if text else None, metavar="FILE",
        help="stream the rows to the engine job whose address file this is (kd-engine); empty: an engine of its own",
    )  # fmt: skip
    parser.add_argument(
        "--engine-start-timeout", type=float, default=3600.0, metavar="SECONDS",
        help="how long to wait for that engine to be ready (it fails at once if it dies)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-seconds",
        type=float,
        default=PROGRESS_SECONDS,
        metavar="S",
        help="write a progress line to stderr (the rule's log) every S seconds, when it is not a terminal; 0: none",
    )
    parser.set_defaults(handler=_run_chunk)


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a KD job's engine to its chunk jobs: one engine per slot, each on its own GPUs, until stopped "
        "(SIGTERM). Writes --address at once; chunk jobs (kd-chunk --engine-address) wait until their slot is ready."
    )
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--address", required=True, type=Path, help="address file to write (a Snakemake service)")
    parser.add_argument("--slots", type=int, default=1, help="engines side by side; chunk i goes to slot i mod N")
    parser.add_argument("--gpus-per-slot", type=int, default=0, help="GPUs of each engine (tensor x pipeline size)")
    parser.add_argument("--local-model", metavar="PATH", help=_LOCAL_MODEL_HELP)
    parser.set_defaults(handler=_run_engine)


def _add_dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--summary", required=True, type=Path)
    parser.add_argument("--format", choices=OUTPUT_FORMATS, help="default: the job's output_format")
    parser.set_defaults(handler=_run_dataset)


def _add_status(parser: argparse.ArgumentParser) -> None:
    from ..kd.status import CHUNK_LOGS, STALE_SECONDS, WINDOW_SECONDS

    parser.description = (
        "Rows done of all, chunks done, running, failed and pending, rows/s and output tokens/s over the last "
        "minutes and an ETA, from the job folder and its chunk logs (see workflow_scripts/kd/status.py)."
    )
    parser.add_argument("job", help="the job folder (results/kd/JOB) or its manifest.json")
    parser.add_argument(
        "--logs", type=Path, help=f"the folder of the job's chunk logs (default: {CHUNK_LOGS}/JOB, as the workflow's)"
    )
    parser.add_argument(
        "--window", type=float, default=WINDOW_SECONDS, metavar="S", help="rates over the last S seconds"
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=STALE_SECONDS,
        metavar="S",
        help="an unfinished chunk whose log and side file are older than S seconds has stopped (failed)",
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_run_status)


def _add_generate(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Sequence-KD generation as one process: manifest, this worker's chunks with one engine, and "
        "the dataset once every chunk is done. Flags default to the MaxText guide's environment variables."
    )
    parser.add_argument("--output-dir", help="where the job folder goes ($GCS_BUCKET_PATH)")
    parser.add_argument("--worker-index", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--no-dataset", action="store_true", help="leave the merge to kd-dataset")
    add_job_flags(parser)
    parser.set_defaults(handler=_run_generate)


PARSERS = {
    "kd-manifest": _add_manifest,
    "kd-teacher": _add_teacher,
    "kd-chunk": _add_chunk,
    "kd-engine": _add_engine,
    "kd-dataset": _add_dataset,
    "kd-status": _add_status,
    "generate": _add_generate,
}
