"""ICM on vLLM: seconds per iteration, engine calls per iteration and prefix-cache hit rate, batching on and off.

Workload: a GSM8K-verification batch (synthetic arithmetic questions, 4 solutions each, one right: the reference's
gsm8k file format and prompt) labeled by ICM with a random Llama whose tokenizer has "True"/"False" as tokens
(`build_tiny_icm_model`, so scores vary with the prompt). Configurations, each from an empty prefix cache:
- in-process `vllm.LLM`: batching on (one `LLM.generate` per evaluation), batching off (one call per prompt, the
  guide's "before"), and the reference's demonstration order;
- `vllm serve` through the OpenAI engine: batching on (one request per evaluation), off (one request per prompt).
Anchor, in the same run: the bare engine time for the same prompts (every batch the ICM run sent, replayed
through the engine alone from an empty cache). Goals: one engine call per iteration, a hit rate of at least 90%,
an ICM iteration no slower than 1.2x the bare engine time.

`--tensor-parallel-sizes 1,2` runs the in-process configurations once per size (each in its own process, the
record saved after each) and compares each size's seconds per iteration with the first's. `--dry-run` runs the
in-process part on the CPU: a tiny model on the transformers engine (no prefix-cache counters), a few iterations.

    PYTHONPATH=. python benchmarks/icm_vllm.py --out $OUT      (a GPU and vLLM 0.26; about 3-5 min on an H100)
    PYTHONPATH=. python benchmarks/icm_vllm.py --out $OUT --tensor-parallel-sizes 1,2 --configs batched --skip-server
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SERVED_NAME = "tiny-icm"
# name: (the configuration as reported, ICM options, share of --iterations it runs)
IN_PROCESS_CONFIGS = {
    "batched": ("in-process, batched", {}, 1),
    "one-call-per-prompt": ("in-process, one call per prompt", {"one_prompt_per_call": True}, 1 / 3),
    "reference-order": ("in-process, batched, reference demonstration order", {"demonstration_order": "dataset"}, 1),
    "on-demand": ("in-process, batched, unlabeled scored on demand", {"score_unlabeled": False}, 1),
}


class TimedEngine:
    """The engine with its scoring calls timed and their prompts kept (for the bare-engine replay). With
    `one_prompt_per_call` each prompt is its own call, as ICM was run before batching."""

    def __init__(self, engine, one_prompt_per_call: bool = False) -> None:
        self.engine = engine
        self.one_prompt_per_call = one_prompt_per_call
        self.seconds = 0.0
        self.calls = 0
        self.batches: list[list[list[int]]] = []

    def next_token_logprobs(self, prompts, top_k):
        self.batches.append(prompts)
        started = time.perf_counter()
        if self.one_prompt_per_call and getattr(self.engine, "kind", "") != "openai":
            results = []
            for prompt in prompts:
                results += self.engine.next_token_logprobs([prompt], top_k)
                self.calls += 1
        else:
            results = self.engine.next_token_logprobs(prompts, top_k)
            self.calls += 1
        self.seconds += time.perf_counter() - started
        return results


def write_gsm8k_batch(path: Path, questions: int, seed: int = 0) -> Path:
    """Questions with four solutions, one right, in the reference's train_gsm8k.json format."""
    rng = random.Random(seed)
    rows = []
    for index in range(questions):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        right = a + b
        answers = [right] + rng.sample([right + d for d in (-11, -10, -2, -1, 1, 2, 9, 10)], 3)
        rng.shuffle(answers)
        for answer in answers:
            rows.append({
                "question": f"What is {a} + {b}?",
                "choice": f"{a} + {b} = {answer}. The answer is {answer}.",
                "answer": answer,
                "label": int(answer == right),
                "consistency_id": index,
            })  # fmt: skip
    path.write_text(json.dumps(rows))
    return path


def build_model(folder: Path, shape: str) -> Path:
    from workflow_scripts.architectures.tiny import TinyModelSpec, build_tiny_icm_model

    sizes = {
        "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2),
        "small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=8),
        "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                   num_key_value_heads=8),
    }[shape]  # fmt: skip
    spec = TinyModelSpec(vocab_size=512, max_position_embeddings=16384, **sizes)
    return build_tiny_icm_model(folder, spec, seed=1)


def reset_prefix_cache(engine) -> None:
    if engine.kind == "transformers":  # no cache to reset
        return
    try:
        if getattr(engine, "llm", None) is not None:
            engine.llm.reset_prefix_cache()
        else:
            from workflow_scripts.engines.openai_engine import server_root

            engine.request("POST", f"{server_root(engine.base_url)}/reset_prefix_cache")
    except Exception as exc:  # an older vLLM, or a server without dev mode: note it, measure anyway
        print(f"  (prefix cache not reset: {exc})")


def run_config(engine, tokenizer, batch, name: str, iterations: int, **options) -> dict:
    """One ICM run, then the same prompt batches through the bare engine, each from an empty cache."""
    from workflow_scripts.icm.algorithm import ICMSearch, ICMSettings
    from workflow_scripts.icm.prompts import PromptBuilder
    from workflow_scripts.icm.scoring import EngineScorer

    one_per_call = options.pop("one_prompt_per_call", False)
    timed = TimedEngine(engine, one_per_call)
    if engine.kind == "openai":
        engine.settings = dataclasses.replace(engine.settings, prompts_per_request=1 if one_per_call else None)
    settings = ICMSettings(iterations=iterations, num_seed=8, seed=7, **options)
    search = ICMSearch(batch, EngineScorer(timed, PromptBuilder(tokenizer, batch)), settings)
    counters = getattr(engine, "prefix_cache_counters", lambda: None)
    reset_prefix_cache(engine)
    counters_before = counters()
    requests_before = getattr(engine, "requests_sent", 0)
    started = time.perf_counter()
    state = search.run()
    wall = time.perf_counter() - started
    requests = getattr(engine, "requests_sent", 0) - requests_before
    counters_after = counters()

    reset_prefix_cache(engine)
    bare_engine = TimedEngine(engine, one_per_call)
    for prompts in timed.batches:
        bare_engine.next_token_logprobs(prompts, 20)
    bare = bare_engine.seconds

    history = state.history
    evaluating = [item for item in history if item.engine_calls]
    hits = queries = None
    if counters_before and counters_after:
        hits = counters_after["hits"] - counters_before["hits"]
        queries = counters_after["queries"] - counters_before["queries"]
    calls = requests if engine.kind == "openai" else timed.calls
    result = {
        "config": name,
        "iterations": len(history),
        "iterations_with_engine_work": len(evaluating),
        "proposals": sum(item.proposed for item in history),
        "accepted": sum(item.accepted for item in history),
        "seconds_per_iteration": round(wall / len(history), 4),
        "engine_calls": calls,
        "engine_calls_per_iteration": round(calls / len(history), 3),
        "engine_calls_per_iteration_with_work": round(calls / max(1, len(evaluating)), 3),
        "scoring_batches": len(timed.batches),
        "prompts_per_batch": round(statistics.fmean(len(b) for b in timed.batches), 1) if timed.batches else 0,
        "prompt_tokens_per_iteration": round(sum(i.prompt_tokens for i in history) / len(history)),
        "engine_seconds_in_icm": round(timed.seconds, 3),
        "bare_engine_seconds_same_prompts": round(bare, 3),
        "icm_wall_seconds": round(wall, 3),
        "icm_over_bare_engine": round(wall / bare, 3) if bare else None,
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
        "prefix_cache_hit_tokens": hits,
        "prefix_cache_query_tokens": queries,
        "labels_accuracy_vs_gold": round(
            sum(state.labels[e.uid] == e.gold for e in batch if state.labels[e.uid] is not None)
            / max(1, sum(label is not None for label in state.labels)), 3),
    }  # fmt: skip
    summary = (
        f"{result['seconds_per_iteration']} s/iteration, {result['engine_calls_per_iteration']} calls/iteration, "
        f"hit rate {result['prefix_cache_hit_rate']}, ICM/bare {result['icm_over_bare_engine']}"
    )
    print(f"  {name}: {summary}", flush=True)
    return result


def load_batch(data: Path, batch_size: int):
    from workflow_scripts.icm.data import load_dataset, select_batch

    return select_batch(load_dataset(data, "gsm8k"), batch_size, seed=7)


def in_process_part(model: Path, data: Path, args, output: Path) -> None:
    """Runs in its own process (vLLM's engine is started once and freed with the process)."""
    from workflow_scripts.engines import EngineSettings, open_engine

    started = time.perf_counter()
    settings = EngineSettings(kind="vllm", model_path=str(model), dtype="bfloat16", enforce_eager=True,
                              gpu_memory_utilization=0.6, max_model_len=16384,
                              tensor_parallel_size=args.tensor_parallel_size,
                              extra={"disable_log_stats": False})  # fmt: skip
    if args.dry_run:
        settings = EngineSettings(kind="transformers", model_path=str(model), dtype="float32")
    engine = open_engine(settings)
    start_seconds = time.perf_counter() - started
    tokenizer = engine.tokenizer if engine.kind == "transformers" else engine.llm.get_tokenizer()
    batch = load_batch(data, args.batch_size)
    results = []
    for name in args.configs.split(","):
        label, options, share = IN_PROCESS_CONFIGS[name]
        iterations = args.iterations if share == 1 else max(5, int(args.iterations * share))
        results.append(run_config(engine, tokenizer, batch, label, iterations, **options))
    output.write_text(json.dumps({"engine_start_seconds": round(start_seconds, 1), "engine": engine.kind,
                                  "tensor_parallel_size": settings.tensor_parallel_size, "results": results,
                                  "versions": engine.versions()}))  # fmt: skip


def start_server(model: Path, port: int, log_path: Path) -> subprocess.Popen:
    from workflow_scripts.serve import ServerSettings, load_presets, serve_arguments, vllm_command

    overrides = {"max_model_len": 16384, "gpu_memory_utilization": 0.6}
    settings = ServerSettings(str(model), "8B", port=port, served_model_name=SERVED_NAME, overrides=overrides,
                              enforce_eager=True)  # fmt: skip
    command = vllm_command(serve_arguments(settings, load_presets()))
    environment = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}  # allows /reset_prefix_cache between configs
    return subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=environment)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def server_part(model: Path, data: Path, batch_size: int, iterations: int, work: Path) -> dict:
    from transformers import AutoTokenizer

    from workflow_scripts.engines import EngineSettings, open_engine
    from workflow_scripts.serve import wait_until_healthy

    port = 8123
    process = start_server(model, port, work / "server.log")
    try:
        started = time.perf_counter()
        wait_until_healthy(f"http://127.0.0.1:{port}/v1", process, 600)
        start_seconds = time.perf_counter() - started
        engine = open_engine(EngineSettings(kind="openai", base_url=f"http://127.0.0.1:{port}/v1",
                                            served_model_name=SERVED_NAME, tokenizer_path=str(model)))  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(model)
        batch = load_batch(data, batch_size)
        results = [
            run_config(engine, tokenizer, batch, "vllm serve, batched", iterations),
            run_config(engine, tokenizer, batch, "vllm serve, one request per prompt", max(5, iterations // 3),
                       one_prompt_per_call=True),
        ]  # fmt: skip
        versions = engine.versions()
        engine.close()
        return {"server_start_seconds": round(start_seconds, 1), "results": results, "versions": versions}
    finally:
        stop(process)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work", type=Path, help="scratch folder (default: /tmp/icm-vllm-bench[-dry-run])")
    parser.add_argument("--shape", choices=["tiny", "small", "1b"], help="model (default: small; tiny with --dry-run)")
    parser.add_argument("--batch-size", type=int, help="claims per ICM batch (64; 8 with --dry-run)")
    parser.add_argument("--iterations", type=int, help="ICM iterations (30; 3 with --dry-run)")
    parser.add_argument("--tensor-parallel-sizes", default="1", help="in-process runs, one per size (default 1)")
    parser.add_argument("--configs", default=",".join(IN_PROCESS_CONFIGS),
                        help=f"in-process configurations (default: all of {','.join(IN_PROCESS_CONFIGS)})")  # fmt: skip
    parser.add_argument("--skip-server", action="store_true", help="leave out the vllm serve configurations")
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny model, transformers engine, no server")
    parser.add_argument("--part", choices=["all", "in-process"], default="all", help=argparse.SUPPRESS)
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [name for name in args.configs.split(",") if name not in IN_PROCESS_CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}: choose from {', '.join(IN_PROCESS_CONFIGS)}")
    args.shape = args.shape or ("tiny" if args.dry_run else "small")
    args.batch_size = args.batch_size or (8 if args.dry_run else 64)
    args.iterations = args.iterations or (3 if args.dry_run else 30)
    args.work = args.work or Path("/tmp/icm-vllm-bench" + ("-dry-run" if args.dry_run else ""))
    args.sizes = [int(size) for size in args.tensor_parallel_sizes.split(",")]
    return args


def compare_sizes(in_process: dict) -> dict:
    """Per configuration: seconds per iteration at each tensor-parallel size, and each size's over the first's."""
    sizes = list(in_process)
    table = {}
    for index, row in enumerate(in_process[sizes[0]]["results"]):
        seconds = {f"T={size}": in_process[size]["results"][index]["seconds_per_iteration"] for size in sizes}
        over_first = {name: round(value / row["seconds_per_iteration"], 3) for name, value in seconds.items()}
        table[row["config"]] = {"seconds_per_iteration": seconds, "over_first_size": over_first}
    return table


def in_process_runs(args, record: dict, save) -> None:
    """One process per tensor-parallel size, the record saved after each."""
    common = ["--shape", args.shape, "--batch-size", str(args.batch_size), "--iterations", str(args.iterations),
              "--configs", args.configs, "--work", str(args.work)] + ["--dry-run"] * args.dry_run  # fmt: skip
    for size in args.sizes:
        print(f"in-process, T={size}", flush=True)
        output = args.work / f"in-process-tp{size}.json"
        output.unlink(missing_ok=True)
        subprocess.run([sys.executable, __file__, "--part", "in-process", "--tensor-parallel-size", str(size),
                        *common], check=True)  # fmt: skip
        record["in_process"][str(size)] = json.loads(output.read_text())
        record["tensor_parallel"] = compare_sizes(record["in_process"])
        save()


def print_table(record: dict) -> None:
    print("\n| T | config | s/iteration | calls/iteration (with work) | hit rate | ICM / bare engine |")
    print("|---|---|---|---|---|---|")
    rows = [(size, row) for size, run in record["in_process"].items() for row in run["results"]]
    rows += [("1", row) for row in record.get("server", {}).get("results", [])]
    for size, row in rows:
        print(f"| {size} | {row['config']} | {row['seconds_per_iteration']} | {row['engine_calls_per_iteration']} "
              f"({row['engine_calls_per_iteration_with_work']}) | {row['prefix_cache_hit_rate']} | "
              f"{row['icm_over_bare_engine']} |")  # fmt: skip


def main() -> None:
    args = parse_arguments()
    args.work.mkdir(parents=True, exist_ok=True)
    model, data = args.work / f"model-{args.shape}", args.work / "train_gsm8k.json"
    if args.part == "in-process":
        in_process_part(model, data, args, args.work / f"in-process-tp{args.tensor_parallel_size}.json")
        return

    from harness import new_record, result_path, write_result

    if not (model / "config.json").exists():
        build_model(model, args.shape)
    write_gsm8k_batch(data, questions=64)
    config = json.loads((model / "config.json").read_text())
    record = new_record(
        "icm_vllm",
        workload={"testbed": "gsm8k (synthetic)", "batch_size": args.batch_size, "iterations": args.iterations,
                  "model": {k: config[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
                  "dtype": "float32" if args.dry_run else "bfloat16", "enforce_eager": True,
                  "engine": "transformers (dry run)" if args.dry_run else "vllm"},
        in_process={},
        goals={"engine_calls_per_iteration_with_work": 1, "prefix_cache_hit_rate": 0.9, "icm_over_bare_engine": 1.2},
    )  # fmt: skip
    path = result_path(args.out, "icm_vllm" + ("-dry-run" if args.dry_run else ""))
    in_process_runs(args, record, lambda: write_result(path, record))
    if not (args.skip_server or args.dry_run):
        print("vllm serve + OpenAI engine", flush=True)
        record["server"] = server_part(model, data, args.batch_size, args.iterations, args.work)
        write_result(path, record)
    print_table(record)


if __name__ == "__main__":
    main()
