"""The KD commands of the CLI: kd-manifest, kd-chunk, kd-dataset, kd-status and the standalone `generate`.

The job flags default to the MaxText guide's environment variables (MODEL_PATH, DATASET_PATH, ...), so its
`run_sequence_kd.sh` settings carry over; the workflow's rules pass the same flags from the config.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..engines.base import ENGINE_KINDS, EngineSettings, SamplingSettings, add_request_flags, request_settings
from ..errors import DistilleryError
from ..output_guard import check_apart_from_inputs
from .local_copies import LocalCopies
from .settings import GUIDE_ENVIRONMENT, OUTPUT_FORMATS, PROMPT_MODES, GuideVariable, KdJob, PromptSettings, job_to_dict

_KIND_WORDS = {int: "a whole number", float: "a number"}


def fill_from_environment(args: argparse.Namespace) -> None:
    """Fill the flags the user did not pass from the guide's environment variables (or their defaults).

    Read here, when a command that has these flags runs, not when the parser is built: a bad value then fails only
    the commands that read it, as one line.
    """
    for variable in GUIDE_ENVIRONMENT:
        if getattr(args, variable.dest, "absent") is not None:
            continue  # the command has no such flag, or the flag was given
        value = os.environ.get(variable.name, "")
        setattr(args, variable.dest, _parse_variable(variable, value) if value else variable.default)


def _parse_variable(variable: GuideVariable, value: str):
    try:
        return variable.kind(value)
    except ValueError:
        flag = "--" + variable.dest.replace("_", "-")
        raise DistilleryError(
            f"environment variable {variable.name}={value!r} is not {_KIND_WORDS[variable.kind]}",
            hint=f"set it to one (or unset it), or pass {flag}",
        ) from None


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """The settings of a KD job, named as in the MaxText guide's script and its environment variables."""
    data = parser.add_argument_group("data")
    data.add_argument("--job-name", default="kd", help="name of the job (default: kd)")
    data.add_argument("--dataset", default=None, help="parquet file, folder, glob or URL ($DATASET_PATH)")
    data.add_argument("--prompt-mode", default="prefix", choices=PROMPT_MODES)
    data.add_argument("--text-column", default="text")
    data.add_argument("--messages-column", default="messages")
    data.add_argument("--id-column", default=None, help="column with row ids (default: file and row index)")
    data.add_argument("--max-prompt-tokens", type=int, default=128, help="prefix length (prefix mode) or limit")
    data.add_argument("--chunk-rows", type=int, default=1000)
    data.add_argument("--shuffle-chunks", action="store_true", help="seeded chunk order, for several hosts")
    data.add_argument("--output-format", default="jsonl", choices=OUTPUT_FORMATS)

    model = parser.add_argument_group("model and engine")
    model.add_argument("--model-path", default=None, help="HF model folder ($MODEL_PATH)")
    model.add_argument("--tokenizer-path", default=None, help="default: the model's ($TOKENIZER_PATH)")
    model.add_argument("--engine", default="auto", choices=ENGINE_KINDS)
    model.add_argument("--tensor-parallel-size", type=int, default=None, help="(1; $TENSOR_PARALLEL_SIZE)")
    model.add_argument("--pipeline-parallel-size", type=int, default=1)
    model.add_argument("--dtype", default="auto")
    model.add_argument("--max-model-len", type=int, default=None)
    model.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    model.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false")
    model.add_argument("--gen-batch-size", type=int, default=None, help="max_num_seqs (256; $GEN_BATCH_SIZE)")
    model.add_argument("--enforce-eager", action="store_true")
    model.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own code (auto_map)")
    model.add_argument("--base-url", default=None, help="OpenAI-compatible server (engine openai)")
    model.add_argument("--served-model-name", default=None)
    add_request_flags(model)

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("-n", "--num-samples", type=int, default=1, help="completions per row")
    sampling.add_argument("--temperature", type=float, default=None, help="(0.8; $TEMPERATURE)")
    sampling.add_argument("--top-p", type=float, default=None, help="(0.95; $TOP_P)")
    sampling.add_argument("--top-k", type=int, default=-1)
    sampling.add_argument("--max-tokens", type=int, default=256, help="completion length cap")
    sampling.add_argument(
        "--max-target-length", type=int, default=None, help="prompt + completion cap ($MAX_TARGET_LENGTH)"
    )
    sampling.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--return-token-ids", action="store_true")


def job_from_args(args: argparse.Namespace) -> KdJob:
    fill_from_environment(args)
    if not args.model_path:
        raise DistilleryError("no model: pass --model-path or set MODEL_PATH")
    if not args.dataset:
        raise DistilleryError("no dataset: pass --dataset or set DATASET_PATH")
    if args.chunk_rows < 1:
        raise DistilleryError(f"--chunk-rows must be at least 1, not {args.chunk_rows}")
    return KdJob(
        name=args.job_name,
        model=args.model_path,
        dataset=args.dataset,
        prompt=PromptSettings(
            mode=args.prompt_mode,
            text_column=args.text_column,
            messages_column=args.messages_column,
            id_column=args.id_column,
            max_prompt_tokens=args.max_prompt_tokens,
        ),
        sampling=SamplingSettings(
            n=args.num_samples,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_tokens=args.max_tokens,
            stop=tuple(args.stop),
            return_token_ids=args.return_token_ids,
        ),
        engine=EngineSettings(
            kind=args.engine,
            model_path=args.model_path,
            tokenizer_path=args.tokenizer_path,
            dtype=args.dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            pipeline_parallel_size=args.pipeline_parallel_size,
            max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization,
            enable_prefix_caching=args.prefix_caching,
            max_num_seqs=args.gen_batch_size,
            enforce_eager=args.enforce_eager,
            trust_remote_code=args.trust_remote_code,
            seed=args.seed,
            base_url=args.base_url,
            served_model_name=args.served_model_name,
            **request_settings(args),
        ),
        seed=args.seed,
        chunk_rows=args.chunk_rows,
        shuffle_chunks=args.shuffle_chunks,
        max_target_length=args.max_target_length,
        output_format=args.output_format,
    )


def read_paths(settings: dict, copies: LocalCopies | None = None, files: list[dict] = ()) -> list[str | None]:
    """What a KD job reads (its model unless it is served, its dataset, their local copies): no output may be
    or lie inside one of them."""
    model = settings["model"] if settings["engine"]["kind"] != "openai" else None
    copies = copies or LocalCopies()
    return [model, settings["dataset"], copies.model, copies.dataset, *(file["path"] for file in files)]


def _run_manifest(args: argparse.Namespace) -> int:
    from .manifest import write_manifest

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
    record = {"job": job.name, "model": job.model, "settings_hash": job.settings_hash(), "settings": job_to_dict(job)}
    atomic_write_text(args.output, json.dumps(record, indent=1) + "\n")
    print(f"✓ {args.output}: teacher {job.model}, settings {record['settings_hash']}")
    return 0


def _run_chunk(args: argparse.Namespace) -> int:
    from .chunk import ChunkRunner, chunk_output
    from .manifest import load_manifest

    manifest = load_manifest(args.manifest)
    output = args.output or chunk_output(manifest, manifest.chunk(args.chunk))
    check_apart_from_inputs(output, read_paths(manifest.settings, _copies(args), manifest.data["files"]))
    runner = ChunkRunner(manifest, copies=_copies(args))
    try:
        stats = runner.run(manifest.chunk(args.chunk), args.output)
    finally:
        runner.close()
    print(
        f"✓ chunk {stats['chunk']}: {stats['generated_rows']} rows generated, {len(stats['skipped'])} skipped, "
        f"{stats['completion_tokens']} tokens in {stats['generate_seconds']} s"
    )
    return 0


def _run_dataset(args: argparse.Namespace) -> int:
    from .dataset import build_dataset
    from .manifest import load_manifest

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
    from .manifest import load_manifest
    from .status import format_status, job_status

    target = Path(args.job)
    manifest = load_manifest(target / "manifest.json" if target.is_dir() else target)
    status = job_status(manifest)
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    """The standalone job: manifest (kept if its settings match), this worker's share of the chunks, dataset."""
    from .chunk import ChunkRunner, chunk_output
    from .dataset import build_dataset
    from .manifest import load_manifest, write_manifest
    from .status import job_status

    fill_from_environment(args)
    if not args.output_dir:
        raise DistilleryError("no output folder: pass --output-dir or set GCS_BUCKET_PATH")
    if not 0 <= args.worker_index < args.num_workers:
        raise DistilleryError(f"--worker-index must be in [0, {args.num_workers}), not {args.worker_index}")
    job = job_from_args(args)
    folder = Path(args.output_dir) / job.name
    check_apart_from_inputs(folder, read_paths(job_to_dict(job)))
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        manifest = load_manifest(manifest_path)
        if manifest.settings_hash != job.settings_hash():
            raise DistilleryError(
                "was made with other settings than these",
                manifest_path,
                "use another --job-name, or remove the job folder to start over",
            )
    else:
        write_manifest(job, job_to_dict(job), manifest_path)
        manifest = load_manifest(manifest_path)
    mine = [c for i, c in enumerate(manifest.chunks) if i % args.num_workers == args.worker_index]
    todo = [c for c in mine if not chunk_output(manifest, c).exists()]
    print(f"worker {args.worker_index}/{args.num_workers}: {len(todo)} of {len(mine)} chunks to generate")
    runner = ChunkRunner(manifest)
    try:
        for chunk in todo:
            stats = runner.run(chunk)
            print(f"✓ chunk {chunk.name}: {stats['generated_rows']} rows, {stats['completion_tokens']} tokens")
    finally:
        runner.close()
    if job_status(manifest)["remaining_chunks"] == 0 and not args.no_dataset:
        extension = "parquet" if job.output_format == "parquet" else "jsonl"
        summary = build_dataset(manifest, folder / f"dataset.{extension}", folder / "summary.json", job.output_format)
        print(f"✓ {folder / f'dataset.{extension}'}: {summary['samples']} samples")
    return 0


_LOCAL_MODEL_HELP = "read the model from this copy (e.g. a storage plugin's); records keep the job's model path"
_LOCAL_DATASET_HELP = (
    "read the dataset from this copy of what --dataset names (e.g. a storage plugin's); records keep the job's paths"
)


def _copies(args: argparse.Namespace) -> LocalCopies:
    return LocalCopies(model=getattr(args, "local_model", None), dataset=getattr(args, "local_dataset", None))


def add_kd_commands(commands) -> None:
    manifest = commands.add_parser(
        "kd-manifest",
        help="list a KD job's chunks from parquet footers",
        description="Read only the parquet footers of the dataset and write the chunk list (row ranges of "
        "--chunk-rows per file) with the job's settings. Fails on a missing column or unreadable file.",
    )
    manifest.add_argument("--output", required=True, type=Path, help="manifest.json to write")
    manifest.add_argument("--local-dataset", metavar="PATH", help=_LOCAL_DATASET_HELP)
    add_job_flags(manifest)
    manifest.set_defaults(handler=_run_manifest)

    teacher = commands.add_parser(
        "kd-teacher",
        help="record a KD job's teacher and generation settings (chunks are redone when they change)",
    )
    teacher.add_argument("--output", required=True, type=Path, help="teacher.json to write")
    teacher.add_argument("--local-model", metavar="PATH", help=_LOCAL_MODEL_HELP)
    add_job_flags(teacher)
    teacher.set_defaults(handler=_run_teacher)

    chunk = commands.add_parser(
        "kd-chunk",
        help="generate completions for one chunk, resumably",
        description="Generate one chunk of a KD job. Finished rows are saved as they come; a restarted job continues "
        "where the killed one stopped. The chunk file appears only when complete.",
    )
    chunk.add_argument("--manifest", required=True, type=Path)
    chunk.add_argument("--chunk", required=True, help="PART/START-STOP, as in the chunk's path")
    chunk.add_argument("--output", type=Path, help="default: chunks/PART/START-STOP.jsonl beside the manifest")
    chunk.add_argument("--local-model", metavar="PATH", help=_LOCAL_MODEL_HELP)
    chunk.add_argument("--local-dataset", metavar="PATH", help=_LOCAL_DATASET_HELP)
    chunk.set_defaults(handler=_run_chunk)

    dataset = commands.add_parser("kd-dataset", help="merge a KD job's chunks into the dataset and summary.json")
    dataset.add_argument("--manifest", required=True, type=Path)
    dataset.add_argument("--output", required=True, type=Path)
    dataset.add_argument("--summary", required=True, type=Path)
    dataset.add_argument("--format", choices=OUTPUT_FORMATS, help="default: the job's output_format")
    dataset.set_defaults(handler=_run_dataset)

    status = commands.add_parser("kd-status", help="done and remaining chunks and rows of a KD job")
    status.add_argument("job", help="the job folder (results/kd/JOB) or its manifest.json")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_run_status)

    generate = commands.add_parser(
        "generate",
        help="run a whole KD job without Snakemake (several hosts: --worker-index/--num-workers)",
        description="Sequence-KD generation as one process: manifest, this worker's chunks with one engine, and "
        "the dataset once every chunk is done. Flags default to the MaxText guide's environment variables.",
    )
    generate.add_argument("--output-dir", default=None, help="($GCS_BUCKET_PATH)")
    generate.add_argument("--worker-index", type=int, default=0)
    generate.add_argument("--num-workers", type=int, default=1)
    generate.add_argument("--no-dataset", action="store_true", help="leave the merge to kd-dataset")
    add_job_flags(generate)
    generate.set_defaults(handler=_run_generate)
