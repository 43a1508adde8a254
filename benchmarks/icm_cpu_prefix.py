"""ICM on the CPU with the transformers engine: seconds per iteration with and without shared prefixes.

Workload: a batch of 40 claims (20 capital-city groups of `config/icm/capitals.jsonl`, its example config's
prompt), SmolLM2-135M-Instruct in float32, `--iterations` ICM iterations from the same seed. Configurations,
stepped in turn (one iteration of each, then the next) so that a busy machine slows all of them alike:
- anchor: every prompt run whole (`score_whole_prompts`, the engine's scoring before this change), unlabeled
  claims scored on demand (the command's default for transformers);
- shared: each shared prefix computed once (`score_sharing_prefixes`), the same search;
- shared + unlabeled: also every unlabeled claim scored in each evaluation (`--score-unlabeled`), as on vLLM.
The three make the same proposals from the same scores, up to float rounding: the labels are compared. Besides
wall seconds, each iteration's CPU seconds (the process's own, with one torch thread): on a machine shared
with other jobs they measure the work done where wall time also measures the waiting.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/icm_cpu_prefix.py --model /work/scratch/smollm2-hf
(CPU. On a machine shared with other jobs, give torch one thread: its threads waiting on each other for cores
cost more than the second thread gains.)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

CLAIMS = HERE.parent / "config" / "icm" / "capitals.jsonl"
EXAMPLE = HERE.parent / "config" / "examples" / "icm-smollm2-capitals.yaml"


class WholePromptEngine:
    """The engine scoring as it did before prefix sharing: every prompt run whole."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def next_token_logprobs(self, prompts, top_k):
        return self.engine.score_whole_prompts(prompts, top_k)


def example_job() -> dict:
    import yaml

    return next(iter(yaml.safe_load(EXAMPLE.read_text())["icm"]["jobs"].values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="an HF model folder (SmolLM2-135M-Instruct)")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    import torch
    from harness import new_record, save_result

    from workflow_scripts.engines import EngineSettings, open_engine
    from workflow_scripts.icm.algorithm import ICMSearch, ICMSettings
    from workflow_scripts.icm.data import load_dataset, select_batch
    from workflow_scripts.icm.prompts import PromptBuilder
    from workflow_scripts.icm.scoring import EngineScorer

    job = example_job()
    settings = ICMSettings(alpha=job["alpha"], num_seed=job["num_seed"], iterations=args.iterations,
                           seed=job["seed"], score_unlabeled=False)  # fmt: skip
    claims = load_dataset(CLAIMS, "generic", job["data"].get("prompt_template"))
    batch = select_batch(claims, args.batch_size, settings.seed)
    engine = open_engine(EngineSettings(kind="transformers", model_path=str(args.model), dtype="float32"))
    builder = PromptBuilder(engine.tokenizer, batch)
    configurations = {
        "anchor: whole prompts": (WholePromptEngine(engine), settings),
        "shared prefixes": (engine, settings),
        "shared prefixes + unlabeled": (engine, dataclasses.replace(settings, score_unlabeled=True)),
    }
    searches = {name: ICMSearch(batch, EngineScorer(scoring, builder), chosen)
                for name, (scoring, chosen) in configurations.items()}  # fmt: skip
    started = time.perf_counter()
    cpu_seconds: dict[str, list[float]] = {name: [] for name in searches}
    for iteration in range(args.iterations):
        for name, search in searches.items():
            cpu_started = time.process_time()
            stats = search.step()
            cpu_seconds[name].append(round(time.process_time() - cpu_started, 3))
            print(f"iteration {iteration} {name}: {stats.seconds:.2f} s ({cpu_seconds[name][-1]:.2f} s CPU), "
                  f"{stats.prompt_tokens} prompt tokens, "
                  f"{sum(label is not None for label in search.state.labels)} labeled", flush=True)  # fmt: skip
    results = {}
    for name, search in searches.items():
        seconds = [item.seconds for item in search.state.history]
        results[name] = {
            "cpu_seconds_per_iteration": round(statistics.fmean(cpu_seconds[name]), 3),
            "cpu_seconds": cpu_seconds[name],
            "seconds_per_iteration": {
                "mean": round(statistics.fmean(seconds), 3),
                "median": round(statistics.median(seconds), 3),
            },  # fmt: skip
            "seconds": seconds,
            "prompt_tokens": [item.prompt_tokens for item in search.state.history],
            "engine_calls": [item.engine_calls for item in search.state.history],
            "labels": list(search.state.labels),
        }
    anchor = results["anchor: whole prompts"]
    print("| configuration | mean s/iteration | median s/iteration | CPU s/iteration | speed-up (wall, CPU) | "
          "labels as the anchor's |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, row in results.items():
        wall = anchor["seconds_per_iteration"]["mean"] / row["seconds_per_iteration"]["mean"]
        cpu = anchor["cpu_seconds_per_iteration"] / row["cpu_seconds_per_iteration"]
        same = row["labels"] == anchor["labels"]
        print(f"| {name} | {row['seconds_per_iteration']['mean']} | {row['seconds_per_iteration']['median']} | "
              f"{row['cpu_seconds_per_iteration']} | {wall:.2f}x, {cpu:.2f}x | {same} |")  # fmt: skip
    record = new_record(
        "icm_cpu_prefix", model=str(args.model), claims=str(CLAIMS), prompt_template=job["data"].get("prompt_template"),
        batch_size=len(batch), torch_threads=torch.get_num_threads(),
        settings=dataclasses.asdict(settings), wall_s=round(time.perf_counter() - started, 1), results=results,
    )  # fmt: skip
    save_result(args.out, "icm_cpu_prefix", record)


if __name__ == "__main__":
    main()
