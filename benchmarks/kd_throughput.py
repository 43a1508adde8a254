"""KD generation throughput: the workflow's kd job on vLLM against a bare `LLM.generate` over the same prompts.

A llama3.1-1b-shaped model (2048 hidden, 16 layers, 32/8 heads, 128256 vocabulary, random bfloat16 weights, a
word-level tokenizer covering the whole vocabulary so every sampled id decodes) completes a prefix of each of
N parquet rows. Both sides use the same prompts (the same prefix cut), the same sampling settings and per-row
seeds, and the same engine arguments; each runs in its own process and pays its own engine start.

- bare: `vllm.LLM(...)` + one `LLM.generate` over all prompts (the anchor);
- workflow: `snakemake` on a config with one kd job (kd_teacher, kd_manifest, kd_engine serving kd_chunk,
  kd_dataset), or, where Snakemake is not installed, `distillery generate` (the same chunk code with an engine
  of its own), as recorded in the result. A `distillery` command is provided where the package is not installed.

Reported: output tokens per second end to end (engine start included) for each, and the ratio (goal >= 95%).

    python benchmarks/kd_throughput.py --out DIR [--prompts 20000 --max-tokens 128 --chunk-rows 20000]
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


def build_teacher(folder: Path) -> None:
    from workflow_scripts.architectures.tiny import TinyModelSpec, build_tiny_model

    if (folder / "config.json").exists():
        return
    build_tiny_model(folder, TinyModelSpec(architecture="llama", **LLAMA_1B), "safetensors", seed=5, dtype="bfloat16")
    word_level_tokenizer(LLAMA_1B["vocab_size"]).save_pretrained(folder)


def build_dataset(path: Path, rows: int, words: int, seed: int = 0) -> None:
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    texts = [" ".join(f"w{rng.randrange(3, 128256)}" for _ in range(words)) for _ in range(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), path, row_group_size=4096)


def engine_arguments(args) -> dict:
    return dict(
        dtype="bfloat16",
        max_num_seqs=args.gen_batch_size,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=0.85,
        enable_prefix_caching=True,
        enforce_eager=args.enforce_eager,
        seed=args.seed,
    )


def prompt_token_ids(model: str, dataset: str, max_prompt_tokens: int) -> list[list[int]]:
    """Each row's prompt as the workflow's prefix mode cuts it."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = pq.read_table(dataset).column("text").to_pylist()
    return [tokenizer(text, add_special_tokens=True)["input_ids"][:max_prompt_tokens] for text in texts]


def snakemake_environment(work: Path) -> dict[str, str]:
    """The environment the workflow's jobs need here: the package importable, and a `distillery` command where
    the package is not installed (a GPU machine with only vLLM and Snakemake)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if shutil.which("distillery") is None:
        shim = work / "bin" / "distillery"
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m workflow_scripts.cli "$@"\n')
        shim.chmod(0o755)
        env["PATH"] = f"{shim.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def bare_run(args_json: str) -> dict:
    """The anchor, in its own process: LLM() + one generate over all prompts, with per-row seeds."""
    from vllm import LLM, SamplingParams

    from workflow_scripts.engines.base import derive_seed

    args = argparse.Namespace(**json.loads(args_json))
    started = time.perf_counter()
    prompts, params = [], []
    for index, ids in enumerate(prompt_token_ids(args.model, args.dataset, args.max_prompt_tokens)):
        prompts.append({"prompt_token_ids": ids})
        seed = derive_seed(args.seed, f"{Path(args.dataset).stem}:{index}")
        params.append(SamplingParams(n=1, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=seed))
    llm = LLM(model=args.model, **engine_arguments(args))
    ready = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    done = time.perf_counter()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "engine_start_seconds": ready - started,
        "generate_seconds": done - ready,
        "wall_seconds": done - started,
        "output_tokens": tokens,
        "rows": len(prompts),
    }


def workflow_run(args, work: Path) -> dict:
    import yaml

    job = {
        "model": str(args.model),
        "dataset": {"path": str(args.dataset), "prompt_mode": "prefix"},
        "max_prompt_tokens": args.max_prompt_tokens,
        "chunk_rows": args.chunk_rows,
        "gpus": 1,
        "sampling": {"n": 1, "temperature": 0.8, "top_p": 0.95, "max_tokens": args.max_tokens, "seed": args.seed},
        "engine": {
            "kind": "vllm",
            "dtype": "bfloat16",
            "gen_batch_size": args.gen_batch_size,
            "max_model_len": args.max_model_len,
            "gpu_memory_utilization": 0.85,
            "enforce_eager": args.enforce_eager,
        },
    }
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump({"models": {}, "kd": {"bench": job}}))
    try:
        import snakemake  # noqa: F401

        runner = "snakemake"
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
                   "--configfile", str(work / "config.yaml"), "--cores", str(os.cpu_count() or 4),
                   "--resources", "gpu=1", "--profile", str(REPO / "profiles/default")]  # fmt: skip
        summary_path = work / "results/kd/bench/summary.json"
    except ImportError:
        runner = "distillery generate"
        command = [sys.executable, "-m", "workflow_scripts.cli", "generate", "--job-name", "bench",
                   "--output-dir", str(work / "out"), "--model-path", str(args.model), "--dataset", str(args.dataset),
                   "--max-prompt-tokens", str(args.max_prompt_tokens), "--chunk-rows", str(args.chunk_rows),
                   "--engine", "vllm", "--dtype", "bfloat16", "--gen-batch-size", str(args.gen_batch_size),
                   "--max-model-len", str(args.max_model_len), "--gpu-memory-utilization", "0.85",
                   "--temperature", "0.8", "--top-p", "0.95", "--max-tokens", str(args.max_tokens),
                   "--seed", str(args.seed)] + (["--enforce-eager"] if args.enforce_eager else [])  # fmt: skip
        summary_path = work / "out/bench/summary.json"
    started = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=snakemake_environment(work), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{runner} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    summary = json.loads(summary_path.read_text())
    return {
        "runner": runner,
        "command": command,
        "wall_seconds": wall,
        "output_tokens": summary["completion_tokens"],
        "rows": summary["generated_rows"],
        "skipped_rows": summary["skipped_rows"],
        "engine_starts": summary.get("engine_starts"),
        "engine_start_seconds": summary["engine_start_seconds"],
        "generate_seconds": summary["generate_seconds"],
        "summary_versions": summary["versions"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/kd_throughput"))
    parser.add_argument("--prompts", type=int, default=20000)
    parser.add_argument("--words", type=int, default=160, help="words per row (the prefix is cut from them)")
    parser.add_argument("--max-prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--chunk-rows", type=int, default=20000)
    parser.add_argument("--gen-batch-size", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bare-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_run:
        print("RESULT " + json.dumps(bare_run(args.bare_run)))
        return

    from harness import new_record, save_result

    args.work.mkdir(parents=True, exist_ok=True)
    args.model = args.work / "llama3.1-1b-random"
    args.dataset = args.work / "data" / "prompts.parquet"
    started = time.perf_counter()
    build_teacher(args.model)
    build_dataset(args.dataset, args.prompts, args.words)
    print(f"inputs ready in {time.perf_counter() - started:.1f} s")

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    # vLLM spawns its engine process, so the anchor runs as this script's own __main__ in a fresh interpreter.
    bare = subprocess.run(
        [sys.executable, __file__, "--bare-run", json.dumps(settings)], capture_output=True, text=True
    )
    lines = [line for line in bare.stdout.splitlines() if line.startswith("RESULT ")]
    if bare.returncode != 0 or not lines:
        raise RuntimeError(f"bare run failed:\n{bare.stdout[-3000:]}\n{bare.stderr[-5000:]}")
    bare_result = json.loads(lines[-1][len("RESULT ") :])
    workflow = workflow_run(args, args.work / "workflow")

    rows = {
        "bare LLM.generate": bare_result,
        f"workflow ({workflow['runner']})": workflow,
    }
    print(f"\n{'':28} {'rows':>7} {'out tokens':>11} {'engine s':>9} {'wall s':>8} {'tok/s e2e':>10}")
    for name, r in rows.items():
        r["tokens_per_second_end_to_end"] = r["output_tokens"] / r["wall_seconds"]
        print(f"{name:28} {r['rows']:>7} {r['output_tokens']:>11} {r['engine_start_seconds']:>9.1f} "
              f"{r['wall_seconds']:>8.1f} {r['tokens_per_second_end_to_end']:>10.0f}")  # fmt: skip
    ratio = workflow["tokens_per_second_end_to_end"] / bare_result["tokens_per_second_end_to_end"]
    print(f"workflow / bare, end to end: {ratio:.1%} (goal >= 95%)")
    record = new_record("kd_throughput", settings=settings, bare=bare_result, workflow=workflow, ratio=ratio)
    save_result(args.out, "kd_throughput", record)


if __name__ == "__main__":
    main()
