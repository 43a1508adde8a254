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

    PYTHONPATH=. python benchmarks/icm_vllm.py --out $OUT      (a GPU and vLLM 0.26; about 3-5 min on an H100)
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
        "small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16),
        "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32),
    }[shape]
    spec = TinyModelSpec(num_key_value_heads=8, vocab_size=512, max_position_embeddings=16384, **sizes)
    return build_tiny_icm_model(folder, spec, seed=1)


def reset_prefix_cache(engine) -> None:
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


def in_process_part(model: Path, data: Path, batch_size: int, iterations: int, output: Path) -> None:
    """Runs in its own process (vLLM's engine is started once and freed with the process)."""
    from workflow_scripts.engines import EngineSettings, open_engine

    started = time.perf_counter()
    engine = open_engine(EngineSettings(kind="vllm", model_path=str(model), dtype="bfloat16", enforce_eager=True,
                                        gpu_memory_utilization=0.6, max_model_len=16384,
                                        extra={"disable_log_stats": False}))  # fmt: skip
    start_seconds = time.perf_counter() - started
    tokenizer = engine.llm.get_tokenizer()
    batch = load_batch(data, batch_size)
    results = [
        run_config(engine, tokenizer, batch, "in-process, batched", iterations),
        run_config(engine, tokenizer, batch, "in-process, one call per prompt", max(5, iterations // 3),
                   one_prompt_per_call=True),
        run_config(engine, tokenizer, batch, "in-process, batched, reference demonstration order", iterations,
                   demonstration_order="dataset"),
        run_config(engine, tokenizer, batch, "in-process, batched, unlabeled scored on demand", iterations,
                   score_unlabeled=False),
    ]  # fmt: skip
    output.write_text(json.dumps({"engine_start_seconds": round(start_seconds, 1), "results": results,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/icm-vllm-bench"))
    parser.add_argument("--shape", choices=["small", "1b"], default="small")
    parser.add_argument("--batch-size", type=int, default=64, help="claims per ICM batch (64)")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--part", choices=["all", "in-process"], default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model, data = args.work / f"model-{args.shape}", args.work / "train_gsm8k.json"
    if args.part == "in-process":
        in_process_part(model, data, args.batch_size, args.iterations, args.work / "in-process.json")
        return

    from harness import new_record, save_result

    if not (model / "config.json").exists():
        build_model(model, args.shape)
    write_gsm8k_batch(data, questions=64)
    print("in-process vLLM", flush=True)
    sizes = ["--shape", args.shape, "--batch-size", str(args.batch_size), "--iterations", str(args.iterations)]
    subprocess.run([sys.executable, __file__, "--part", "in-process", "--work", str(args.work), *sizes], check=True)
    in_process = json.loads((args.work / "in-process.json").read_text())
    print("vllm serve + OpenAI engine", flush=True)
    served = server_part(model, data, args.batch_size, args.iterations, args.work)
    config = json.loads((model / "config.json").read_text())
    record = new_record(
        "icm_vllm",
        workload={"testbed": "gsm8k (synthetic)", "batch_size": args.batch_size, "iterations": args.iterations,
                  "model": {k: config[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
                  "dtype": "bfloat16", "enforce_eager": True},
        in_process=in_process,
        server=served,
        goals={"engine_calls_per_iteration_with_work": 1, "prefix_cache_hit_rate": 0.9, "icm_over_bare_engine": 1.2},
    )  # fmt: skip
    print("\n| config | s/iteration | calls/iteration (with work) | hit rate | ICM / bare engine |")
    print("|---|---|---|---|---|")
    for row in in_process["results"] + served["results"]:
        print(f"| {row['config']} | {row['seconds_per_iteration']} | {row['engine_calls_per_iteration']} "
              f"({row['engine_calls_per_iteration_with_work']}) | {row['prefix_cache_hit_rate']} | "
              f"{row['icm_over_bare_engine']} |")  # fmt: skip
    save_result(args.out, "icm_vllm", record)


if __name__ == "__main__":
    main()
