"""Values beyond the output dtype's range are refused (or clamped with --allow-overflow); NaN or Inf in an output
fail the conversion itself, not only a later `verify`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

NAME = "model.layers.0.mlp.up_proj.weight"


def with_value(folder, value: float):
    """Put `value` into one weight of the tiny model in `folder` (safetensors or .bin)."""
    if (folder / "model.safetensors").is_file():
        weights = load_file(folder / "model.safetensors")
        weights[NAME][0, 0] = value
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        weights = torch.load(folder / "pytorch_model.bin", weights_only=True)
        weights[NAME][0, 0] = value
        torch.save(weights, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("layout", ["safetensors", "bin"])  # cast chunk by chunk, and as a whole tensor
def test_value_beyond_float16_is_refused_naming_the_tensor(layout, tiny_model, run_cli, tmp_path):
    source = with_value(tiny_model("llama", layout), 70000.0)
    result = run_cli("consolidate", "--input", source, "--output", tmp_path / "out", "--dtype", "float16")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert NAME in result.stderr and "70000" in result.stderr and "--allow-overflow" in result.stderr
    assert not (tmp_path / "out").exists()


def test_allow_overflow_clamps_to_the_largest_float16(tiny_model, run_cli, tmp_path):
    source = with_value(tiny_model("llama"), 70000.0)
    result = run_cli("consolidate", "--input", source, "--output", tmp_path / "out", "--dtype", "float16",
                     "--allow-overflow")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert load_file(tmp_path / "out/model.safetensors")[NAME][0, 0].item() == 65504.0


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_nan_in_an_output_fails_the_conversion(layout, tiny_model, run_cli, tmp_path):
    source = with_value(tiny_model("llama", layout), float("nan"))
    result = run_cli("consolidate", "--input", source, "--output", tmp_path / "out", "--dtype", "bfloat16")
    assert result.exit_code == 1 and NAME in result.stderr and "NaN or Inf" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
