"""TorchTitan checkpoints in vLLM, both routes: the registered TorchTitan classes vs the `titan-to-hf` conversion.

For each case a tiny TorchTitan-named checkpoint is built (random weights under TorchTitan's names and layouts:
the vLLM guide's names or torchtitan 0.3's, tied or not, a raw fused `qkv_linear.wqkv`), twice: as the guide's
folder (config.json with `"architectures": ["TorchTitanQwen3ForCausalLM"]` or `TorchTitanLlamaForCausalLM`,
TorchTitan-named safetensors, tokenizer) and as a torch.distributed.checkpoint folder. The first is served by vLLM
through distillery's registered class (direct route); the second is converted with `distillery titan-to-hf` and the
HF folder is served by vLLM's own Qwen3/Llama (anchor). Greedy token ids must be equal, and the prompt-token
log-probabilities too (same kernels, same weights). Token ids only: the models are random.

The classes reach vLLM's processes through the `vllm.general_plugins` entry point: distillery need not be pip
installed, the script writes a minimal dist-info declaring the same entry point as pyproject.toml onto PYTHONPATH,
and also calls `register()` itself, as a user's script would.

    PYTHONPATH=$PWD python benchmarks/titan_vllm.py --out $OUT        (GPU + vLLM 0.26; source env.sh first)

The TorchTitan forward itself is compared with the HF conversion in CI (tests/test_titan_to_hf.py), where the
torchtitan package builds the models; it is not needed here.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

PROMPTS = [
    "The capital of France is",
    "Checkpoints are converted to safetensors and verified before serving.",
    "Question: what is two plus two? Answer:",
]
SIZES = dict(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64, hidden_dim=512, vocab_size=512)
# (case, family, naming, tied, raw fused wqkv)
CASES = [
    ("qwen3-guide-names-tied", "qwen3", "guide", True, False),
    ("qwen3-titan-0.3-names", "qwen3", "titan-0.3", False, False),
    ("llama3-guide-names", "llama", "guide", False, False),
    ("llama3-titan-0.3-names-fused-wqkv", "llama", "titan-0.3", False, True),
]


def install_plugin_metadata(folder: Path) -> None:
    """A dist-info on PYTHONPATH declaring distillery's vllm.general_plugins entry point (as pyproject does)."""
    import tomllib

    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["vllm.general_plugins"]
    info = folder / "distillery_vllm_plugin-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: distillery-vllm-plugin\nVersion: 0.0.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry.items())
    (info / "entry_points.txt").write_text(f"[vllm.general_plugins]\n{lines}")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")])
    sys.path.insert(0, str(folder))


def _random(name: str, shape: tuple[int, ...], std: float):
    import torch

    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


def titan_state_dict(family: str, naming: str, tied: bool, fused: bool) -> dict:
    """TorchTitan-named float32 tensors of a tiny model, shapes as TorchTitan's modules define them."""
    import torch

    s = SIZES
    head_dim = s["head_dim"] if family == "qwen3" else s["dim"] // s["n_heads"]
    q, kv = s["n_heads"] * head_dim, s["n_kv_heads"] * head_dim
    attention = "attention." if naming == "guide" else "attention.qkv_linear."
    state = {"tok_embeddings.weight": _random("embed", (s["vocab_size"], s["dim"]), 1.0)}
    for layer in range(s["n_layers"]):
        p = f"layers.{layer}."
        wq, wk, wv = (_random(p + n, (rows, s["dim"]), 0.05) for n, rows in (("wq", q), ("wk", kv), ("wv", kv)))
        if fused:  # torchtitan 0.3's FusedQKVLinear parameter: (n_kv_heads, heads_per_kv + 2, head_dim, dim)
            per_kv = s["n_heads"] // s["n_kv_heads"]
            grouped = [wq.view(s["n_kv_heads"], per_kv, head_dim, -1), wk.view(s["n_kv_heads"], 1, head_dim, -1),
                       wv.view(s["n_kv_heads"], 1, head_dim, -1)]  # fmt: skip
            state[p + "attention.qkv_linear.wqkv.weight"] = torch.cat(grouped, dim=1).reshape(q + 2 * kv, -1)
        else:
            state.update({p + attention + "wq.weight": wq, p + attention + "wk.weight": wk,
                          p + attention + "wv.weight": wv})  # fmt: skip
        state[p + "attention.wo.weight"] = _random(p + "wo", (s["dim"], q), 0.05)
        if family == "qwen3":
            state[p + "attention.q_norm.weight"] = 1 + _random(p + "qn", (head_dim,), 0.1)
            state[p + "attention.k_norm.weight"] = 1 + _random(p + "kn", (head_dim,), 0.1)
        state[p + "feed_forward.w1.weight"] = _random(p + "w1", (s["hidden_dim"], s["dim"]), 0.05)
        state[p + "feed_forward.w2.weight"] = _random(p + "w2", (s["dim"], s["hidden_dim"]), 0.05)
        state[p + "feed_forward.w3.weight"] = _random(p + "w3", (s["hidden_dim"], s["dim"]), 0.05)
        state[p + "attention_norm.weight"] = 1 + _random(p + "an", (s["dim"],), 0.1)
        state[p + "ffn_norm.weight"] = 1 + _random(p + "fn", (s["dim"],), 0.1)
    state["norm.weight"] = 1 + _random("norm", (s["dim"],), 0.1)
    output = state["tok_embeddings.weight"].clone() if tied else _random("output", (s["vocab_size"], s["dim"]), 0.05)
    state["output.weight" if naming == "guide" else "lm_head.weight"] = output
    return state


def config_json(family: str, tied: bool, tokenizer) -> dict:
    s = SIZES
    config = {
        "architectures": ["TorchTitanQwen3ForCausalLM" if family == "qwen3" else "TorchTitanLlamaForCausalLM"],
        "model_type": family,
        "hidden_size": s["dim"],
        "intermediate_size": s["hidden_dim"],
        "num_attention_heads": s["n_heads"],
        "num_hidden_layers": s["n_layers"],
        "num_key_value_heads": s["n_kv_heads"],
        "head_dim": s["head_dim"] if family == "qwen3" else s["dim"] // s["n_heads"],
        "vocab_size": s["vocab_size"],
        "max_position_embeddings": 131072 if family == "llama" else 4096,
        "rope_theta": 500000.0 if family == "llama" else 1000000.0,
        "rms_norm_eps": 1e-5 if family == "llama" else 1e-6,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "torch_dtype": "float32",
    }
    if family == "llama":
        config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    return config


def build_case(work: Path, name: str, family: str, naming: str, tied: bool, fused: bool) -> dict:
    """The guide's folder (TorchTitan-named safetensors + config.json), a DCP of the same tensors, and its
    titan-to-hf conversion."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    from workflow_scripts.architectures.tiny import train_tokenizer
    from workflow_scripts.cli import main as distillery

    tokenizer = train_tokenizer(SIZES["vocab_size"])
    state = titan_state_dict(family, naming, tied, fused)
    direct, checkpoint, converted = work / f"{name}-titan", work / f"{name}-dcp", work / f"{name}-hf"
    direct.mkdir(parents=True)
    tokenizer.save_pretrained(direct)
    (direct / "config.json").write_text(json.dumps(config_json(family, tied, tokenizer), indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, direct / "model.safetensors", metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(checkpoint)), no_dist=True)
    start = time.perf_counter()
    code = distillery(["titan-to-hf", "--input", str(checkpoint), "--output", str(converted),
                       "--config", str(direct / "config.json"), "--tokenizer", str(direct)])  # fmt: skip
    if code != 0:
        raise RuntimeError(f"distillery titan-to-hf exited {code}")
    return {
        "direct_folder": str(direct),
        "converted_folder": str(converted),
        "titan_names": sorted(state)[:6] + ["..."],
        "titan_to_hf_s": round(time.perf_counter() - start, 2),
        "converted_architecture": json.loads((converted / "config.json").read_text())["architectures"][0],
    }


def vllm_generate(model_path: str, token_ids: list[list[int]], new_tokens: int) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    start = time.perf_counter()
    llm = LLM(model=model_path, dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=0.2,
              max_model_len=256, seed=0)  # fmt: skip
    startup = time.perf_counter() - start
    architecture = llm.llm_engine.model_config.architectures[0]
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True, prompt_logprobs=0,
                            detokenize=False)  # fmt: skip
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], params)
    greedy = [list(output.outputs[0].token_ids) for output in outputs]
    logprobs = [[entry[ids[i]].logprob for i, entry in enumerate(output.prompt_logprobs) if i > 0]
                for ids, output in zip(token_ids, outputs, strict=True)]  # fmt: skip
    del llm
    gc.collect()
    return {"architecture": architecture, "engine_start_s": round(startup, 1), "greedy": greedy, "logprobs": logprobs}


def compare(case: dict, new_tokens: int) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(case["direct_folder"])
    token_ids = [tokenizer(prompt)["input_ids"] for prompt in PROMPTS]
    direct = vllm_generate(case["direct_folder"], token_ids, new_tokens)
    converted = vllm_generate(case["converted_folder"], token_ids, new_tokens)
    diffs = [abs(a - b) for x, y in zip(direct["logprobs"], converted["logprobs"], strict=True)
             for a, b in zip(x, y, strict=True)]  # fmt: skip
    return {
        "prompt_token_ids": token_ids,
        "direct_vllm_class": direct["architecture"],
        "converted_vllm_class": converted["architecture"],
        "direct_greedy": direct["greedy"],
        "converted_greedy": converted["greedy"],
        "greedy_equal": direct["greedy"] == converted["greedy"],
        "max_abs_prompt_logprob_diff": max(diffs),
        "engine_start_s": [direct["engine_start_s"], converted["engine_start_s"]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/distillery-titan-vllm"))
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()

    shutil.rmtree(args.work_dir, ignore_errors=True)
    args.work_dir.mkdir(parents=True)
    install_plugin_metadata(args.work_dir / "plugin")
    from harness import new_record, save_result

    from workflow_scripts.vllm_models import register

    register()  # as a user's script does; the entry point covers vLLM's other processes
    rows = []
    for name, family, naming, tied, fused in CASES:
        row = {"case": name, "family": family, "naming": naming, "tied": tied, "fused_wqkv": fused}
        try:
            row.update(build_case(args.work_dir, name, family, naming, tied, fused))
            row.update(compare(row, args.new_tokens))
        except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others
            row["error"] = f"{exc.__class__.__name__}: {exc}"
            row["traceback"] = traceback.format_exc()[-3000:]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)

    print("\n| case | direct route class | converted class | greedy ids equal | max abs prompt-logprob diff |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row.get('direct_vllm_class', row.get('error', '-'))} | "
              f"{row.get('converted_vllm_class', '-')} | {row.get('greedy_equal', '-')} | "
              f"{row.get('max_abs_prompt_logprob_diff', '-')} |")  # fmt: skip
    record = new_record("titan_vllm", machine_info={"host": platform.node(), "platform": platform.platform()},
                        sizes=SIZES, prompts=PROMPTS, new_tokens=args.new_tokens, cases=rows)  # fmt: skip
    save_result(args.out, "titan_vllm", record)
    return 0 if all(row.get("greedy_equal") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
