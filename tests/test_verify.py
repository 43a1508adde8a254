"""`distillery verify`: the verification report and the checks behind it, each shown failing for its cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


@pytest.fixture
def converted(tiny_model, run_cli, tmp_path):
    """A source checkpoint and its consolidated bfloat16 copy."""
    source = tiny_model("llama", "safetensors_sharded")
    output = tmp_path / "converted"
    assert run_cli("consolidate", "--input", source, "--output", output, "--dtype", "bfloat16").exit_code == 0
    return source, output


def check(report_path, name) -> dict:
    checks = json.loads(report_path.read_text())["checks"]
    return next(c for c in checks if c["name"] == name)


def rewrite_tensor(folder, name, change) -> None:
    tensors = load_file(folder / "model.safetensors")
    tensors[name] = change(tensors[name])
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_good_model_passes_with_the_guide_lines(converted, run_cli, tmp_path):
    source, model = converted
    report = tmp_path / "report.json"
    result = run_cli("verify", "--model-path", model, "--reference", source, "--report", report)
    assert result.exit_code == 0, result.stdout
    for line in ("✓ config.json", "✓ tokenizer_config.json", "✓ Found .safetensors weights", "✓ Ready for vLLM"):
        assert line in result.stdout
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["failed_checks"] == []
    numerics = check(report, "numerics")
    assert numerics["status"] == "pass"
    assert numerics["data"]["dtype"] == "bfloat16" and numerics["data"]["max_rel_diff"] <= 1e-6
    assert (tmp_path / "report.md").read_text().startswith("# Verification of")


def test_float32_conversion_matches_exactly(tiny_model, run_cli, tmp_path):
    source = tiny_model("qwen3", "bin_nested")
    run_cli("consolidate", "--input", source, "--output", tmp_path / "m")
    run_cli("verify", "--model-path", tmp_path / "m", "--reference", source, "--report", tmp_path / "r.json")
    assert check(tmp_path / "r.json", "numerics")["data"]["max_abs_diff"] == 0.0


def test_a_swapped_tensor_fails_the_logits_check(converted, run_cli, tmp_path):
    source, model = converted
    rewrite_tensor(model, "model.layers.0.self_attn.q_proj.weight", lambda t: t.t().contiguous())
    result = run_cli("verify", "--model-path", model, "--reference", source, "--report", tmp_path / "r.json")
    assert result.exit_code == 1
    assert "✗ logits match the reference" in result.stdout and "Not ready for vLLM: numerics" in result.stdout
    assert check(tmp_path / "r.json", "numerics")["status"] == "fail"


def test_a_tensor_of_the_wrong_shape_is_named(converted, run_cli, tmp_path):
    _, model = converted
    rewrite_tensor(model, "model.layers.1.mlp.up_proj.weight", lambda t: t[:-1].contiguous())
    result = run_cli("verify", "--model-path", model, "--report", tmp_path / "r.json")
    assert result.exit_code == 1
    detail = check(tmp_path / "r.json", "tensor_names")
    assert detail["status"] == "fail"
    assert detail["data"]["wrong_shape"] == ["model.layers.1.mlp.up_proj.weight [127, 64] (expected [128, 64])"]


def test_missing_and_unexpected_tensors_are_named(converted, run_cli, tmp_path):
    _, model = converted
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.0.extra.weight"] = tensors.pop("model.norm.weight")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    run_cli("verify", "--model-path", model, "--report", tmp_path / "r.json")
    data = check(tmp_path / "r.json", "tensor_names")["data"]
    assert data["missing"] == ["model.norm.weight"] and data["unexpected"] == ["model.layers.0.extra.weight"]


def test_nan_and_inf_are_found(converted, run_cli, tmp_path):
    _, model = converted

    def poison(t):
        t = t.clone()
        t[0, 0], t[0, 1] = float("nan"), float("inf")
        return t

    rewrite_tensor(model, "model.layers.0.mlp.down_proj.weight", poison)
    result = run_cli("verify", "--model-path", model, "--report", tmp_path / "r.json")
    assert result.exit_code == 1
    assert check(tmp_path / "r.json", "finite")["data"]["tensors"] == [
        "model.layers.0.mlp.down_proj.weight (1 NaN, 1 Inf)"
    ]


def test_missing_tokenizer_fails(converted, run_cli):
    _, model = converted
    (model / "tokenizer.json").unlink()
    result = run_cli("verify", "--model-path", model)
    assert result.exit_code == 1 and "✗ tokenizer model file" in result.stdout


def test_leftover_index_beside_a_single_file_fails(converted, run_cli, tmp_path):
    source, model = converted
    (model / "model.safetensors.index.json").write_text((source / "model.safetensors.index.json").read_text())
    result = run_cli("verify", "--model-path", model)
    assert result.exit_code == 1
    assert "model.safetensors.index.json" in result.stdout and "stale" in result.stdout


def test_stray_shard_is_a_leftover(converted, run_cli):
    source, model = converted
    (model / "model-00001-of-00012.safetensors").write_bytes((source / "model-00001-of-00012.safetensors").read_bytes())
    result = run_cli("verify", "--model-path", model)
    assert result.exit_code == 1 and "✗ no leftover weight files" in result.stdout


def test_expect_single_file_fails_on_shards(tiny_model, run_cli):
    result = run_cli("verify", "--model-path", tiny_model("llama", "safetensors_sharded"), "--expect-single-file")
    assert result.exit_code == 1 and "a single file was asked for" in result.stdout


def test_config_with_inconsistent_heads_fails(converted, run_cli):
    _, model = converted
    config = json.loads((model / "config.json").read_text())
    config["num_key_value_heads"] = 3
    (model / "config.json").write_text(json.dumps(config))
    result = run_cli("verify", "--model-path", model)
    assert result.exit_code == 1
    assert "num_attention_heads 4 is not a multiple of num_key_value_heads 3" in result.stdout


def test_truncated_weights_fail_without_a_traceback(converted, run_cli):
    _, model = converted
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    result = run_cli("verify", "--model-path", model)
    assert result.exit_code == 1 and "truncated" in result.stdout


def test_tokenizer_larger_than_the_vocabulary_fails(converted, run_cli):
    _, model = converted
    config = json.loads((model / "config.json").read_text())
    config["vocab_size"] = 100
    (model / "config.json").write_text(json.dumps(config))
    result = run_cli("verify", "--model-path", model)
    assert result.exit_code == 1 and "512 tokens but the model's vocab_size is 100" in result.stdout


def test_dtype_disagreeing_with_config_warns(converted, run_cli):
    _, model = converted
    config = json.loads((model / "config.json").read_text())
    config["dtype"] = "float32"
    (model / "config.json").write_text(json.dumps(config))
    result = run_cli("verify", "--model-path", model)
    assert result.exit_code == 0
    assert "⚠ one floating dtype: weights are bfloat16, config.json says float32" in result.stdout


def test_tolerance_flag_sets_the_threshold_per_dtype(converted, run_cli):
    source, model = converted
    rewrite_tensor(model, "model.layers.0.self_attn.q_proj.weight", lambda t: t.t().contiguous())
    assert run_cli("verify", "--model-path", model, "--reference", source).exit_code == 1
    loose = run_cli("verify", "--model-path", model, "--reference", source, "--tolerance", "bfloat16=0.5")
    assert loose.exit_code == 0 and "within the bfloat16 tolerance 0.5" in loose.stdout


def test_bad_tolerance_is_a_one_line_error(converted, run_cli):
    _, model = converted
    result = run_cli("verify", "--model-path", model, "--tolerance", "bfloat16")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1


def test_model_path_that_is_not_a_folder_fails(run_cli, tmp_path):
    result = run_cli("verify", "--model-path", tmp_path / "nothing")
    assert result.exit_code == 1 and "is not a folder" in result.stdout


def test_logits_are_compared_in_float32(converted):
    from workflow_scripts.verify.numerics import compare_logits, load_model_float32, probe_token_ids

    source, model = converted
    ours = load_model_float32(model)
    assert next(ours.parameters()).dtype == torch.float32
    ids = probe_token_ids(model, ["hello"], ours.config.vocab_size)
    assert compare_logits(ours, ours, ids).max_abs_diff == 0.0


def bin_model_with_a_foreign_class(tiny_model):
    """A .bin model whose pickle also holds an argparse.Namespace, which torch.load(weights_only=True) refuses."""
    import argparse

    folder = tiny_model("llama", "bin")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["note"] = argparse.Namespace(saved_by="a training script")
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_reference_whose_pickle_is_refused_is_one_line(tiny_model, run_cli):
    model = tiny_model("llama")
    reference = bin_model_with_a_foreign_class(tiny_model)
    result = run_cli("verify", model, "--reference", reference)
    assert result.exit_code == 1 and "Traceback" not in result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("✗ logits"))
    assert f"{reference / 'pytorch_model.bin'}: refused to unpickle the class argparse.Namespace" in line
    assert "allow-list of torch.load(weights_only=True)" in line and "safetensors" in line


REPO = Path(__file__).resolve().parents[1]
CUSTOM_CODE = """from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

Path({marker!r}).write_text("the folder's code ran")


class MarkerConfig(LlamaConfig):
    model_type = "marker_llama"


class MarkerForCausalLM(LlamaForCausalLM):
    config_class = MarkerConfig
"""


@pytest.fixture
def own_code_model(tiny_model, tmp_path) -> tuple[Path, Path]:
    """A tiny Llama whose config.json maps its classes (auto_map) to a .py in the folder that leaves a marker."""
    folder, marker = tiny_model("llama"), tmp_path / "custom-code-ran"
    (folder / "marker_model.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "marker_llama"
    config["auto_map"] = {
        "AutoConfig": "marker_model.MarkerConfig",
        "AutoModelForCausalLM": "marker_model.MarkerForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def run_distillery(tmp_path: Path, *args, timeout: float) -> tuple[int, str, str]:
    """The CLI in its own process, its stdin an open pipe nobody writes to: a question on it would hang."""
    environment = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "PYTHONPATH": str(REPO)}
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        job = subprocess.Popen([sys.executable, "-m", "workflow_scripts.cli", *map(str, args)], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=out, stderr=err, env=environment)  # fmt: skip
        try:
            code = job.wait(timeout=timeout)
        finally:
            job.kill()
            job.wait()
            job.stdin.close()
    return code, (tmp_path / "out").read_text(), (tmp_path / "err").read_text()


def test_verify_never_asks_to_run_a_folders_own_code(own_code_model, tmp_path):
    folder, marker = own_code_model
    code, out, err = run_distillery(tmp_path, "verify", "--model-path", folder, timeout=10)
    assert code == 1
    assert err.splitlines() == [
        f"distillery verify: error: {folder / 'config.json'} has auto_map: the model needs its own code; "
        f"pass --trust-remote-code if you trust {folder}"
    ]
    assert "[y/N]" not in out + err and not marker.exists()


def test_verify_runs_a_folders_own_code_when_trusted(own_code_model, tmp_path):
    folder, marker = own_code_model
    code, out, err = run_distillery(tmp_path, "verify", "--model-path", folder, "--trust-remote-code", timeout=120)
    assert code == 0, out + err
    assert marker.exists()


def test_every_command_loading_a_model_refuses_its_own_code_unless_trusted(own_code_model, run_cli, tmp_path):
    folder, marker = own_code_model
    message = (
        f"{folder / 'config.json'} has auto_map: the model needs its own code; "
        f"pass --trust-remote-code if you trust {folder}"
    )
    data = tmp_path / "data"
    assert run_cli("make-tiny-dataset", "--output", data, "--files", "1", "--rows", "4").exit_code == 0
    manifest = tmp_path / "kd/manifest.json"
    made = run_cli("kd-manifest", "--output", manifest, "--model-path", folder, "--dataset", data, "--engine",
                   "transformers")  # fmt: skip
    assert made.exit_code == 0, made.stderr
    commands = {
        "validate-plans": [folder],
        "print-structure": [folder],
        "infer": ["--model-path", folder, "--engine", "transformers"],
        "kd-chunk": ["--manifest", manifest, "--chunk", "part-000/000000000-000000004"],
    }
    for command, args in commands.items():
        result = run_cli(command, *args)
        assert (result.exit_code, result.stderr.splitlines()) == (1, [f"distillery {command}: error: {message}"])
    assert not marker.exists()
