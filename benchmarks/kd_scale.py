"""KD at scale on one GPU: 100,000 rows in at least 10 chunks through `snakemake`, against one bare `LLM.generate`.

The workload of `kd_throughput.py` (random words, 128-token prefixes, per-row seeds from the id column, a
word-level tokenizer covering the model's vocabulary) at 100,000 rows, on a small random Llama (512 hidden,
4 layers, 8/2 heads, 32,000 vocabulary, bfloat16) and 64 new tokens, so that both sides fit in one device call:
- bare (the anchor): `vllm.LLM(model)` with vLLM's default engine arguments and one `LLM.generate` over all
  prompts, engine start and tokenization included;
- workflow: `snakemake` on a config with one KD job of `--chunks` chunks served by one engine job (kd_teacher,
  kd_manifest, kd_engine with its chunk jobs streaming to it at once, kd_dataset), end to end, engine start and
  Snakemake included. The engine gets the batch limits vLLM chose for the bare run (max_num_seqs,
  max_num_batched_tokens, gpu_memory_utilization), so both sides run the same engine configuration.
Goal: the workflow at >= 95% of the bare output tokens/s, end to end; the dataset holds every bare row once.

The result JSON is written after each side (a run cut short keeps the bare side). `--dry-run` runs the same
steps on the CPU: a tiny model, the transformers engine on both sides (the bare side through distillery's engine),
40 rows in 10 chunks.

    python benchmarks/kd_scale.py --out DIR [--rows 100000 --chunks 10 --max-tokens 64]
    python benchmarks/kd_scale.py --out DIR --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kd_throughput  # noqa: E402  (after the path: a sibling script)

SMALL_LLAMA = dict(
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=32000,
    max_position_embeddings=1024,
)
# (full run, --dry-run) for each workload size left unset on the command line.
SIZES = {
    "rows": (100_000, 40),
    "chunks": (10, 10),
    "words": (160, 24),
    "max_prompt_tokens": (128, 12),
    "max_tokens": (64, 4),
}
MIN_CHUNKS = 10
DRY_RUN_BATCH = 8


def bare_generate_vllm_defaults(args, prompts: list[list[int]], seeds: list[int]) -> tuple[float, list[int], dict]:
    """`LLM(model)` with vLLM's defaults and one generate; also the batch limits vLLM chose (they depend on the GPU)."""
    from vllm import LLM, SamplingParams

    params = [SamplingParams(n=1, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=seed) for seed in seeds]
    llm = LLM(model=args.model)
    ready = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    return ready, [len(output.outputs[0].token_ids) for output in outputs], resolved_defaults(llm)


def resolved_defaults(llm) -> dict:
    """The scheduler and cache settings vLLM settled on, where this vLLM version keeps them."""
    engine = getattr(llm, "llm_engine", None)
    config = getattr(engine, "vllm_config", None)
    scheduler = getattr(config, "scheduler_config", None) or getattr(engine, "scheduler_config", None)
    cache = getattr(config, "cache_config", None)
    return {
        "max_num_seqs": getattr(scheduler, "max_num_seqs", None),
        "max_num_batched_tokens": getattr(scheduler, "max_num_batched_tokens", None),
        "gpu_memory_utilization": getattr(cache, "gpu_memory_utilization", None),
        "enable_prefix_caching": getattr(cache, "enable_prefix_caching", None),
    }


def bare_run(args_json: str) -> dict:
    """The anchor, in its own process: tokenize, start the engine, one generate over all rows."""
    args = argparse.Namespace(**json.loads(args_json))
    started = time.perf_counter()
    # All rows: bare_prompts reads `rows` as a range, where this script's `rows` is their number.
    prompts, seeds, rows = kd_throughput.bare_prompts(argparse.Namespace(**{**vars(args), "rows": None}))
    if args.dry_run:
        ready, lengths = kd_throughput.bare_generate_transformers(args, prompts, seeds)
        defaults = {}
    else:
        ready, lengths, defaults = bare_generate_vllm_defaults(args, prompts, seeds)
    done = time.perf_counter()
    return {
        "engine": "transformers (dry run)" if args.dry_run else "vllm LLM.generate, default engine arguments",
        "engine_start_seconds": ready - started,  # tokenizing the prompts included
        "generate_seconds": done - ready,
        "wall_seconds": done - started,
        "output_tokens": sum(lengths),
        "rows": len(prompts),
        "first_row": rows.start,
        "completion_tokens_by_row": lengths,
        "engine_defaults": defaults,
    }


def run_bare(settings: dict) -> dict:
    """The anchor as this script's own __main__ in a fresh interpreter (vLLM spawns its engine process)."""
    process = subprocess.Popen([sys.executable, __file__, "--bare-run", json.dumps(settings)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    return kd_throughput.bare_result(process)


def engine_config(args, defaults: dict) -> dict:
    """The kd job's engine: vLLM with the limits the bare run's defaults resolved to (transformers on a dry run)."""
    if args.dry_run:
        return {"kind": "transformers", "dtype": "float32", "gen_batch_size": DRY_RUN_BATCH}
    engine = {"kind": "vllm"}
    if defaults.get("max_num_seqs"):
        engine["gen_batch_size"] = defaults["max_num_seqs"]
    for key in ("max_num_batched_tokens", "gpu_memory_utilization", "enable_prefix_caching"):
        if defaults.get(key) is not None:
            engine[key] = defaults[key]
    return engine


def kd_job_config(args, defaults: dict) -> dict:
    """One KD job of `args.chunks` chunks, all served by one engine job of one slot (one engine start)."""
    return {
        "model": str(args.model),
        "dataset": {"path": str(args.dataset), "prompt_mode": "prefix", "id_column": "id"},
        "max_prompt_tokens": args.max_prompt_tokens,
        "chunk_rows": -(-args.rows // args.chunks),
        "gpus": 0 if args.dry_run else 1,
        "engine_server": True,
        "engine_slots": 1,
        "chunks_per_engine": args.chunks,
        "sampling": {"n": 1, "temperature": 0.8, "top_p": 0.95, "max_tokens": args.max_tokens, "seed": args.seed},
        "engine": engine_config(args, defaults),
    }


def workflow_run(args, work: Path, defaults: dict) -> dict:
    """The kd job through `snakemake` in `work` (emptied first); its Snakemake output goes to `work`/snakemake.log."""
    import yaml

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    job = kd_job_config(args, defaults)
    (work / "config.yaml").write_text(yaml.safe_dump({"models": {}, "kd": {kd_throughput.JOB: job}}))
    _, command, summary_path = kd_throughput.workflow_command(args, work, gpus_available=1)
    started = time.perf_counter()
    with (work / "snakemake.log").open("w") as log:
        result = subprocess.run(command, cwd=work, env=kd_throughput.snakemake_environment(work), stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        tail = (work / "snakemake.log").read_text()[-5000:]
        raise RuntimeError(f"snakemake failed (logs under {work}/logs):\n{tail}")
    summary = json.loads(summary_path.read_text())
    return {
        "runner": "snakemake",
        "command": command,
        "config": job,
        "wall_seconds": wall,
        "output_tokens": summary["completion_tokens"],
        "rows": summary["generated_rows"],
        "skipped_rows": summary["skipped_rows"],
        "chunks": summary["chunks"],
        "engine_starts": summary.get("engine_starts"),
        "engine_start_seconds": summary["engine_start_seconds"],
        "generate_seconds": summary["generate_seconds"],
        "summary_versions": summary["versions"],
        "dataset": str(summary_path.with_name("dataset.jsonl")),
    }


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work", type=Path, help="scratch folder (default: /tmp/kd_scale[-dry-run])")
    for name, (full, dry) in SIZES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default {full}, {dry} with --dry-run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: tiny model, transformers, 40 rows")
    parser.add_argument("--bare-result", type=Path,
                        help="a result JSON of an earlier call whose bare side finished: run only the workflow side "
                        "(the bare run's batch limits and row lengths come from it; the record says so)")  # fmt: skip
    parser.add_argument("--bare-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_run:
        return args
    for name, (full, dry) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, dry if args.dry_run else full)
    if args.chunks < MIN_CHUNKS and not args.dry_run:  # a dry run checks the steps, not the workload
        parser.error(f"--chunks must be at least {MIN_CHUNKS} (the benchmark's workload)")
    args.work = args.work or Path(f"/tmp/kd_scale{'-dry-run' if args.dry_run else ''}")
    args.model = args.work / ("tiny-llama-random" if args.dry_run else "small-llama-random")
    args.dataset = args.work / "data" / "prompts.parquet"
    # What kd_throughput's shared code reads: the workflow side runs Snakemake, a dry run's bare side batches 8.
    args.runner, args.prompts, args.gen_batch_size = "snakemake", args.rows, DRY_RUN_BATCH
    return args


def main() -> None:
    args = parse_arguments()
    if args.bare_run:
        print("RESULT " + json.dumps(bare_run(args.bare_run)))
        return

    from harness import new_record, result_path, write_result

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = kd_throughput.TINY if args.dry_run else SMALL_LLAMA
    kd_throughput.build_teacher(args.model, sizes)
    kd_throughput.build_dataset(args.dataset, args.rows, args.words, sizes["vocab_size"])
    print(f"inputs ready in {time.perf_counter() - started:.1f} s: {args.rows} rows, {args.chunks} chunks", flush=True)
    settings = kd_throughput.settings_of(args)
    path = result_path(args.out, f"kd_scale{'-dry-run' if args.dry_run else ''}")
    record = new_record("kd_scale", settings=settings, model_sizes=sizes)

    if args.bare_result:
        # The two sides in separate calls (a device call's time limit): the same settings, the bare side reused.
        earlier = json.loads(args.bare_result.read_text())
        same = {key for key in settings if key not in ("out", "bare_result")}
        if {key: earlier["settings"].get(key) for key in same} != {key: settings[key] for key in same}:
            raise SystemExit(f"{args.bare_result} was run with other settings: {earlier['settings']}")
        record["bare"], record["bare_from"] = earlier["bare"], {"file": str(args.bare_result), "date": earlier["date"]}
    else:
        record["bare"] = run_bare(settings)
    print(f"bare: {record['bare']['wall_seconds']:.1f} s", flush=True)
    write_result(path, record)
    record["workflow"] = workflow_run(args, args.work / "workflow", record["bare"]["engine_defaults"])
    record["rows_check"] = kd_throughput.compare_rows(Path(record["workflow"]["dataset"]), [record["bare"]])
    del record["bare"]["completion_tokens_by_row"]  # compared above; 100,000 numbers add nothing to the record
    kd_throughput.print_rows({f"bare ({record['bare']['engine']})": record["bare"],
                              f"workflow (snakemake, {args.chunks} chunks)": record["workflow"]})  # fmt: skip
    ratio = record["workflow"]["tokens_per_second_end_to_end"] / record["bare"]["tokens_per_second_end_to_end"]
    record["ratio"] = ratio
    print(f"workflow / bare, end to end: {ratio:.1%} (goal >= 95%); engine starts: "
          f"{record['workflow']['engine_starts']}; rows: {record['rows_check']}")  # fmt: skip
    write_result(path, record)


if __name__ == "__main__":
    main()
