"""DeepSpeed ZeRO checkpoints, made by real HF Trainer + DeepSpeed runs, consolidated into HF models."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

STAGES = [(1, "llama"), (2, "llama"), (3, "qwen3")]


def deepspeed_fp32(step_folder) -> dict[str, torch.Tensor]:
    """DeepSpeed's own answer: zero_to_fp32's state dict for the checkpoint `latest` names."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()):
        state = get_fp32_state_dict_from_zero_checkpoint(str(step_folder))
    return {name: tensor.contiguous() for name, tensor in state.items()}


def consolidate(run_cli, source, output, *extra) -> None:
    result = run_cli("consolidate", "--input", source, "--output", output, *extra)
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(("stage", "architecture"), STAGES)
def test_master_weights_match_deepspeeds_zero_to_fp32_bit_for_bit(
    deepspeed_run, run_cli, tmp_path, stage, architecture
):
    run = deepspeed_run(stage, architecture)
    consolidate(run_cli, run, tmp_path / "out")
    ours = load_file(tmp_path / "out/model.safetensors")
    reference = deepspeed_fp32(run / "checkpoint-4")
    tied = {"lm_head.weight"} if architecture == "qwen3" else set()
    assert set(reference) - set(ours) == tied
    # zero_to_fp32 loses the frozen parameter of a ZeRO-1 checkpoint; distillery keeps it.
    assert set(ours) - set(reference) == ({"model.layers.0.mlp.down_proj.weight"} if stage == 1 else set())
    for name, tensor in reference.items():
        if name not in tied:
            assert ours[name].dtype == tensor.dtype == torch.float32
            assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize(("stage", "architecture"), STAGES)
def test_tensors_read_through_memory_match_the_kernel_copies(deepspeed_run, stage, architecture):
    """Both ways of reading a parameter (copied file to file, or gathered in memory) give DeepSpeed's values."""
    from workflow_scripts.formats.deepspeed import locate_checkpoint, open_deepspeed_checkpoint

    run = deepspeed_run(stage, architecture)
    checkpoint = open_deepspeed_checkpoint(locate_checkpoint(run))
    reference = deepspeed_fp32(run / "checkpoint-4")
    trainable = [t for t in checkpoint.tensors.values() if t.byte_ranges]
    assert trainable, "the rank files' records were not located"
    for tensor in checkpoint.tensors.values():
        if tensor.name in reference:
            assert torch.equal(tensor.load(), reference[tensor.name]), tensor.name


@pytest.mark.parametrize(("stage", "architecture"), STAGES)
def test_consolidated_model_gives_the_trained_models_logits(deepspeed_run, run_cli, tmp_path, stage, architecture):
    from transformers import AutoModelForCausalLM

    run = deepspeed_run(stage, architecture)
    consolidate(run_cli, run, tmp_path / "out")
    probe = torch.load(run / "probe.pt", weights_only=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    with torch.no_grad():
        logits = model(probe["input_ids"]).logits
    assert torch.allclose(logits, probe["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("stage", [1, 2])
def test_frozen_parameter_keeps_its_base_value(deepspeed_run, tiny_model_store, run_cli, tmp_path, stage):
    run = deepspeed_run(stage)
    consolidate(run_cli, run, tmp_path / "out")
    base = load_file(tiny_model_store("llama", "safetensors") / "model.safetensors")
    ours = load_file(tmp_path / "out/model.safetensors")
    assert torch.equal(ours["model.layers.0.mlp.down_proj.weight"], base["model.layers.0.mlp.down_proj.weight"])
    assert not torch.equal(ours["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def test_output_has_tokenizer_from_the_base_model_and_provenance(deepspeed_run, tiny_model_store, run_cli, tmp_path):
    base = tiny_model_store("qwen3", "safetensors")
    consolidate(run_cli, deepspeed_run(3, "qwen3"), tmp_path / "out", "--base-model-name", base, "--dtype", "bfloat16")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "tokenizer.json", "model.safetensors", "provenance.json"} <= files
    provenance = json.loads((tmp_path / "out/provenance.json").read_text())
    assert provenance["source"]["zero_stage"] == 3 and provenance["source"]["world_size"] == 2
    assert provenance["source"]["tag"] == "global_step4" and provenance["source"]["step"] == 4
    assert provenance["conversion"]["dropped_tied_weights"] == ["lm_head.weight"]
    assert {t.dtype for t in load_file(tmp_path / "out/model.safetensors").values()} == {torch.bfloat16}


def test_run_folder_uses_the_latest_step_by_number_not_by_name(deepspeed_run, run_cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(deepspeed_run(2), run)
    # checkpoint-10 sorts before checkpoint-4 by name, after it by number.
    (run / "checkpoint-2").rename(run / "checkpoint-10")
    consolidate(run_cli, run, tmp_path / "out")
    provenance = json.loads((tmp_path / "out/provenance.json").read_text())
    assert provenance["source"]["checkpoint"].endswith("checkpoint-10/global_step2")


def test_checkpoint_dir_and_tag_choose_the_checkpoint(deepspeed_run, run_cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(deepspeed_run(2), run)
    consolidate(run_cli, run, tmp_path / "by-dir", "--checkpoint-dir", run / "checkpoint-2")
    shutil.copytree(run / "checkpoint-2/global_step2", run / "checkpoint-4/global_step2")
    consolidate(run_cli, run / "checkpoint-4", tmp_path / "by-tag", "--tag", "global_step2")
    by_dir = load_file(tmp_path / "by-dir/model.safetensors")
    by_tag = load_file(tmp_path / "by-tag/model.safetensors")
    reference = deepspeed_fp32(run / "checkpoint-2")
    assert all(
        torch.equal(by_dir[name], reference[name]) and torch.equal(by_tag[name], by_dir[name]) for name in by_dir
    )


def test_auto_detects_a_trainer_checkpoint_folder(deepspeed_run, run_cli, tmp_path):
    result = run_cli("consolidate", "--input", deepspeed_run(2) / "checkpoint-4", "--output", tmp_path / "out")
    assert result.exit_code == 0 and "from deepspeed input" in result.stdout


# Bad input: one line naming the file, a non-zero exit, nothing at the output path.


def refused(result, output, *fragments) -> None:
    assert result.exit_code == 1, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert not output.exists()


@pytest.fixture
def damaged_run(deepspeed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(deepspeed_run(2), run)
    return run


def test_latest_naming_a_missing_step(damaged_run, run_cli, tmp_path):
    (damaged_run / "checkpoint-4/latest").write_text("global_step99")
    result = run_cli("consolidate", "--input", damaged_run, "--output", tmp_path / "out")
    refused(result, tmp_path / "out", "checkpoint-4/latest", "global_step99", "does not exist")


def test_missing_rank_file(damaged_run, run_cli, tmp_path):
    (damaged_run / "checkpoint-4/global_step4/zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    result = run_cli("consolidate", "--input", damaged_run, "--output", tmp_path / "out")
    refused(result, tmp_path / "out", "global_step4", "saved by 2 ranks", "missing rank 1")


def test_rank_file_from_an_earlier_save_is_refused(damaged_run, run_cli, tmp_path):
    name = "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shutil.copy(damaged_run / "checkpoint-2/global_step2" / name, damaged_run / "checkpoint-4/global_step4" / name)
    result = run_cli("consolidate", "--input", damaged_run, "--output", tmp_path / "out")
    refused(result, tmp_path / "out", "global_step4", "come from different saves", f"{name}: 2", "training step")


def test_optimizer_files_of_an_earlier_save_than_the_model_states_are_refused(damaged_run, run_cli, tmp_path):
    for rank in (0, 1):
        name = f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        shutil.copy(damaged_run / "checkpoint-2/global_step2" / name, damaged_run / "checkpoint-4/global_step4" / name)
    result = run_cli("consolidate", "--input", damaged_run, "--output", tmp_path / "out")
    refused(result, tmp_path / "out", "come from different saves", "mp_rank_00_model_states.pt: 4")


def test_truncated_optimizer_file(damaged_run, run_cli, tmp_path):
    optim = damaged_run / "checkpoint-4/global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:4096])
    result = run_cli("consolidate", "--input", damaged_run, "--output", tmp_path / "out")
    refused(result, tmp_path / "out", str(optim), "cannot read")


def test_checkpoint_of_a_different_model_than_the_base_model(damaged_run, tiny_model_store, run_cli, tmp_path):
    other = tiny_model_store("qwen3", "safetensors")
    result = run_cli("consolidate", "--input", damaged_run, "--output", tmp_path / "out", "--base-model-name", other)
    refused(result, tmp_path / "out", "different model than --base-model-name", "model_type llama vs qwen3")


def test_checkpoint_without_config_that_does_not_fit_the_base_model(damaged_run, tiny_model_store, run_cli, tmp_path):
    (damaged_run / "checkpoint-4/config.json").unlink()
    wider = tiny_model_store("llama", "safetensors", hidden_size=96)
    result = run_cli("consolidate", "--input", damaged_run, "--output", tmp_path / "out", "--base-model-name", wider)
    refused(result, tmp_path / "out", "do not fit the architecture", "wrong shape")


class Intruder:
    """Stands for any object a tampered checkpoint might carry."""


def test_pickle_with_a_class_outside_the_allow_list(damaged_run, run_cli, tmp_path):
    from workflow_scripts.formats.deepspeed_pickle import load_deepspeed_file

    optim = damaged_run / "checkpoint-4/global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = load_deepspeed_file(optim, trust_pickle=True)
    state["intruder"] = Intruder()
    torch.save(state, tmp_path / "tampered.pt")  # not over the file its tensors are still mapped from
    (tmp_path / "tampered.pt").replace(optim)
    result = run_cli("consolidate", "--input", damaged_run, "--output", tmp_path / "out")
    refused(result, tmp_path / "out", str(optim), "Intruder", "not on distillery's allow-list", "--trust-pickle")
    trusted = run_cli("consolidate", "--input", damaged_run, "--output", tmp_path / "out", "--trust-pickle")
    assert trusted.exit_code == 0, trusted.stderr


def test_memory_request_is_sized_from_the_largest_parameter(deepspeed_run):
    from workflow_scripts.formats.deepspeed import largest_parameter_bytes
    from workflow_scripts.workflow.resources import deepspeed_mem_mb

    # The tiny Llama's largest parameters are the 512 x 64 embedding and output head, in fp32.
    assert largest_parameter_bytes(deepspeed_run(2) / "checkpoint-4") == 512 * 64 * 4
    assert deepspeed_mem_mb(deepspeed_run(2) / "checkpoint-4") == 2048
