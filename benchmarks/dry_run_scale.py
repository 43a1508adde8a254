"""Planning at scale: `snakemake -n` on a KD job of 10,000 chunks with half of the chunk files already written.

The dry run must list exactly the missing chunks (checked here, chunk for chunk) and should take under 10 s.
The chunk layout is the one of DESIGN.md: `results/kd/{job}/chunks/{part}/{start:09d}-{stop:09d}.jsonl`,
planned by the `kd_manifest` checkpoint and gathered by `kd_dataset`.

Workflows:
- `distillery`: the repository's Snakefile with `--configfile` (a config whose KD job has at least `--chunks`
  chunks). The manifest is made by the real `kd_manifest` job (`--until kd_manifest`), then the benchmark writes
  every other chunk file itself and times the dry runs.
- `synthetic` (default): a stand-alone Snakefile with the same interface (checkpoint manifest, per-chunk rule with
  log, benchmark, params and sized resources, dataset from an input function), to see what Snakemake's planning
  costs for rules shaped like ours.
The anchor, timed in the same run: the leanest Snakefile Snakemake can plan for the same 10,000 outputs (the
chunk list read from the manifest at parse time, a rule with an output and nothing else). The workflows take
turns, and each run's CPU seconds are kept beside its wall seconds: on a shared machine the load moves both.

    python benchmarks/dry_run_scale.py                       # the repository's workflow + anchor, 10,000 chunks
    python benchmarks/dry_run_scale.py --workflow synthetic  # a stand-alone Snakefile shaped like ours + anchor
    python benchmarks/dry_run_scale.py --before ../old/Snakefile   # and another checkout's, in the same turns
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The interface the real kd rules follow (DESIGN.md), with everything a real rule declares.
SYNTHETIC = """
import json

wildcard_constraints:
    job="[^/]+",
    part="[^/]+",
    start="\\\\d+",
    stop="\\\\d+",


def chunk_files(wildcards):
    manifest = checkpoints.kd_manifest.get(job=wildcards.job).output.manifest
    chunks = json.loads(open(manifest).read())["chunks"]
    return [
        f"results/kd/{wildcards.job}/chunks/{c['part']}/{c['start']:09d}-{c['stop']:09d}.jsonl" for c in chunks
    ]


def engine_flags(wildcards):
    return "--engine vllm --tensor-parallel-size 2"


rule all:
    input:
        "results/kd/bench/dataset.jsonl",


checkpoint kd_manifest:
    input:
        "data",
    output:
        manifest="results/kd/{job}/manifest.json",
    params:
        chunks=config["chunks"],
        parts=config["parts"],
    run:
        per_part = params.chunks // params.parts
        chunks = [
            {"part": f"part-{p:05d}", "start": 100 * i, "stop": 100 * (i + 1)}
            for p in range(params.parts)
            for i in range(per_part)
        ]
        with open(output.manifest, "w") as f:
            json.dump({"chunks": chunks}, f)


rule kd_chunk:
    input:
        model="model",
        data="data",
    output:
        "results/kd/{job}/chunks/{part}/{start}-{stop}.jsonl",
    log:
        "logs/kd_chunk/{job}/{part}/{start}-{stop}.log",
    benchmark:
        "results/benchmarks/kd_chunk/{job}/{part}/{start}-{stop}.tsv"
    threads: 8
    resources:
        gpu=lambda wildcards: 2,
        mem_mb=lambda wildcards, input: 16000,
        runtime=lambda wildcards: 60,
    params:
        flags=engine_flags,
    shell:
        "echo {wildcards.start} > {output}"


rule kd_dataset:
    input:
        chunk_files,
    output:
        "results/kd/{job}/dataset.jsonl",
    shell:
        "cat {input} > {output}"
"""

ANCHOR = """
import json

CHUNKS = json.loads(open("results/kd/bench/manifest.json").read())["chunks"]


rule all:
    input:
        [f"results/kd/bench/chunks/{c['part']}/{c['start']:09d}-{c['stop']:09d}.jsonl" for c in CHUNKS],


rule kd_chunk:
    output:
        "results/kd/{job}/chunks/{part}/{start}-{stop}.jsonl",
    shell:
        "echo {wildcards.start} > {output}"
"""


def snakemake(workdir: Path, snakefile: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake on `snakefile`, with that checkout's package first on the path (the Snakefile imports it)."""
    command = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir), "--cores", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(snakefile.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def planned_chunks(dry_run_output: str) -> list[str]:
    """The output of each kd_chunk job a dry run lists (indented where it is in a group with its engine job)."""
    return re.findall(r"^ *rule kd_chunk:\n(?: +\w+: .*\n)*? +output: (\S+?\.jsonl)", dry_run_output, re.M)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_dry_run(workdir: Path, snakefile: Path, args: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one dry run, and what it printed."""
    start, cpu = time.perf_counter(), children_cpu_seconds()
    result = snakemake(workdir, snakefile, *args)
    return round(time.perf_counter() - start, 2), round(children_cpu_seconds() - cpu, 2), result.stdout


def timed_dry_runs(workdir: Path, workflows: dict[str, tuple[Path, list[str]]], repeats: int) -> dict:
    """Each workflow's listing dry run and summary-only one (-q), the workflows taking turns, so that a change of
    the machine's load falls on all of them. CPU seconds beside the wall seconds: on a shared machine the wall
    time moves with the load, the CPU time less."""
    keys = ("listing_s", "listing_cpu_s", "summary_only_s", "summary_only_cpu_s")
    measured = {name: {key: [] for key in keys} for name in workflows}
    for _ in range(repeats):
        for name, (snakefile, args) in workflows.items():
            wall, cpu, printed = timed_dry_run(workdir, snakefile, ["-n", *args])
            measured[name]["listing_s"].append(wall)
            measured[name]["listing_cpu_s"].append(cpu)
            measured[name]["planned"] = planned_chunks(printed)
            wall, cpu, _ = timed_dry_run(workdir, snakefile, ["-n", "--quiet", *args])
            measured[name]["summary_only_s"].append(wall)
            measured[name]["summary_only_cpu_s"].append(cpu)
    for result in measured.values():
        result.update({f"best_{key}": min(result[key]) for key in keys})
    return measured


def prepare(workdir: Path, snakefile: Path, args: list[str], chunks: int, distillery: bool) -> list[str]:
    """Make the manifest (and the teacher record) with the real jobs; return every chunk file the plan asks for."""
    if distillery:
        snakemake(workdir, snakefile, "results/kd/bench/teacher.json", "results/kd/bench/manifest.json", *args)
    else:
        snakemake(workdir, snakefile, "--until", "kd_manifest", *args)
    every = planned_chunks(snakemake(workdir, snakefile, "-n", *args).stdout)
    if len(every) < chunks:
        raise SystemExit(f"the KD job has {len(every)} chunks, fewer than --chunks {chunks}: use a larger dataset")
    return every


def write_half(workdir: Path, chunk_files: list[str]) -> set[str]:
    """Write every other chunk file, as finished jobs would have (after the manifest, so they are newer)."""
    written = set(chunk_files[::2])
    for relative in written:
        path = workdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"row": 0}\n')
        path.with_name(path.name.replace(".jsonl", ".stats.json")).write_text("{}\n")  # kd_chunk's second output
    return written


def distillery_config(workdir: Path, chunks: int, parts: int) -> Path:
    """A KD job of `chunks` chunks of 10 rows over `parts` parquet files, with a tiny local teacher."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    sys.path.insert(0, str(REPO))
    from workflow_scripts.architectures.tiny import build_tiny_model

    build_tiny_model(workdir / "teacher")
    (workdir / "data").mkdir(exist_ok=True)
    rows = chunks // parts * 10
    for part in range(parts):
        pq.write_table(pa.table({"text": [f"row {i}" for i in range(rows)]}), workdir / f"data/part-{part:03d}.parquet")
    config = {"models": {}, "kd": {"bench": {"model": "teacher", "dataset": {"path": "data/*.parquet"},
                                              "chunk_rows": 10, "gpus": 1, "engine": {"kind": "vllm"}}}}  # fmt: skip
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    sys.path.insert(0, str(HERE))
    from harness import new_record, save_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", choices=["synthetic", "distillery"], default="distillery")
    parser.add_argument("--configfile", type=Path, help="distillery: a config whose KD job has >= --chunks chunks "
                        "(default: one made here, with a tiny teacher and --parts parquet files)")  # fmt: skip
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--parts", type=int, default=10, help="synthetic: parquet parts the chunks spread over")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, metavar="SNAKEFILE",
                        help="distillery: another checkout's Snakefile too, in the same turns")  # fmt: skip
    parser.add_argument("--work", type=Path, default=HERE / "work" / "dry_run_scale")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    workdir = args.work / args.workflow
    workdir.mkdir(parents=True)
    if args.workflow == "distillery":
        configfile = (
            args.configfile.resolve() if args.configfile else distillery_config(workdir, args.chunks, args.parts)
        )
        snakefile, extra = REPO / "Snakefile", ["--configfile", str(configfile)]
    else:
        snakefile = args.work / "Snakefile"
        snakefile.write_text(SYNTHETIC)
        (workdir / "model").mkdir()
        (workdir / "data").mkdir()
        extra = ["--config", f"chunks={args.chunks}", f"parts={args.parts}"]

    every = prepare(workdir, snakefile, extra, args.chunks, args.workflow == "distillery")
    written = write_half(workdir, every)
    missing = sorted(set(every) - written)
    # The anchor plans the same files in the same folder, with the leanest rule Snakemake allows.
    anchor = args.work / "Snakefile.anchor"
    anchor.write_text(ANCHOR)
    workflows = {args.workflow: (snakefile, extra), "anchor": (anchor, [])}
    if args.before and args.workflow == "distillery":
        workflows["before"] = (args.before.resolve(), extra)
    measured = timed_dry_runs(workdir, workflows, args.repeats)

    record = new_record(
        "dry_run_scale",
        workflow=args.workflow,
        before=str(args.before) if args.before else None,
        configfile=str(args.configfile) if args.configfile else None,
        chunks=len(every),
        chunks_done=len(written),
        results={},
    )
    print(f"{len(every)} chunks, {len(written)} written; snakemake -n (best of {args.repeats}):")
    print("| workflow | lists exactly the missing chunks | `-n` (s) | its CPU (s) | `-n -q` (s) | its CPU (s) |")
    print("|---|---|---|---|---|---|")
    for name, result in measured.items():
        exact = sorted(result.pop("planned")) == missing
        record["results"][name] = {**result, "lists_exactly_the_missing_chunks": exact}
        keys = ("listing_s", "listing_cpu_s", "summary_only_s", "summary_only_cpu_s")
        print(f"| {name} | {exact} | {' | '.join(', '.join(map(str, result[key])) for key in keys)} |")
    save_result(args.results_dir, f"dry_run_scale-{args.workflow}", record)
    if not all(r["lists_exactly_the_missing_chunks"] for r in record["results"].values()):
        raise SystemExit("a dry run did not list exactly the missing chunks")


if __name__ == "__main__":
    main()
