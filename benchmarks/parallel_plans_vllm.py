"""Do validate-plans' verdicts agree with what vLLM does at tensor- and pipeline-parallel sizes on real GPUs?

For each case a tiny model is built and consolidated, `distillery validate-plans` gives its verdict for (T, P),
and vLLM (in-process `LLM`, in a child process per case so a refusal cannot take the others down) tries to load
it at that size and generate. Cases include sizes the validator refuses. Prints a table and saves JSON.

    python benchmarks/parallel_plans_vllm.py --results-dir benchmarks/results     (needs 2 GPUs and vLLM)
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# (case, model sizes, T, P)
CASES = [
    ("4 heads, 2 KV heads at T=2", dict(num_heads=4, num_kv_heads=2, hidden_size=256, num_layers=2), 2, 1),
    ("2 layers at P=2", dict(num_heads=4, num_kv_heads=2, hidden_size=256, num_layers=2), 1, 2),
    ("1 KV head at T=2 (replicated)", dict(num_heads=4, num_kv_heads=1, hidden_size=256, num_layers=2), 2, 1),
    ("3 heads at T=2 (refused)", dict(num_heads=3, num_kv_heads=3, hidden_size=192, num_layers=2), 2, 1),
    ("1 layer at P=2 (refused)", dict(num_heads=4, num_kv_heads=2, hidden_size=256, num_layers=1), 1, 2),
]

LOAD = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
if __name__ == "__main__":
    model, tp, pp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    llm = LLM(model=model, tensor_parallel_size=tp, pipeline_parallel_size=pp, enforce_eager=True,
              gpu_memory_utilization=0.3, max_model_len=256, dtype="bfloat16", seed=0)
    out = llm.generate([TokensPrompt(prompt_token_ids=[1, 2, 3, 4])],
                       SamplingParams(max_tokens=8, min_tokens=8, temperature=0.0, detokenize=False))
    print("RESULT " + json.dumps({"tokens": list(out[0].outputs[0].token_ids)}))
"""


def distillery(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflow_scripts.cli", *args], capture_output=True, text=True,
                          cwd=REPO)  # fmt: skip


def root_cause(stderr: str) -> str:
    """The line that says why vLLM refused, skipping the engine's wrapper errors around it."""
    candidates = [
        line.split(") ", 1)[-1].strip() if line.startswith("(EngineCore") else line.strip()
        for line in stderr.splitlines()
        if re.search(r"(Value error, |\b\w*(Error|Exception): )", line)
        and "Engine core initialization failed" not in line
        and "validation error for" not in line
    ]
    return (candidates[-1] if candidates else (stderr.strip().splitlines() or [""])[-1])[-400:]


def run_case(work: Path, name: str, sizes: dict, tp: int, pp: int, skip_vllm: bool) -> dict:
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    source, model = work / f"{slug}-src", work / f"{slug}-hf"
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in sizes.items()]
    made = distillery("make-tiny-model", "--output", str(source), "--force", "--intermediate-size", "512", *flags)
    if made.returncode:
        return {"case": name, "error": made.stderr[-500:]}
    distillery("consolidate", "--input", str(source), "--output", str(model), "--force", "--dtype", "bfloat16")
    verdict = distillery("validate-plans", str(model), "--tp", str(tp), "--pp", str(pp), "--output",
                         str(work / f"{slug}-plans.json"))  # fmt: skip
    row = {
        "case": name, "tp": tp, "pp": pp, "sizes": sizes,
        "validator_accepts": verdict.returncode == 0,
        "validator_verdict": verdict.stdout.strip().splitlines()[-1],
    }  # fmt: skip
    if skip_vllm:
        return row
    loaded = subprocess.run([sys.executable, "-c", LOAD, str(model), str(tp), str(pp)], capture_output=True,
                            text=True, timeout=420)  # fmt: skip
    result_lines = [line for line in loaded.stdout.splitlines() if line.startswith("RESULT ")]
    row["vllm_serves"] = loaded.returncode == 0 and bool(result_lines)
    if result_lines:
        row["vllm_tokens"] = json.loads(result_lines[-1][7:])["tokens"]
    else:
        row["vllm_error"] = root_cause(loaded.stderr)
        row["vllm_stderr_tail"] = "\n".join(loaded.stderr.strip().splitlines()[-40:])
    row["agree"] = row["validator_accepts"] == row["vllm_serves"]
    return row


def main() -> None:
    sys.path.insert(0, str(HERE))
    from harness import new_record, save_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/distillery-parallel-plans"))
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--cases", help="comma-separated indexes of CASES to run (default: all)")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    chosen = [CASES[int(i)] for i in args.cases.split(",")] if args.cases else CASES
    for name, sizes, tp, pp in chosen:
        rows.append(run_case(args.work_dir, name, sizes, tp, pp, args.skip_vllm))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| case | T | P | validate-plans | vLLM | agree |\n|---|---|---|---|---|---|")
    for row in rows:
        vllm = "serves" if row.get("vllm_serves") else f"fails: {row.get('vllm_error', '-')[:120]}"
        print(f"| {row['case']} | {row.get('tp')} | {row.get('pp')} | {row.get('validator_verdict', row.get('error'))}"
              f" | {vllm if not args.skip_vllm else '-'} | {row.get('agree', '-')} |")  # fmt: skip
    record = new_record(
        "parallel_plans_vllm",
        machine_info={"host": platform.node(), "platform": platform.platform()},
        cases=rows,
    )
    save_result(args.results_dir, "parallel_plans_vllm", record)


if __name__ == "__main__":
    main()
