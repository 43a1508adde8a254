"""KD generation throughput: the workflow's kd job on vLLM against a bare `LLM.generate` over the same prompts.

A llama3.1-1b-shaped model (2048 hidden, 16 layers, 32/8 heads, 128256 vocabulary, random bfloat16 weights, a
word-level tokenizer covering the whole vocabulary so every sampled id decodes) completes a prefix of each of
N parquet rows. Both sides use the same prompts (the same prefix cut), the same sampling settings and per-row
seeds (from the rows' id column, as the workflow derives them), and the same engine arguments, tensor- and
pipeline-parallel sizes included; each runs in its own process and pays its own engine start.

- bare: `vllm.LLM(...)` + one `LLM.generate` over all prompts (the anchor);
- workflow: `snakemake` on a config with one kd job (kd_teacher, kd_manifest, kd_engine serving kd_chunk,
  kd_dataset), the parallel sizes given only as the job's config keys, or `distillery generate` (`--runner
  generate`: the same chunk code with an engine of its own). Where the package is not installed (a GPU machine
  with only vLLM and Snakemake), a `distillery` command is put on the jobs' PATH.

Reported: output tokens per second end to end (engine start included) for each, the ratio (goal >= 95%), and
whether the workflow's dataset holds the bare run's rows, each once.

`--dry-run` runs the same steps on the CPU: a tiny model, the transformers engine on both sides (the bare side
through distillery's engine, since vLLM needs a GPU), a few rows.

    python benchmarks/kd_throughput.py --out DIR [--prompts 20000 --max-tokens 128 --chunk-rows 20000]
    python benchmarks/kd_throughput.py --out DIR --tensor-parallel-size 2      (2 GPUs)
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

LLAMA_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=4096,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=1024,
)
# (full run, --dry-run) for each workload size left unset on the command line.
SIZES = {
    "prompts": (20000, 12),
    "words": (160, 24),
    "max_prompt_tokens": (128, 12),
    "max_tokens": (128, 4),
    "gen_batch_size": (256, 8),
    "max_model_len": (1024, 128),
}
JOB = "bench"


def word_level_tokenizer(vocab_size: int):
    """Whitespace-separated words, one id each, for every id of the model: random weights sample any id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from workflow_scripts.architectures.tiny import SPECIAL_TOKENS

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{index}": index for index in range(len(SPECIAL_TOKENS), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS[0]))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[2],
        pad_token=SPECIAL_TOKENS[0],
    )


def model_sizes(args) -> dict:
    return TINY if args.dry_run else LLAMA_1B


def build_teacher(folder: Path, sizes: dict) -> None:
    from workflow_scripts.architectures.tiny import TinyModelSpec, build_tiny_model

    if (folder / "config.json").exists():
        return
    build_tiny_model(folder, TinyModelSpec(architecture="llama", **sizes), "safetensors", seed=5, dtype="bfloat16")
    word_level_tokenizer(sizes["vocab_size"]).save_pretrained(folder)


def row_id(index: int) -> str:
    return f"row-{index}"


def build_dataset(path: Path, rows: int, words: int, vocab_size: int, seed: int = 0) -> None:
    """`rows` texts of random words, with an id column: the workflow and the bare run seed each row from it."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    texts = [" ".join(f"w{rng.randrange(3, vocab_size)}" for _ in range(words)) for _ in range(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": [row_id(index) for index in range(rows)], "text": texts})
    pq.write_table(table, path, row_group_size=4096)


def engine_arguments(args) -> dict:
    return dict(
        dtype="bfloat16",
        max_num_seqs=args.gen_batch_size,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=True,
        enforce_eager=args.enforce_eager,
        seed=args.seed,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
    )


def bare_prompts(args) -> tuple[list[list[int]], list[int], range]:
    """Token ids and per-row seeds of the rows `args.rows` names ([start, stop), default all)."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from workflow_scripts.engines.base import derive_seed

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    texts = pq.read_table(args.dataset).column("text").to_pylist()
    rows = range(*(getattr(args, "rows", None) or (0, len(texts))))
    prompts = [tokenizer(texts[i], add_special_tokens=True)["input_ids"][: args.max_prompt_tokens] for i in rows]
    return prompts, [derive_seed(args.seed, row_id(index)) for index in rows], rows


def bare_generate_vllm(args, prompts: list[list[int]], seeds: list[int]) -> tuple[float, list[int]]:
    from vllm import LLM, SamplingParams

    params = [SamplingParams(n=1, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=seed) for seed in seeds]
    llm = LLM(model=args.model, **engine_arguments(args))
    ready = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    return ready, [len(output.outputs[0].token_ids) for output in outputs]


def bare_generate_transformers(args, prompts: list[list[int]], seeds: list[int]) -> tuple[float, list[int]]:
    """The CPU stand-in for `LLM.generate` (--dry-run): distillery's transformers engine, same prompts and seeds."""
    from workflow_scripts.engines import EngineSettings, open_engine
    from workflow_scripts.engines.base import GenerationRequest, SamplingSettings

    engine = open_engine(EngineSettings(kind="transformers", model_path=str(args.model), dtype="float32",
                                        max_num_seqs=args.gen_batch_size, seed=args.seed))  # fmt: skip
    ready = time.perf_counter()
    requests = [GenerationRequest(str(i), ids, seed) for i, (ids, seed) in enumerate(zip(prompts, seeds, strict=True))]
    lengths = [0] * len(requests)
    sampling = SamplingSettings(n=1, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens)
    for result in engine.generate(requests, sampling):
        lengths[int(result.request_id)] = len(result.completions[0].token_ids)
    return ready, lengths


def bare_run(args_json: str) -> dict:
    """The anchor, in its own process: the engine and one generate over all prompts, with per-row seeds."""
    args = argparse.Namespace(**json.loads(args_json))
    started = time.perf_counter()
    prompts, seeds, rows = bare_prompts(args)
    generate = bare_generate_transformers if args.dry_run else bare_generate_vllm
    ready, lengths = generate(args, prompts, seeds)
    done = time.perf_counter()
    return {
        "engine": "transformers (dry run)" if args.dry_run else "vllm LLM.generate",
        "engine_start_seconds": ready - started,
        "generate_seconds": done - ready,
        "wall_seconds": done - started,
        "output_tokens": sum(lengths),
        "rows": len(prompts),
        "first_row": rows.start,
        "completion_tokens_by_row": lengths,
    }


def run_bare(args, settings: dict, env: dict | None = None) -> subprocess.Popen:
    """Start the anchor as this script's own __main__ in a fresh interpreter (vLLM spawns its engine process)."""
    return subprocess.Popen([sys.executable, __file__, "--bare-run", json.dumps(settings)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def bare_result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"bare run failed:\n{stdout[-3000:]}\n{stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def kd_job_config(args) -> dict:
    """The workflow's kd job: the parallel sizes are config keys only (the chunk job's GPUs follow from them)."""
    engine = {
        "kind": "transformers" if args.dry_run else "vllm",
        "dtype": "float32" if args.dry_run else "bfloat16",
        "gen_batch_size": args.gen_batch_size,
        "max_model_len": args.max_model_len,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "enforce_eager": args.enforce_eager,
        "tensor_parallel_size": args.tensor_parallel_size,
        "pipeline_parallel_size": args.pipeline_parallel_size,
    }
    return {
        "model": str(args.model),
        "dataset": {"path": str(args.dataset), "prompt_mode": "prefix", "id_column": "id"},
        "max_prompt_tokens": args.max_prompt_tokens,
        "chunk_rows": args.chunk_rows or args.prompts,
        **({"gpus": 0} if args.dry_run else {}),
        "sampling": {"n": 1, "temperature": 0.8, "top_p": 0.95, "max_tokens": args.max_tokens, "seed": args.seed},
        "engine": engine,
    }


def snakemake_environment(work: Path) -> dict[str, str]:
    """The environment the workflow's jobs need here: the package importable, and a `distillery` command where
    the package is not installed."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if shutil.which("distillery") is None:
        shim = work / "bin" / "distillery"
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m workflow_scripts.cli "$@"\n')
        shim.chmod(0o755)
        env["PATH"] = f"{shim.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def workflow_command(args, work: Path, gpus_available: int) -> tuple[str, list[str], Path]:
    """(runner, command, summary.json) of the kd job: Snakemake on the job's config, or `distillery generate`."""
    if args.runner == "snakemake":
        resources = ["--resources", f"gpu={gpus_available}"] if not args.dry_run else []
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
                   "--configfile", str(work / "config.yaml"), "--cores", str(os.cpu_count() or 4), *resources,
                   "--profile", str(REPO / "profiles/default")]  # fmt: skip
        return "snakemake", command, work / f"results/kd/{JOB}/summary.json"
    job = kd_job_config(args)
    engine, sampling = job["engine"], job["sampling"]
    command = [sys.executable, "-m", "workflow_scripts.cli", "generate", "--job-name", JOB,
               "--output-dir", str(work / "out"), "--model-path", job["model"], "--dataset", str(args.dataset),
               "--id-column", "id", "--max-prompt-tokens", str(args.max_prompt_tokens),
               "--chunk-rows", str(job["chunk_rows"]), "--engine", engine["kind"], "--dtype", engine["dtype"],
               "--gen-batch-size", str(args.gen_batch_size), "--max-model-len", str(args.max_model_len),
               "--gpu-memory-utilization", str(args.gpu_memory_utilization),
               "--tensor-parallel-size", str(args.tensor_parallel_size),
               "--pipeline-parallel-size", str(args.pipeline_parallel_size),
               "--temperature", "0.8", "--top-p", "0.95", "--max-tokens", str(sampling["max_tokens"]),
               "--seed", str(args.seed)] + (["--enforce-eager"] if args.enforce_eager else [])  # fmt: skip
    return "distillery generate", command, work / f"out/{JOB}/summary.json"


def workflow_run(args, work: Path, gpus_available: int | None = None) -> dict:
    """The kd job through the workflow, in `work` (emptied first); `gpus_available`: Snakemake's `gpu` resource
    (default: one chunk's GPUs, tensor x pipeline size)."""
    import yaml

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump({"models": {}, "kd": {JOB: kd_job_config(args)}}))
    gpus_available = gpus_available or args.tensor_parallel_size * args.pipeline_parallel_size
    runner, command, summary_path = workflow_command(args, work, gpus_available)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=snakemake_environment(work), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{runner} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    summary = json.loads(summary_path.read_text())
    return {
        "runner": runner,
        "command": command,
        "config": kd_job_config(args),
        "wall_seconds": wall,
        "output_tokens": summary["completion_tokens"],
        "rows": summary["generated_rows"],
        "skipped_rows": summary["skipped_rows"],
        "engine_starts": summary.get("engine_starts"),
        "engine_start_seconds": summary["engine_start_seconds"],
        "generate_seconds": summary["generate_seconds"],
        "summary_versions": summary["versions"],
        "dataset": str(summary_path.with_name("dataset.jsonl")),
    }


def compare_rows(dataset: Path, bare: list[dict]) -> dict:
    """Does the workflow's dataset hold exactly the bare runs' rows, each once? And how many completions have the
    bare run's length (the same seed per row; vLLM promises no bit-identical text across batch compositions)?"""
    expected = {
        row_id(part["first_row"] + i): length
        for part in bare
        for i, length in enumerate(part["completion_tokens_by_row"])
    }
    seen: dict[str, int] = {}
    same_length = 0
    with dataset.open() as lines:
        for line in lines:
            record = json.loads(line)
            seen[record["id"]] = seen.get(record["id"], 0) + 1
            same_length += expected.get(record["id"]) == record["completion_tokens"]
    return {
        "rows_expected": len(expected),
        "rows_in_dataset": len(seen),
        "every_row_once": seen.keys() == expected.keys() and all(count == 1 for count in seen.values()),
        "rows_missing": len(expected.keys() - seen.keys()),
        "rows_repeated": sum(count > 1 for count in seen.values()),
        "rows_with_the_bare_completion_length": same_length,
    }


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The workload's flags, shared by kd_data_parallel.py."""
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work", type=Path, help="scratch folder (default: /tmp/SCRIPT[-dry-run])")
    for name, (full, dry) in SIZES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default {full}, {dry} with --dry-run")
    parser.add_argument("--chunk-rows", type=int, help="rows per chunk job (default: all rows in one chunk)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runner", choices=["snakemake", "generate"], default="snakemake",
                        help="the workflow side: snakemake on the job's config, or distillery generate")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: tiny model, transformers, a few rows")


def resolve_workload(args, script: str) -> None:
    """Fill the sizes left unset, the scratch folder, and the model and dataset paths in it."""
    for name, (full, dry) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, dry if args.dry_run else full)
    args.work = args.work or Path(f"/tmp/{script}{'-dry-run' if args.dry_run else ''}")
    args.work.mkdir(parents=True, exist_ok=True)
    args.model = args.work / ("tiny-llama-random" if args.dry_run else "llama3.1-1b-random")
    args.dataset = args.work / "data" / "prompts.parquet"


def prepare_inputs(args) -> None:
    started = time.perf_counter()
    sizes = model_sizes(args)
    build_teacher(args.model, sizes)
    build_dataset(args.dataset, args.prompts, args.words, sizes["vocab_size"])
    print(f"inputs ready in {time.perf_counter() - started:.1f} s", flush=True)


def settings_of(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "bare_run"}


def print_rows(rows: dict[str, dict]) -> None:
    print(f"\n{'':36} {'rows':>7} {'out tokens':>11} {'engine s':>9} {'wall s':>8} {'tok/s e2e':>10}")
    for name, r in rows.items():
        r["tokens_per_second_end_to_end"] = r["output_tokens"] / r["wall_seconds"]
        print(f"{name:36} {r['rows']:>7} {r['output_tokens']:>11} {r['engine_start_seconds']:>9.1f} "
              f"{r['wall_seconds']:>8.1f} {r['tokens_per_second_end_to_end']:>10.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--bare-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_run:
        print("RESULT " + json.dumps(bare_run(args.bare_run)))
        return

    from harness import GpuSampler, new_record, result_path, write_result

    resolve_workload(args, "kd_throughput")
    prepare_inputs(args)
    settings = settings_of(args)
    parallel = f"tp{args.tensor_parallel_size}_pp{args.pipeline_parallel_size}"
    path = result_path(args.out, f"kd_throughput-{parallel}{'-dry-run' if args.dry_run else ''}")
    record = new_record("kd_throughput", settings=settings)
    with GpuSampler() as gpus:
        record["bare"] = bare_result(run_bare(args, settings))
    record["bare"]["gpus"] = gpus.summary()
    write_result(path, record)
    with GpuSampler() as gpus:
        record["workflow"] = workflow_run(args, args.work / "workflow")
    record["workflow"]["gpus"] = gpus.summary()
    record["rows"] = compare_rows(Path(record["workflow"]["dataset"]), [record["bare"]])
    del record["bare"]["completion_tokens_by_row"]  # compared above; 20,000 numbers add nothing to the record
    print_rows({f"bare ({record['bare']['engine']})": record["bare"],
                f"workflow ({record['workflow']['runner']})": record["workflow"]})  # fmt: skip
    ratio = record["workflow"]["tokens_per_second_end_to_end"] / record["bare"]["tokens_per_second_end_to_end"]
    record["ratio"] = ratio
    print(f"workflow / bare, end to end: {ratio:.1%} (goal >= 95%); rows: {record['rows']}")
    write_result(path, record)


if __name__ == "__main__":
    main()
