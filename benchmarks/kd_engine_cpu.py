"""KD chunk jobs with an engine each against chunk jobs streaming to one engine job, on the CPU (transformers).

The same manifest (a tiny random Llama, one parquet file split into `--chunks` chunks) generated twice, fresh:
- own engines (the anchor, the path `engine_server: false` keeps): `distillery kd-chunk` once per chunk, one
  after another, each loading the model itself;
- engine job: one `distillery kd-engine` and every chunk's `distillery kd-chunk --engine-address` at once, the
  rows of all chunks batched together by the server.
Reported per path: wall seconds end to end (engine starts included), rows and rows/s end to end, and rows/s
while generating (the chunks' own generate_seconds; on the engine path the union of their spans). The two
paths are alternated `--repeats` times; compare only numbers of one run.

    python benchmarks/kd_engine_cpu.py [--rows 128 --chunks 4 --max-tokens 16 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))


def distillery(*args: str) -> list[str]:
    return [sys.executable, "-m", "workflow_scripts.cli", *args]


def run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")


def prepare(work: Path, args) -> Path:
    from workflow_scripts.architectures.tiny import build_tiny_model
    from workflow_scripts.kd.tiny_dataset import write_tiny_dataset

    if not (work / "model/config.json").exists():
        build_tiny_model(work / "model")
    shutil.rmtree(work / "data", ignore_errors=True)
    write_tiny_dataset(work / "data", files=1, rows=args.rows, row_group_rows=64)
    return work / "model"


def manifest(work: Path, folder: Path, model: Path, args) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    path = folder / "manifest.json"
    run(distillery("kd-manifest", "--output", str(path), "--model-path", str(model), "--dataset", str(work / "data"),
                   "--engine", "transformers", "--chunk-rows", str(-(-args.rows // args.chunks)),
                   "--max-prompt-tokens", "24", "--max-tokens", str(args.max_tokens),
                   "--gen-batch-size", str(args.batch), "--seed", "1"))  # fmt: skip
    return path


def chunk_names(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    return [f"{c['part']}/{c['start']:09d}-{c['stop']:09d}" for c in data["chunks"]]


def chunk_stats(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("chunks/*/*.stats.json"))]


def own_engines(path: Path) -> float:
    started = time.perf_counter()
    for name in chunk_names(path):
        run(distillery("kd-chunk", "--manifest", str(path), "--chunk", name))
    return time.perf_counter() - started


def engine_job(path: Path) -> float:
    address = path.parent / "engine.json"
    started = time.perf_counter()
    engine = subprocess.Popen(distillery("kd-engine", "--manifest", str(path), "--address", str(address)),
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while not address.exists():
            time.sleep(0.05)
        chunks = [subprocess.Popen(distillery("kd-chunk", "--manifest", str(path), "--chunk", name,
                                              "--engine-address", str(address)),
                                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                  for name in chunk_names(path)]  # fmt: skip
        for chunk in chunks:
            if chunk.wait() != 0:
                raise SystemExit(f"a chunk failed: {chunk.stderr.read().decode()[-2000:]}")
        return time.perf_counter() - started
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait()


def measured(folder: Path, wall: float) -> dict:
    from workflow_scripts.kd.dataset import busy_seconds

    stats = chunk_stats(folder)
    rows = sum(s["generated_rows"] for s in stats)
    generating = busy_seconds(stats)
    return {
        "wall_seconds": round(wall, 2),
        "rows": rows,
        "output_tokens": sum(s["completion_tokens"] for s in stats),
        "rows_per_second_end_to_end": round(rows / wall, 3),
        "generating_seconds": round(generating, 2),
        "rows_per_second_generating": round(rows / generating, 3),
        "engine_start_seconds": sorted({s["engine_id"]: s["engine_start_seconds"] for s in stats}.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/kd_engine_cpu"))
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from harness import new_record, save_result

    args.work.mkdir(parents=True, exist_ok=True)
    model = prepare(args.work, args)
    runs: dict[str, list[dict]] = {"own engines": [], "engine job": []}
    for _ in range(args.repeats):
        for name, path_runner in (("own engines", own_engines), ("engine job", engine_job)):
            folder = args.work / name.replace(" ", "-")
            path = manifest(args.work, folder, model, args)
            runs[name].append(measured(folder, path_runner(path)))
            print(name, runs[name][-1], flush=True)
    print(f"\n{'':12} {'wall s':>8} {'rows/s e2e':>11} {'rows/s generating':>18}")
    for name, results in runs.items():
        for r in results:
            print(f"{name:12} {r['wall_seconds']:>8} {r['rows_per_second_end_to_end']:>11} "
                  f"{r['rows_per_second_generating']:>18}")  # fmt: skip
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    save_result(args.out, "kd_engine_cpu", new_record("kd_engine_cpu", settings=settings, runs=runs))


if __name__ == "__main__":
    main()
