"""KD at scale on one GPU: 100,000 rows in at least 10 chunks through `snakemake`, against one bare `LLM.generate`.

The workload of `kd_throughput.py` (a llama3.1-1b-shaped random bfloat16 model, a word-level tokenizer covering
its vocabulary, 128-token prefixes, 128 new tokens, per-row seeds), at 100,000 rows:
- bare (the anchor): `vllm.LLM(model)` with vLLM's default engine arguments and one `LLM.generate` over all
  prompts, engine start included;
- workflow: `snakemake` on a config with one KD job of `--chunks` chunks served by one engine job (kd_teacher,
  kd_manifest, kd_engine with its chunk jobs, kd_dataset), end to end, engine start and Snakemake included. The
  engine gets the scheduler limits vLLM chose for the bare run (max_num_seqs, max_num_batched_tokens), so both
  sides run the same engine configuration.
Goal: the workflow at >= 95% of the bare output tokens/s, end to end.

The sides can run in separate calls (a device command is limited to 10 minutes): `--side bare` saves its result
in the work folder and under --out; `--side workflow` reads it and saves the comparison. `--side both` does both.

    python benchmarks/kd_scale.py --side both --out DIR [--rows 100000 --chunks 10 --max-tokens 128]
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
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from kd_throughput import build_dataset, build_teacher, prompt_token_ids, snakemake_environment  # noqa: E402


def bare_run(args_json: str) -> dict:
    """The anchor, in its own process: LLM(model) with vLLM's defaults, one generate, per-row seeds."""
    from vllm import LLM, SamplingParams

    from workflow_scripts.engines.base import derive_seed

    args = argparse.Namespace(**json.loads(args_json))
    started = time.perf_counter()
    prompts = [{"prompt_token_ids": ids} for ids in prompt_token_ids(args.model, args.dataset, args.max_prompt_tokens)]
    stem = Path(args.dataset).stem
    params = [
        SamplingParams(
            n=1, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=derive_seed(args.seed, f"{stem}:{i}")
        )
        for i in range(len(prompts))
    ]
    llm = LLM(model=args.model)
    ready = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    done = time.perf_counter()
    return {
        "engine_start_seconds": ready - started,
        "generate_seconds": done - ready,
        "wall_seconds": done - started,
        "output_tokens": sum(len(output.outputs[0].token_ids) for output in outputs),
        "rows": len(prompts),
        "engine_defaults": resolved_scheduler(llm),
    }


def resolved_scheduler(llm) -> dict:
    """The batch limits vLLM chose by default (they depend on the GPU), for the workflow to use the same."""
    engine = getattr(llm, "llm_engine", None)
    config = getattr(getattr(engine, "vllm_config", None), "scheduler_config", None)
    config = config or getattr(engine, "scheduler_config", None)
    cache = getattr(getattr(engine, "vllm_config", None), "cache_config", None)
    return {
        "max_num_seqs": getattr(config, "max_num_seqs", None),
        "max_num_batched_tokens": getattr(config, "max_num_batched_tokens", None),
        "gpu_memory_utilization": getattr(cache, "gpu_memory_utilization", None),
        "enable_prefix_caching": getattr(cache, "enable_prefix_caching", None),
    }


def workflow_config(args, defaults: dict) -> dict:
    engine = {"kind": "vllm"}
    if defaults.get("max_num_seqs"):
        engine["gen_batch_size"] = defaults["max_num_seqs"]
    if defaults.get("max_num_batched_tokens"):
        engine["max_num_batched_tokens"] = defaults["max_num_batched_tokens"]
    for key in ("gpu_memory_utilization", "enable_prefix_caching"):
        if defaults.get(key) is not None:
            engine[key] = defaults[key]
    job = {
        "model": str(args.model),
        "dataset": {"path": str(args.dataset), "prompt_mode": "prefix"},
        "max_prompt_tokens": args.max_prompt_tokens,
        "chunk_rows": -(-args.rows // args.chunks),
        "gpus": 1,
        "engine_slots": 1,
        "chunks_per_engine": args.chunks,
        "sampling": {"n": 1, "temperature": 0.8, "top_p": 0.95, "max_tokens": args.max_tokens, "seed": args.seed},
        "engine": engine,
    }
    return {"models": {}, "kd": {"scale": job}}


def workflow_run(args, work: Path, defaults: dict) -> dict:
    import yaml

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = workflow_config(args, defaults)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
               "--configfile", str(work / "config.yaml"), "--cores", str(os.cpu_count() or 4),
               "--resources", "gpu=1", "--profile", str(REPO / "profiles/default")]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=snakemake_environment(work), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    summary = json.loads((work / "results/kd/scale/summary.json").read_text())
    return {
        "runner": "snakemake",
        "command": command,
        "config": config,
        "wall_seconds": wall,
        "output_tokens": summary["completion_tokens"],
        "rows": summary["generated_rows"],
        "skipped_rows": summary["skipped_rows"],
        "chunks": summary["chunks"],
        "engine_starts": summary["engine_starts"],
        "engine_start_seconds": summary["engine_start_seconds"],
        "generate_seconds": summary["generate_seconds"],
        "summary_versions": summary["versions"],
    }


def run_bare(args) -> dict:
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    # vLLM spawns its engine process, so the anchor runs as this script's own __main__ in a fresh interpreter.
    bare = subprocess.run([sys.executable, __file__, "--bare-run", json.dumps(settings)], capture_output=True,
                          text=True)  # fmt: skip
    lines = [line for line in bare.stdout.splitlines() if line.startswith("RESULT ")]
    if bare.returncode != 0 or not lines:
        raise RuntimeError(f"bare run failed:\n{bare.stdout[-3000:]}\n{bare.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def report(bare: dict, workflow: dict) -> float:
    rows = {"bare LLM.generate (vLLM defaults)": bare, "workflow (snakemake, engine job)": workflow}
    print(f"\n{'':36} {'rows':>7} {'out tokens':>11} {'engine s':>9} {'wall s':>8} {'tok/s e2e':>10}")
    for name, r in rows.items():
        r["tokens_per_second_end_to_end"] = r["output_tokens"] / r["wall_seconds"]
        print(f"{name:36} {r['rows']:>7} {r['output_tokens']:>11} {r['engine_start_seconds']:>9.1f} "
              f"{r['wall_seconds']:>8.1f} {r['tokens_per_second_end_to_end']:>10.0f}")  # fmt: skip
    ratio = workflow["tokens_per_second_end_to_end"] / bare["tokens_per_second_end_to_end"]
    print(f"workflow / bare, end to end: {ratio:.1%} (goal >= 95%)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/kd_scale"))
    parser.add_argument("--side", choices=("bare", "workflow", "both"), default="both")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--words", type=int, default=160, help="words per row (the prefix is cut from them)")
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bare-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_run:
        print("RESULT " + json.dumps(bare_run(args.bare_run)))
        return
    if args.chunks < 10:
        parser.error("--chunks must be at least 10 (the benchmark's workload)")

    from harness import new_record, save_result

    args.work.mkdir(parents=True, exist_ok=True)
    args.model = args.work / "llama3.1-1b-random"
    args.dataset = args.work / "data" / "prompts.parquet"
    build_teacher(args.model)
    if not args.dataset.exists() or args.side != "workflow":
        build_dataset(args.dataset, args.rows, args.words)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    bare_file = args.work / "bare.json"
    if args.side in ("bare", "both"):
        bare = run_bare(args)
        bare_file.write_text(json.dumps(bare, indent=1))
        save_result(args.out, "kd_scale-bare", new_record("kd_scale-bare", settings=settings, bare=bare))
    if args.side in ("workflow", "both"):
        if not bare_file.exists():
            raise SystemExit(f"no {bare_file}: run --side bare first (same machine, same --work)")
        bare = json.loads(bare_file.read_text())
        workflow = workflow_run(args, args.work / "workflow", bare.get("engine_defaults") or {})
        ratio = report(bare, workflow)
        record = new_record("kd_scale", settings=settings, bare=bare, workflow=workflow, ratio=ratio)
        save_result(args.out, "kd_scale", record)


if __name__ == "__main__":
    main()
