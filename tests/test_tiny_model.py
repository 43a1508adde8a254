"""`distillery make-tiny-model`: its size flags are TinyModelSpec's fields, declared once."""

from __future__ import annotations

import json


def test_make_tiny_model_builds_the_sizes_its_flags_ask_for(tmp_path, run_cli):
    output = tmp_path / "tiny"
    flags = ["--num-layers", "3", "--num-heads", "2", "--num-kv-heads", "1", "--hidden-size", "32"]
    flags += ["--vocab-size", "384"]
    result = run_cli("make-tiny-model", "--output", output, "--architecture", "qwen3", *flags)
    assert result.exit_code == 0, result.stderr
    assert "tiny qwen3 (safetensors, float32)" in result.stdout
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    sizes = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "vocab_size")
    assert [config[key] for key in sizes] == [3, 2, 1, 32, 384]
    assert (config["intermediate_size"], config["max_position_embeddings"]) == (128, 512)


def test_make_tiny_model_refuses_an_unknown_architecture(tmp_path, run_cli):
    result = run_cli("make-tiny-model", "--output", tmp_path / "tiny", "--architecture", "gpt2")
    assert result.exit_code == 2 and "--architecture='gpt2' is not one of llama, qwen3" in result.stderr
    assert not (tmp_path / "tiny").exists()
