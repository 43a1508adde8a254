"""`distillery infer`: the guide's inference script, here on the transformers engine (CI has no vLLM)."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def test_infer_prints_each_prompt_with_its_greedy_completion(tiny_model, tmp_path, run_cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = tiny_model("qwen3")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\n\nQuestion: what is two plus two?\n")
    result = run_cli("infer", "--model-path", model_path, "--prompts-file", prompts, "--max-tokens", "6",
                     "--temperature", "0", "--engine", "auto")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("engine: transformers")
    assert result.stdout.count("Prompt: ") == 2 and result.stdout.count("Completion: ") == 2

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        greedy = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(greedy[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert f"Prompt: The capital of France is\nCompletion: {expected}\n" in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_infer_without_vllm_refuses_the_vllm_engine(tiny_model, run_cli):
    result = run_cli("infer", "--model-path", tiny_model("llama"), "--engine", "vllm")
    assert result.exit_code == 1 and "vLLM is not installed" in result.stderr


def test_infer_with_an_empty_prompts_file_is_refused(tiny_model, tmp_path, run_cli):
    (tmp_path / "prompts.txt").write_text("\n\n")
    result = run_cli("infer", "--model-path", tiny_model("llama"), "--prompts-file", tmp_path / "prompts.txt")
    assert result.exit_code == 1 and "holds no prompts" in result.stderr


def test_model_whose_pickle_is_refused_is_one_line(tiny_model, run_cli):
    from test_verify import bin_model_with_a_foreign_class

    model = bin_model_with_a_foreign_class(tiny_model)
    result = run_cli("infer", "--model-path", model, "--engine", "transformers", "--max-tokens", "2")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{model / 'pytorch_model.bin'}: refused to unpickle the class argparse.Namespace" in result.stderr
    assert "allow-list of torch.load(weights_only=True)" in result.stderr


def test_infer_flags_default_to_the_torchtitan_guides_values(run_cli):
    result = run_cli("infer", "--help")
    assert result.exit_code == 0
    help_text = " ".join(result.stdout.split())
    for flag, default in [("--max-tokens", "100"), ("--temperature", "0.8"), ("--top-p", "0.95"),
                          ("--tensor-parallel-size", "1"), ("--seed", "0"), ("--engine", "auto")]:  # fmt: skip
        assert flag in help_text and f"(default: {default})" in help_text.split(flag, 2)[-1].split("--", 1)[0]
    assert "--trust-remote-code" in help_text and "--prompts-file" in help_text


def test_infer_refuses_torchtitan_names_on_the_transformers_engine(tiny_model, run_cli):
    import json

    model_path = tiny_model("qwen3")
    config = json.loads((model_path / "config.json").read_text())
    (model_path / "config.json").write_text(json.dumps({**config, "architectures": ["TorchTitanQwen3ForCausalLM"]}))
    result = run_cli("infer", "--model-path", model_path, "--engine", "transformers")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "has TorchTitan names (TorchTitanQwen3ForCausalLM), which only the vLLM engine loads" in result.stderr
