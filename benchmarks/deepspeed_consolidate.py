"""Benchmark: a ZeRO-3 checkpoint of >1 GB of fp32 weights, `distillery consolidate` against DeepSpeed's own.

Workload: a random Llama (default 6 layers, hidden 2048, vocab 32000: 1.6 GB in float32) fine-tuned for one
step by real DeepSpeed ZeRO-3 (HF Trainer, 2 ranks, gloo, on the CPU), which saves the fp32 master weights
partitioned over the ranks beside the Adam moments. Both tools write one float32 `model.safetensors`:
- distillery: `distillery consolidate --input RUN --output OUT` (validation on, as users run it);
- anchor: DeepSpeed's `convert_zero_checkpoint_to_state_dict(..., safe_serialization=True)` (zero_to_fp32).
Wall time and peak RSS of each child process (parent kept free of torch), alternating over `--repeats`; the
outputs are compared tensor by tensor. Prints a table, saves JSON under benchmarks/results/.

    python benchmarks/deepspeed_consolidate.py [--layers 6] [--repeats 2] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

ANCHOR = """
import sys
from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_state_dict
convert_zero_checkpoint_to_state_dict(sys.argv[1], sys.argv[2], max_shard_size="40GB", safe_serialization=True)
"""


def build_base(folder: str, layers: int, hidden: int, intermediate: int, vocab: int) -> int:
    from workflow_scripts.architectures.tiny import TinyModelSpec, build_tiny_model
    from workflow_scripts.formats.hf_checkpoint import open_checkpoint

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        spec = TinyModelSpec(
            architecture="llama",
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            num_key_value_heads=hidden // 256,
            vocab_size=vocab,
        )
        build_tiny_model(folder, spec, layout="safetensors", seed=0)
    return open_checkpoint(folder).total_bytes


def train_zero3(base: Path, run: Path) -> None:
    if (run / "checkpoint-1" / "latest").is_file():
        return
    shutil.rmtree(run, ignore_errors=True)
    environment = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
        str(REPO / "tests/helpers/train_with_deepspeed.py"), str(base), "3", str(run), "1", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        raise SystemExit(f"DeepSpeed training failed:\n{result.stderr[-3000:]}")


def main() -> None:
    from harness import in_helper_process, measure_rounds, new_record, print_table, save_result, summarize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden-size", type=int, default=2048)
    parser.add_argument("--intermediate-size", type=int, default=5632)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=HERE / "work" / "deepspeed_consolidate")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    args = parser.parse_args()

    base, run = args.work_dir / "base", args.work_dir / "run"
    model_bytes = in_helper_process(
        "deepspeed_consolidate", "build_base", base, args.layers, args.hidden_size, args.intermediate_size,
        args.vocab_size,
    )  # fmt: skip
    print(f"base model: {model_bytes / 1e9:.2f} GB of float32 weights; training one ZeRO-3 step ...", flush=True)
    train_zero3(base, run)
    checkpoint = run / "checkpoint-1"
    checkpoint_bytes = sum(p.stat().st_size for p in (checkpoint / "global_step1").iterdir())
    print(f"ZeRO-3 checkpoint: {checkpoint_bytes / 1e9:.2f} GB in {checkpoint / 'global_step1'}", flush=True)

    # A cache of its own, empty at the start: the first round pays for building the meta model, as a first
    # conversion of this architecture would; later rounds read the expected weights from it.
    cache = args.work_dir / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["DISTILLERY_CACHE_DIR"] = str(cache)
    distillery = shutil.which("distillery") or "distillery"
    names = ("distillery consolidate", "deepspeed zero_to_fp32 -> safetensors")
    outputs = {name: args.work_dir / f"out-{index}" for index, name in enumerate(names)}
    commands = {
        names[0]: [distillery, "consolidate", "--input", str(run), "--output", str(outputs[names[0]])],
        names[1]: [sys.executable, "-c", ANCHOR, str(checkpoint), str(outputs[names[1]])],
    }
    runs = measure_rounds(commands, outputs, args.repeats)

    identical = in_helper_process("harness", "outputs_identical", outputs[names[0]], outputs[names[1]])
    summary = summarize(runs, model_bytes)
    ours, anchor = summary[names[0]], summary[names[1]]
    print()
    print_table(summary, model_bytes)
    rss_ratio = ours["max_peak_rss_bytes"] / anchor["max_peak_rss_bytes"]
    goal_met = identical and rss_ratio <= 0.25 and ours["best_wall_s"] <= anchor["best_wall_s"]
    print(f"\nmodel: {model_bytes / 1e9:.2f} GB fp32; outputs bit-identical: {identical}; peak RSS ratio "
          f"{rss_ratio:.1%} of DeepSpeed's; goal (identical, <= 25% RSS, no slower): "
          f"{'met' if goal_met else 'NOT met'}")  # fmt: skip

    record = new_record(
        "deepspeed_consolidate",
        workload={
            "layers": args.layers,
            "hidden_size": args.hidden_size,
            "intermediate_size": args.intermediate_size,
            "vocab_size": args.vocab_size,
            "model_bytes": model_bytes,
            "checkpoint_bytes": checkpoint_bytes,
            "checkpoint": "HF Trainer + DeepSpeed ZeRO-3, 2 ranks (gloo, CPU), fp32, Adam",
            "output": "one float32 model.safetensors",
        },  # fmt: skip
        outputs_identical=identical,
        peak_rss_ratio_to_deepspeed=round(rss_ratio, 3),
        goal_met=goal_met,
        results=summary,
    )
    save_result(args.results_dir, "deepspeed_consolidate", record)
    if not args.keep:
        shutil.rmtree(args.work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
