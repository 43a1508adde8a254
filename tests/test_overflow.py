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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e5m2])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_one_non_finite_value_anywhere_in_a_tensor_is_found(dtype, value):
    from workflow_scripts.errors import DistilleryError
    from workflow_scripts.formats.tensor_values import refuse_non_finite

    refuse_non_finite(torch.randn(4099).to(dtype), "finite")
    for size in (1, 15, 16, 17, 4099):  # around the widths of vectorized loops
        for position in {0, size // 2, size - 1}:
            tensor = torch.randn(size).to(dtype)
            tensor[position] = value
            with pytest.raises(DistilleryError, match="NaN or Inf"):
                refuse_non_finite(tensor, "t")


def test_the_largest_value_beyond_float16_is_named_past_nan_and_inf():
    from workflow_scripts.errors import DistilleryError
    from workflow_scripts.formats.tensor_values import cast_checked

    tensor = torch.tensor([1.0, float("nan"), -70000.0, float("inf")])
    with pytest.raises(DistilleryError, match="values up to 70000"):
        cast_checked(tensor, torch.float16, "t")
