"""Benchmark: merging a sharded model of several GB, `distillery consolidate` against transformers.

Workload: a random Llama (default 16 layers, hidden 2048, vocab 32000: 3.8 GB in float32) saved as
safetensors shards of 500 MB. Both tools turn it into one `model.safetensors` of `--dtype` (float32: a pure
merge; bfloat16: a merge with conversion):
- distillery: `distillery consolidate --input SRC --output OUT --dtype D` (validation on, as users run it);
- anchor: transformers `from_pretrained(SRC, dtype=D)` then `save_pretrained(OUT, max_shard_size="40GB")`.
Each runs in its own child process; wall time and the child's peak RSS (`wait4`'s ru_maxrss) are measured,
with this parent process kept free of torch (the model is built and compared in helper processes), because
a child's ru_maxrss starts from its parent's RSS at fork time;
alternating the two tools over `--repeats` rounds so page-cache effects hit both alike. The two outputs are
compared tensor by tensor. The table is printed and the numbers saved under benchmarks/results/.

    python benchmarks/merge_memory.py [--dtype float32|bfloat16] [--layers 16] [--repeats 2] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ANCHOR = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[3]))
model.save_pretrained(sys.argv[2], max_shard_size="40GB")
"""


def build_source(folder: str, layers: int, hidden: int, intermediate: int, vocab: int) -> int:
    from workflow_scripts.architectures.tiny import TinyModelSpec, build_tiny_model
    from workflow_scripts.formats.hf_checkpoint import open_checkpoint

    folder = Path(folder)
    if not (folder / "model.safetensors.index.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        spec = TinyModelSpec(
            architecture="llama",
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            num_key_value_heads=hidden // 256,
            vocab_size=vocab,
        )
        build_tiny_model(folder, spec, layout="safetensors_sharded", seed=0, max_shard_size="500MB")
    return open_checkpoint(folder).total_bytes


def main() -> None:
    import psutil
    from harness import in_helper_process, measure_rounds, new_record, print_table, save_result, summarize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=2048)
    parser.add_argument("--intermediate-size", type=int, default=5632)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--work-dir", type=Path, default=HERE / "work" / "merge_memory")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--keep", action="store_true", help="keep the source and outputs")
    args = parser.parse_args()

    source = args.work_dir / "source"
    print(f"building the source model in {source} ...", flush=True)
    model_bytes = in_helper_process(
        "merge_memory", "build_source", source, args.layers, args.hidden_size, args.intermediate_size, args.vocab_size
    )
    source_bytes = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    print(f"parent RSS before measuring: {psutil.Process().memory_info().rss / 1e6:.0f} MB")
    print(f"source: {model_bytes / 1e9:.2f} GB of float32 tensors in {len(list(source.glob('*.safetensors')))} shards")

    distillery = shutil.which("distillery") or "distillery"
    outputs = {"distillery consolidate": args.work_dir / "out-distillery",
               "transformers from/save_pretrained": args.work_dir / "out-transformers"}  # fmt: skip
    commands = {
        "distillery consolidate": [distillery, "consolidate", "--input", str(source),
                                   "--output", str(outputs["distillery consolidate"]), "--dtype", args.dtype],
        "transformers from/save_pretrained": [sys.executable, "-c", ANCHOR, str(source),
                                              str(outputs["transformers from/save_pretrained"]), args.dtype],
    }  # fmt: skip
    runs = measure_rounds(commands, outputs, args.repeats)

    identical = in_helper_process(
        "harness", "outputs_identical", outputs["distillery consolidate"], outputs["transformers from/save_pretrained"]
    )
    summary = summarize(runs, model_bytes)
    ours, anchor = summary["distillery consolidate"], summary["transformers from/save_pretrained"]
    print()
    print_table(summary, model_bytes)
    goal_met = ours["peak_rss_share_of_model"] < 0.25 and ours["best_wall_s"] <= anchor["best_wall_s"]
    print(f"\nmodel: {model_bytes / 1e9:.2f} GB; outputs identical: {identical}; "
          f"goal (peak RSS < 25% of model, time <= transformers): {'met' if goal_met else 'NOT met'}")  # fmt: skip

    record = new_record(
        "merge_memory",
        workload={
            "layers": args.layers,
            "hidden_size": args.hidden_size,
            "intermediate_size": args.intermediate_size,
            "vocab_size": args.vocab_size,
            "model_bytes": model_bytes,
            "source_file_bytes": source_bytes,
            "source_layout": "safetensors shards of 500 MB",
            "output": f"one {args.dtype} model.safetensors",
        },  # fmt: skip
        outputs_identical=identical,
        goal_met=goal_met,
        results=summary,
    )
    save_result(args.results_dir, f"merge_memory-{args.dtype}", record)
    if not args.keep:
        shutil.rmtree(args.work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
