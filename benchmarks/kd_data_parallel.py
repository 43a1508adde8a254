"""Data-parallel KD: G chunks at once, one per GPU (tensor and pipeline size 1), against the same job on one GPU.

The workload of kd_throughput.py (the same model, rows, sampling and per-row seeds), its rows split into G chunks.
Four measurements in one run, each from its own processes, engine starts included:
- bare, one GPU: one `LLM.generate` over all rows (CUDA_VISIBLE_DEVICES=0);
- workflow, one GPU: `snakemake --resources gpu=1` (the G chunk jobs one after another);
- bare, G GPUs: G processes at once, process i on GPU i over chunk i's rows: what data parallelism can reach;
- workflow, G GPUs: `snakemake --resources gpu=G`: Snakemake may run the G chunk jobs at once.
The workflow gets only its config (chunk_rows, the parallel sizes) and Snakemake's GPU count, so the run measures
whatever decides which GPU a chunk job uses. Each measurement's GPUs are sampled from outside (nvidia-smi), so
the record shows whether each GPU held an engine and worked (on one H200, two chunk jobs with `gpu=2` both ran on
GPU 0: Snakemake counts GPUs locally but does not assign them). Reported: the speed-up of G GPUs over one, output
tokens/s end to end, for the bare runs and for the workflow, and whether each dataset holds every row once.

    python benchmarks/kd_data_parallel.py --out DIR [--gpus 2 --prompts 8000]      (G GPUs, vLLM, Snakemake)
    python benchmarks/kd_data_parallel.py --out DIR --dry-run                     (CPU, transformers, tiny)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kd_throughput  # noqa: E402  (after the path: a sibling script)


def row_slices(rows: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk when `rows` rows are cut into chunks of ceil(rows / parts)."""
    size = math.ceil(rows / parts)
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


def on_gpu(gpu: int | None) -> dict:
    """The environment of a process that sees only GPU `gpu` (all GPUs for None)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def bare_on_gpus(args, slices: list[tuple[int, int]], gpus: list[int]) -> dict:
    """One bare process per GPU, each over its slice of rows, all at once; the wall is until the last ends."""
    from harness import GpuSampler

    started = time.perf_counter()
    with GpuSampler() as sampler:
        processes = [
            kd_throughput.run_bare(args, {**kd_throughput.settings_of(args), "rows": list(rows)}, on_gpu(gpu))
            for rows, gpu in zip(slices, gpus, strict=True)
        ]
        try:
            parts = [kd_throughput.bare_result(process) for process in processes]
        except RuntimeError as failure:  # recorded, as a failed workflow run is
            for process in processes:
                if process.returncode is None:
                    process.communicate()  # drains its pipes while waiting, so it cannot block on a full one
            return {"failed": str(failure)[-6000:], "gpus_assigned": gpus, "gpus": sampler.summary()}
    wall = time.perf_counter() - started
    return {
        "engine": parts[0]["engine"],
        "processes": len(parts),
        "gpus_assigned": gpus,
        "wall_seconds": wall,
        "engine_start_seconds": max(part["engine_start_seconds"] for part in parts),
        "generate_seconds": max(part["generate_seconds"] for part in parts),
        "output_tokens": sum(part["output_tokens"] for part in parts),
        "rows": sum(part["rows"] for part in parts),
        "parts": parts,
        "gpus": sampler.summary(),
    }


def workflow_on_gpus(args, work: Path, gpus_available: int) -> dict:
    from harness import GpuSampler

    with GpuSampler() as sampler:
        try:
            result = kd_throughput.workflow_run(args, work, gpus_available)
        except RuntimeError as failure:  # recorded: a failed data-parallel run is a finding, not a crash
            result = {"failed": str(failure)[-6000:], "gpus_available": gpus_available}
    result["gpus"] = sampler.summary()
    return result


def gpus_that_worked(run: dict, min_memory_mib: int = 1024) -> list[str]:
    """The GPUs that held an engine during a run (more than `min_memory_mib` MiB in use at some sample)."""
    return sorted(index for index, gpu in run.get("gpus", {}).items() if gpu["peak_memory_mib"] > min_memory_mib)


def speed_up(many: dict, one: dict) -> float | None:
    if "failed" in many or "failed" in one:
        return None
    return round((many["output_tokens"] / many["wall_seconds"]) / (one["output_tokens"] / one["wall_seconds"]), 3)


def compare(record: dict, gpus: int) -> None:
    """What the runs so far allow: each workflow dataset against the one-GPU bare run's rows (all rows, one
    process), the speed-ups, the GPUs that held an engine."""
    runs = record["runs"]
    reference = runs.get("bare, 1 GPU")
    for size in ("1 GPU", f"{gpus} GPUs"):
        workflow = runs.get(f"workflow, {size}")
        done = reference and workflow and "failed" not in reference and "failed" not in workflow
        if done and "rows_check" not in workflow:
            workflow["rows_check"] = kd_throughput.compare_rows(Path(workflow["dataset"]), reference["parts"])
    for side in ("bare", "workflow"):
        one, many = runs.get(f"{side}, 1 GPU"), runs.get(f"{side}, {gpus} GPUs")
        if one and many:
            record["speed_up"][side] = speed_up(many, one)
    record["gpus_that_held_an_engine"] = {name: gpus_that_worked(run) for name, run in runs.items()}


def measure(args, record: dict, save) -> None:
    """The four measurements, the record saved after each (a run cut short keeps what finished)."""
    many = f"{args.gpus} GPUs"
    steps = {
        "bare, 1 GPU": lambda: bare_on_gpus(args, [(0, args.prompts)], [0]),
        "workflow, 1 GPU": lambda: workflow_on_gpus(args, args.work / "workflow-1gpu", 1),
        f"bare, {many}": lambda: bare_on_gpus(args, row_slices(args.prompts, args.gpus), list(range(args.gpus))),
        f"workflow, {many}": lambda: workflow_on_gpus(args, args.work / f"workflow-{args.gpus}gpu", args.gpus),
    }
    for name, run in steps.items():
        record["runs"][name] = run()
        compare(record, args.gpus)
        save()
    for name in ("bare, 1 GPU", f"bare, {many}"):
        for part in record["runs"][name].get("parts", []):
            del part["completion_tokens_by_row"]  # compared; thousands of numbers add nothing to the record
    save()


def print_summary(record: dict) -> None:
    print(f"\n{'':24} {'rows':>7} {'out tokens':>11} {'wall s':>8} {'tok/s e2e':>10}  GPUs that held an engine")
    for name, run in record["runs"].items():
        if "failed" in run:
            print(f"{name:24} failed: {run['failed'].strip().splitlines()[-1][:100]}")
            continue
        rate = run["output_tokens"] / run["wall_seconds"]
        print(f"{name:24} {run['rows']:>7} {run['output_tokens']:>11} {run['wall_seconds']:>8.1f} {rate:>10.0f}  "
              f"{record['gpus_that_held_an_engine'][name]}")  # fmt: skip
    print(f"speed-up of {record['settings']['gpus']} GPUs over one, end to end: {record['speed_up']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kd_throughput.add_workload_arguments(parser)
    parser.add_argument("--gpus", type=int, default=2, help="GPUs, hence chunks (default 2)")
    args = parser.parse_args()
    if args.gpus < 2:
        parser.error("--gpus must be at least 2: data parallelism is measured against one GPU")
    from harness import new_record, result_path, write_result

    kd_throughput.resolve_workload(args, "kd_data_parallel")
    args.tensor_parallel_size = args.pipeline_parallel_size = 1
    args.chunk_rows = math.ceil(args.prompts / args.gpus)
    kd_throughput.prepare_inputs(args)
    path = result_path(args.out, f"kd_data_parallel{'-dry-run' if args.dry_run else ''}")
    record = new_record("kd_data_parallel", settings=kd_throughput.settings_of(args), runs={}, speed_up={})
    measure(args, record, lambda: write_result(path, record))
    print_summary(record)


if __name__ == "__main__":
    main()
