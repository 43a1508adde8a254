"""Shared parts of the benchmarks: measuring a child process, describing the machine, saving results.

A child's peak RSS comes from `wait4`'s ru_maxrss, which starts from the parent's RSS at fork time, so the
parent (the benchmark script) keeps torch out of its own process: heavy steps run in helper interpreters.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_measured(command: list[str]) -> dict:
    """Wall seconds and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(command)}\n{stderr[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_bytes": usage.ru_maxrss * 1024}


def in_helper_process(module: str, function: str, *args) -> object:
    """Run `module.function(*args)` (a benchmark module) in a fresh interpreter and return its JSON result."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); sys.path.insert(0, {str(HERE.parent)!r}); "
        f"import {module} as m; print(json.dumps(m.{function}(*json.loads(sys.argv[1]))))"
    )
    arguments = json.dumps([str(a) if isinstance(a, Path) else a for a in args])
    result = subprocess.run([sys.executable, "-c", code, arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{module}.{function} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def outputs_identical(first: str, second: str) -> bool:
    """Same tensor names, dtypes and values in two model folders (call through in_helper_process)."""
    from workflow_scripts.formats.hf_checkpoint import open_checkpoint

    ours, theirs = open_checkpoint(first).tensors, open_checkpoint(second).tensors
    if ours.keys() != theirs.keys():
        return False
    return all(ours[name].load().equal(theirs[name].load()) for name in ours)


def versions() -> dict:
    from importlib import metadata

    from workflow_scripts.provenance import package_versions

    found = package_versions()
    # The workflow runs of the multi-GPU benchmarks depend on it; provenance records leave it out.
    with contextlib.suppress(metadata.PackageNotFoundError):
        found["snakemake"] = metadata.version("snakemake")
    return found


def machine() -> dict:
    import psutil

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)  # fmt: skip
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
    }


def gpu_names() -> list[str]:
    try:
        probe = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        )
    except FileNotFoundError:
        return []
    return probe.stdout.strip().splitlines() if probe.returncode == 0 else []


def new_record(benchmark: str, machine_info: dict | None = None, **fields) -> dict:
    """The fields every saved result starts with: what ran, when, where, with which versions."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(timezone.utc).isoformat(),
        "command": [sys.executable, *sys.argv],
        "machine": {**(machine_info or machine()), "gpus": gpu_names()},
        "versions": versions(),
        **fields,
    }


def result_path(results_dir: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return results_dir / f"{name}-{stamp}.json"


def write_result(path: Path, record: dict) -> Path:
    """Write (or rewrite) a result file whole: a benchmark of several parts saves after each, so a run cut short
    by a time limit still leaves what finished, and never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.partial")
    staged.write_text(json.dumps(record, indent=2) + "\n")
    staged.replace(path)
    print(f"saved {path}", flush=True)
    return path


def save_result(results_dir: Path, name: str, record: dict) -> Path:
    return write_result(result_path(results_dir, name), record)


def child_result(command: list[str], env: dict | None = None, timeout: float | None = None) -> tuple[dict | None, str]:
    """Run a child that prints its result as one `RESULT {json}` line (vLLM must start from a script's
    `__main__`, so engine runs are children): (the result, or None if it failed, and its stderr)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
        return None, f"{stderr}\ntimed out after {timeout} s"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return None, f"{done.stdout[-2000:]}\n{done.stderr}"
    return json.loads(lines[-1][len("RESULT ") :]), done.stderr


class GpuSampler:
    """Samples each GPU's memory use and utilization (nvidia-smi, every `interval` s) while a run lasts: which
    GPUs a run used, read from outside the run. On a machine without nvidia-smi it records nothing."""

    QUERY = ["nvidia-smi", "--query-gpu=index,memory.used,utilization.gpu", "--format=csv,noheader,nounits"]

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[list[tuple[int, int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                probe = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=10)
            except (FileNotFoundError, subprocess.TimeoutExpired):
                return
            rows = [line.split(",") for line in probe.stdout.strip().splitlines()] if probe.returncode == 0 else []
            if rows and all(len(row) == 3 and all(v.strip().isdigit() for v in row) for row in rows):
                self.samples.append([tuple(int(value) for value in row) for row in rows])
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, dict]:
        """Per GPU index: peak memory used (MiB), peak and mean utilization (%), over the samples taken."""
        per_gpu: dict[str, dict] = {}
        for sample in self.samples:
            for index, memory, utilization in sample:
                gpu = per_gpu.setdefault(str(index), {"peak_memory_mib": 0, "peak_utilization": 0, "_sum": 0})
                gpu["peak_memory_mib"] = max(gpu["peak_memory_mib"], memory)
                gpu["peak_utilization"] = max(gpu["peak_utilization"], utilization)
                gpu["_sum"] += utilization
        for gpu in per_gpu.values():
            gpu["mean_utilization"] = round(gpu.pop("_sum") / len(self.samples), 1)
        return per_gpu


def print_table(summary: dict[str, dict], model_bytes: int) -> None:
    print("| tool | best wall (s) | peak RSS (MB) | peak RSS / model bytes |")
    print("|---|---|---|---|")
    for name, row in summary.items():
        print(f"| {name} | {row['best_wall_s']} | {row['max_peak_rss_bytes'] / 1e6:.0f} | "
              f"{row['max_peak_rss_bytes'] / model_bytes:.1%} |")  # fmt: skip


def summarize(runs: dict[str, list[dict]], model_bytes: int) -> dict[str, dict]:
    summary = {}
    for name, measurements in runs.items():
        peak = max(m["peak_rss_bytes"] for m in measurements)
        summary[name] = {
            "best_wall_s": min(m["wall_s"] for m in measurements),
            "max_peak_rss_bytes": peak,
            "peak_rss_share_of_model": round(peak / model_bytes, 3),
            "runs": measurements,
        }
    return summary


def measure_rounds(commands: dict[str, list[str]], outputs: dict[str, Path], repeats: int) -> dict[str, list[dict]]:
    """Run each command `repeats` times, alternating them, each into a freshly emptied output folder."""
    import shutil

    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for round_index in range(repeats):
        for name, command in commands.items():
            shutil.rmtree(outputs[name], ignore_errors=True)
            measured = run_measured(command)
            runs[name].append(measured)
            print(f"round {round_index + 1} {name}: {measured['wall_s']} s, "
                  f"{measured['peak_rss_bytes'] / 1e6:.0f} MB peak RSS", flush=True)  # fmt: skip
    return runs
