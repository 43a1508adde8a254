"""Do validate-plans' verdicts agree with what vLLM does at tensor- and pipeline-parallel sizes on real GPUs?

Each model is built by `distillery make-tiny-model` (nothing downloaded); for each case `distillery
validate-plans` gives its verdict for (T, P), and vLLM (`LLM`, in a child process per case so a refusal cannot
take the others down) loads the model at that size and generates 8 greedy tokens. Next to each verdict: whether
vLLM served, its error if not, and how it actually split the model (layers, attention and KV heads of each rank,
asked of its workers), against the validator's layers per stage and heads per GPU; and whether vLLM's tokens equal
transformers' (the model unsplit, on the CPU). The record is saved after each case.

    python benchmarks/parallel_plans_vllm.py --out DIR                  (2 GPUs and vLLM; the issue-18 cases)
    python benchmarks/parallel_plans_vllm.py --out DIR --cases all      (also the cases of the first 2-GPU run)
    python benchmarks/parallel_plans_vllm.py --out DIR --dry-run        (CPU: models, verdicts, reference tokens)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

MODELS = {
    "heads3": dict(num_heads=3, num_kv_heads=3, hidden_size=192, num_layers=2),
    "kv1": dict(num_heads=4, num_kv_heads=1, hidden_size=256, num_layers=2),
    "layers3": dict(num_heads=4, num_kv_heads=2, hidden_size=256, num_layers=3),
    "base": dict(num_heads=4, num_kv_heads=2, hidden_size=256, num_layers=2),
    "layers1": dict(num_heads=4, num_kv_heads=2, hidden_size=256, num_layers=1),
}
# id: (model, T, P, what the case shows)
CASES = {
    "heads3-t2": ("heads3", 2, 1, "3 heads at T=2: heads that do not divide by 2"),
    "heads3-p2": ("heads3", 1, 2, "3 heads at P=2: stages do not split heads"),
    "kv1-t2": ("kv1", 2, 1, "1 KV head at T=2: replicated on each GPU"),
    "kv1-p2": ("kv1", 1, 2, "1 KV head at P=2"),
    "layers3-p2": ("layers3", 1, 2, "3 layers at P=2: an uneven split"),
    "layers3-t2": ("layers3", 2, 1, "3 layers at T=2"),
    "base-t2": ("base", 2, 1, "4 heads, 2 KV heads at T=2"),
    "base-p2": ("base", 1, 2, "2 layers at P=2"),
    "layers1-p2": ("layers1", 1, 2, "1 layer at P=2: a stage with no layer"),
    "base-t1": ("base", 1, 1, "unsplit: vLLM's own tokens against transformers' (one GPU)"),
}
ISSUE_18 = ["heads3-t2", "heads3-p2", "kv1-t2", "kv1-p2", "layers3-p2", "layers3-t2"]
PROMPT = [1, 2, 3, 4]
NEW_TOKENS = 8

# The child that loads a model in vLLM at (T, P): it generates, then asks every worker how it holds the model
# (a function sent to the workers needs VLLM_ALLOW_INSECURE_SERIALIZATION; its failure is recorded, not fatal).
LOAD = """
import json, os, sys
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt


def split_of_worker(worker):
    from vllm.distributed import get_pp_group, get_tp_group

    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    inner = getattr(model, "model", model)
    start, end = getattr(inner, "start_layer", None), getattr(inner, "end_layer", None)
    attention = inner.layers[start].self_attn if start is not None and end > start else None
    return {"tp_rank": get_tp_group().rank_in_group, "pp_rank": get_pp_group().rank_in_group,
            "layers": [start, end], "heads": getattr(attention, "num_heads", None),
            "kv_heads": getattr(attention, "num_kv_heads", None)}


if __name__ == "__main__":
    model, tp, pp, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    prompt = json.loads(sys.argv[5])
    llm = LLM(model=model, tensor_parallel_size=tp, pipeline_parallel_size=pp, enforce_eager=True,
              gpu_memory_utilization=0.3, max_model_len=256, dtype="bfloat16", seed=0)
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt)],
                       SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0,
                                      detokenize=False))
    result = {"tokens": list(out[0].outputs[0].token_ids)}
    try:
        result["ranks"] = sorted(llm.collective_rpc(split_of_worker), key=lambda r: (r["pp_rank"], r["tp_rank"]))
    except Exception as exc:
        result["ranks_error"] = f"{type(exc).__name__}: {exc}"[:400]
    print("RESULT " + json.dumps(result), flush=True)
"""


def distillery(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflow_scripts.cli", *args], capture_output=True, text=True,
                          cwd=REPO)  # fmt: skip


def transformers_tokens(model: str, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens of the whole model in transformers on the CPU (float32): the reference for every split."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    with torch.no_grad():
        out = loaded.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, pad_token_id=0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


def build_model(work: Path, name: str) -> tuple[Path, list[int]]:
    """The model `name` of MODELS, built by the project's own command, and its reference tokens."""
    from harness import in_helper_process

    folder = work / name
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in MODELS[name].items()]
    made = distillery("make-tiny-model", "--output", str(folder), "--force", "--dtype", "bfloat16",
                      "--intermediate-size", "512", *flags)  # fmt: skip
    if made.returncode:
        raise SystemExit(f"make-tiny-model failed for {name}: {made.stderr.strip()[-500:]}")
    return folder, in_helper_process("parallel_plans_vllm", "transformers_tokens", folder, PROMPT, NEW_TOKENS)


def validator_verdict(model: Path, tp: int, pp: int, report: Path) -> dict:
    """validate-plans' exit status, last line, failed checks, and the split it predicts."""
    run = distillery("validate-plans", str(model), "--tp", str(tp), "--pp", str(pp), "--output", str(report))
    checks = {check["name"]: check for check in json.loads(report.read_text())["checks"]} if report.exists() else {}
    data = {name: check.get("data", {}) for name, check in checks.items()}
    return {
        "validator_accepts": run.returncode == 0,
        "validator_verdict": (run.stdout.strip().splitlines() or [run.stderr.strip()])[-1],
        "validator_failed": [name for name, check in checks.items() if check["status"] == "fail"],
        "validator_warned": [name for name, check in checks.items() if check["status"] == "warn"],
        "validator_layers_per_stage": data.get("pp_layers", {}).get("layers_per_stage"),
        "validator_heads_per_gpu": data.get("tp_heads", {}).get("heads_per_gpu"),
        "validator_kv_heads_per_gpu": data.get("tp_kv_heads", {}).get("kv_heads_per_gpu"),
    }


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


def vllm_split(ranks: list[dict]) -> dict:
    """What vLLM's workers hold: layers per pipeline stage (its first tensor rank), heads per GPU."""
    first_tensor_rank = [rank for rank in ranks if rank["tp_rank"] == 0]
    return {
        "vllm_layers_per_stage": [rank["layers"][1] - rank["layers"][0] for rank in first_tensor_rank],
        "vllm_heads_per_gpu": sorted({rank["heads"] for rank in ranks if rank["heads"] is not None}),
        "vllm_kv_heads_per_gpu": sorted({rank["kv_heads"] for rank in ranks if rank["kv_heads"] is not None}),
    }


def vllm_outcome(model: Path, tp: int, pp: int, timeout: float) -> dict:
    from harness import child_result

    command = [sys.executable, "-c", LOAD, str(model), str(tp), str(pp), str(NEW_TOKENS), json.dumps(PROMPT)]
    result, stderr = child_result(command, timeout=timeout)
    if result is None:
        return {"vllm_serves": False, "vllm_error": root_cause(stderr),
                "vllm_stderr_tail": "\n".join(stderr.strip().splitlines()[-40:])}  # fmt: skip
    outcome = {"vllm_serves": True, "vllm_tokens": result["tokens"], **result}
    del outcome["tokens"]
    if "ranks" in result:
        outcome.update(vllm_split(result["ranks"]))
    return outcome


def agreement(row: dict) -> dict:
    """Where the verdict and vLLM can be compared: served or refused, and the split itself when both exist."""
    checks = {"agree": row["validator_accepts"] == row["vllm_serves"]}
    if row.get("vllm_layers_per_stage") and row["validator_layers_per_stage"]:
        checks["layers_agree"] = row["vllm_layers_per_stage"] == row["validator_layers_per_stage"]
    for what in ("heads", "kv_heads"):
        predicted, held = row[f"validator_{what}_per_gpu"], row.get(f"vllm_{what}_per_gpu")
        if predicted is not None and held:
            checks[f"{what}_agree"] = held == [predicted]
    if row.get("vllm_tokens") is not None:
        checks["tokens_equal_transformers"] = row["vllm_tokens"] == row["transformers_tokens"]
    return checks


def run_case(work: Path, case: str, model: Path, reference: list[int], args) -> dict:
    name, tp, pp, shows = CASES[case]
    row = {"case": case, "model": name, "sizes": MODELS[name], "tp": tp, "pp": pp, "shows": shows,
           "transformers_tokens": reference}  # fmt: skip
    row.update(validator_verdict(model, tp, pp, work / f"{case}-plans.json"))
    if args.dry_run:
        return row
    row.update(vllm_outcome(model, tp, pp, args.load_timeout))
    row.update(agreement(row))
    return row


def print_table(rows: list[dict]) -> None:
    print("\n| case | T | P | validate-plans | vLLM | agree | layers per stage (validator / vLLM) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        vllm = "-" if "vllm_serves" not in row else "serves" if row["vllm_serves"] else f"fails: {row['vllm_error']}"
        layers = f"{row['validator_layers_per_stage']} / {row.get('vllm_layers_per_stage', '-')}"
        print(f"| {row['case']} | {row['tp']} | {row['pp']} | {row['validator_verdict']} | {vllm[:120]} "
              f"| {row.get('agree', '-')} | {layers} |")  # fmt: skip


def chosen_cases(text: str) -> list[str]:
    if text == "all":
        return list(CASES)
    cases = text.split(",") if text else ISSUE_18
    unknown = [case for case in cases if case not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)} or 'all'")
    return cases


def main() -> None:
    sys.path.insert(0, str(HERE))
    from harness import new_record, result_path, write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", "--results-dir", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/distillery-parallel-plans"))
    parser.add_argument("--dry-run", "--skip-vllm", action="store_true", help="the CPU part only (no vLLM)")
    parser.add_argument("--cases", default="", help=f"comma-separated ids, or all (default: {','.join(ISSUE_18)})")
    parser.add_argument("--load-timeout", type=float, default=300, help="seconds for one vLLM load (300)")
    args = parser.parse_args()
    cases = chosen_cases(args.cases)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    path = result_path(args.out, f"parallel_plans_vllm{'-dry-run' if args.dry_run else ''}")
    record = new_record("parallel_plans_vllm", cases=[], dry_run=args.dry_run)
    models: dict[str, tuple[Path, list[int]]] = {}
    for case in cases:
        model = CASES[case][0]
        if model not in models:
            models[model] = build_model(args.work_dir, model)
        record["cases"].append(run_case(args.work_dir, case, *models[model], args))
        print(json.dumps({k: v for k, v in record["cases"][-1].items() if k != "vllm_stderr_tail"}), flush=True)
        write_result(path, record)
    print_table(record["cases"])


if __name__ == "__main__":
    main()
