"""vLLM check of consolidated models: does vLLM load what `distillery consolidate` writes, and agree with HF?

For each case, a tiny source checkpoint is built in some layout, consolidated and verified with distillery, then
loaded by vLLM (in-process `vllm.LLM`) and by HF transformers on the same GPU, both in bfloat16. The anchor is
transformers: the prompt-token log-probabilities of probe prompts (vLLM's `prompt_logprobs`) and greedy
continuations are compared. Prints a table and saves JSON with the machine and versions.

    python benchmarks/vllm_compat.py --results-dir benchmarks/results      (needs a GPU and vLLM)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

PROMPTS = [
    "The capital of France is",
    "Checkpoints are converted to safetensors and verified before serving.",
    "Question: what is two plus two? Answer:",
]
# (case name, architecture, source layout, consolidate flags)
CASES = [
    ("llama-sharded-safetensors-to-bf16", "llama", "safetensors_sharded", ["--dtype", "bfloat16"]),
    ("qwen3-tied-bin-to-fp32", "qwen3", "bin", ["--dtype", "float32"]),
    ("llama-bin-shards-to-sharded-output", "llama", "bin_sharded", ["--dtype", "bfloat16", "--max-shard-size", "1MB"]),
    ("qwen3-nested-bin-keep-precision", "qwen3", "bin_nested", ["--keep-original-precision"]),
]


def build_and_consolidate(work: Path, name: str, architecture: str, layout: str, flags: list[str]) -> dict:
    from workflow_scripts.architectures.tiny import TinyModelSpec, build_tiny_model
    from workflow_scripts.cli import main as distillery
    from workflow_scripts.verify.run import verify_model

    source, output = work / f"{name}-source", work / f"{name}-hf"
    spec = TinyModelSpec(
        architecture=architecture,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    )
    build_tiny_model(source, spec, layout, seed=3, dtype="float32", max_shard_size="200KB")
    start = time.perf_counter()
    code = distillery(["consolidate", "--input", str(source), "--output", str(output), "--force", *flags])
    if code != 0:
        raise RuntimeError(f"distillery consolidate exited {code}")
    seconds = time.perf_counter() - start
    report = verify_model(output, reference_path=source)
    return {
        "source": str(source),
        "model": str(output),
        "weights": sorted(p.name for p in output.iterdir() if "safetensors" in p.name),
        "consolidate_s": round(seconds, 2),
        "verify_passed": report.passed,
        "verify_failed_checks": [c.name for c in report.failures],
    }


def hf_reference(model_path: str, token_ids: list[list[int]], new_tokens: int) -> tuple[list, list]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).cuda().eval()
    prompt_logprobs, greedy = [], []
    with torch.no_grad():
        for ids in token_ids:
            batch = torch.tensor([ids], device="cuda")
            logprobs = torch.log_softmax(model(batch).logits.float(), dim=-1)[0]
            prompt_logprobs.append([float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))])
            out = model.generate(batch, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
            greedy.append(out[0, len(ids) :].tolist())
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return prompt_logprobs, greedy


def vllm_run(model_path: str, token_ids: list[list[int]], new_tokens: int) -> tuple[list, list, float]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    start = time.perf_counter()
    llm = LLM(
        model=model_path,
        dtype="bfloat16",
        enforce_eager=True,
        gpu_memory_utilization=0.2,
        max_model_len=256,
        seed=0,
    )
    startup = time.perf_counter() - start
    params = SamplingParams(
        temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, prompt_logprobs=0, detokenize=False
    )
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], params)
    prompt_logprobs, greedy = [], []
    for ids, output in zip(token_ids, outputs, strict=True):
        # prompt_logprobs[0] is None; each later entry maps token id -> Logprob, the prompt token among them.
        prompt_logprobs.append([entry[ids[i]].logprob for i, entry in enumerate(output.prompt_logprobs) if i > 0])
        greedy.append(list(output.outputs[0].token_ids))
    del llm
    gc.collect()
    return prompt_logprobs, greedy, startup


def compare(case: dict, new_tokens: int) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(case["model"])
    token_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    hf_logprobs, hf_greedy = hf_reference(case["model"], token_ids, new_tokens)
    vllm_logprobs, vllm_greedy, startup = vllm_run(case["model"], token_ids, new_tokens)
    diffs = [abs(a - b) for hf, vl in zip(hf_logprobs, vllm_logprobs, strict=True) for a, b in zip(hf, vl, strict=True)]
    matched = sum(a == b for hf, vl in zip(hf_greedy, vllm_greedy, strict=True) for a, b in zip(hf, vl, strict=True))
    return {
        "vllm_loaded": True,
        "vllm_engine_start_s": round(startup, 1),
        "prompt_tokens_compared": len(diffs),
        "max_abs_logprob_diff": round(max(diffs), 4),
        "mean_abs_logprob_diff": round(sum(diffs) / len(diffs), 5),
        "greedy_tokens_matching": f"{matched}/{len(PROMPTS) * new_tokens}",
    }


def main() -> None:
    from harness import new_record, save_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/distillery-vllm-compat"))
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--skip-vllm", action="store_true", help="only build, consolidate and verify")
    args = parser.parse_args()

    shutil.rmtree(args.work_dir, ignore_errors=True)
    args.work_dir.mkdir(parents=True)
    rows = []
    for name, architecture, layout, flags in CASES:
        row = {"case": name, "source_layout": layout, "flags": flags}
        try:
            row.update(build_and_consolidate(args.work_dir, name, architecture, layout, flags))
            if not args.skip_vllm:
                row.update(compare(row, args.new_tokens))
        except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others
            row["error"] = f"{exc.__class__.__name__}: {exc}"
            row["traceback"] = traceback.format_exc()[-3000:]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)

    print()
    print("| case | weights | verify | vLLM loads | engine start (s) | max / mean abs logprob diff | greedy match |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['case']} | {', '.join(row.get('weights', [])) or '-'} | "
            f"{'pass' if row.get('verify_passed') else 'FAIL'} | {'yes' if row.get('vllm_loaded') else 'NO'} | "
            f"{row.get('vllm_engine_start_s', '-')} | {row.get('max_abs_logprob_diff', '-')} / "
            f"{row.get('mean_abs_logprob_diff', '-')} | {row.get('greedy_tokens_matching', '-')} |"
        )
    record = new_record(
        "vllm_compat", machine_info={"host": platform.node(), "platform": platform.platform()}, cases=rows
    )
    save_result(args.results_dir, "vllm_compat", record)


if __name__ == "__main__":
    main()
