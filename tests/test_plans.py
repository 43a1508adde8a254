"""Will it shard? vLLM's split arithmetic on standard configs, and plan checks on a Forgather-style model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

from forgather_style_model import PP_PLAN, TP_PLAN, DynamicCausalLM, ForgatherConfig  # noqa: E402

from workflow_scripts.plans.validate import validate_plans  # noqa: E402
from workflow_scripts.plans.vllm_limits import Budget, pp_layer_split  # noqa: E402

LLAMA3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256,
)  # fmt: skip


def meta_llama(**sizes):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{**LLAMA3_8B, **sizes})
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def status(report, name: str) -> str:
    return next(check.status for check in report.checks if check.name == name)


def detail(report, name: str) -> str:
    return next(check.detail for check in report.checks if check.name == name)


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (4, 2), (8, 1), (2, 4)])
def test_llama3_8b_splits_at_the_usual_sizes(tp, pp):
    report = validate_plans(meta_llama(), tp, pp)
    assert report.passed, [c.line for c in report.failures]


def test_24_heads_at_t16_are_refused():
    report = validate_plans(meta_llama(num_attention_heads=24, hidden_size=3072, num_key_value_heads=8), 16, 1)
    assert status(report, "tp_heads") == "fail" and "24 heads are not divisible by 16" in detail(report, "tp_heads")
    assert not report.passed


def test_8_kv_heads_at_t16_are_replicated_with_a_warning():
    report = validate_plans(meta_llama(), 16, 1)
    assert status(report, "tp_kv_heads") == "warn" and "replicated 2x" in detail(report, "tp_kv_heads")
    assert report.passed
    assert not validate_plans(meta_llama(), 16, 1, strict=True).passed


def data(report, name: str) -> dict:
    return next(check.data for check in report.checks if check.name == name)


def test_the_report_states_the_heads_each_gpu_holds_as_vllm_reports_them():
    # benchmarks/parallel_plans_vllm.py compares these with the heads vLLM's workers hold.
    assert data(validate_plans(meta_llama(), 4, 1), "tp_heads") == {"heads_per_gpu": 8}
    assert data(validate_plans(meta_llama(), 4, 1), "tp_kv_heads") == {"kv_heads_per_gpu": 2}
    assert data(validate_plans(meta_llama(), 16, 1), "tp_kv_heads") == {"kv_heads_per_gpu": 1}  # replicated
    assert data(validate_plans(meta_llama(num_key_value_heads=4, hidden_size=3072, num_attention_heads=24), 6, 1),
                "tp_kv_heads") == {}  # fmt: skip


def test_8_kv_heads_at_t3_are_refused():
    report = validate_plans(meta_llama(num_attention_heads=24, hidden_size=3072, intermediate_size=8196), 3, 1)
    assert status(report, "tp_kv_heads") == "fail"
    assert "8 KV heads are not divisible by 3" in detail(report, "tp_kv_heads")


def test_intermediate_and_vocabulary_must_split_evenly():
    report = validate_plans(meta_llama(intermediate_size=11000, vocab_size=32000), 3, 1)
    # 32000 is already a multiple of 64, and 32000 / 3 is not whole.
    assert status(report, "tp_vocab") == "fail" and "padded to 32000" in detail(report, "tp_vocab")
    assert status(report, "tp_intermediate") == "fail"


def test_uneven_pipeline_split_follows_vllm():
    assert pp_layer_split(32, 3) == [11, 11, 10]
    assert pp_layer_split(30, 4) == [7, 8, 8, 7]
    report = validate_plans(meta_llama(), 1, 3)
    assert status(report, "pp_layers") == "warn" and "[11, 11, 10]" in detail(report, "pp_layers")
    assert status(validate_plans(meta_llama(num_hidden_layers=2), 1, 4), "pp_layers") == "fail"


def test_memory_estimate_against_the_gpu_budget():
    small = validate_plans(meta_llama(), 1, 1, Budget(gpu_memory_gib=16, max_model_len=8192, batch=4))
    assert status(small, "memory") == "fail"
    assert status(validate_plans(meta_llama(), 2, 1, Budget(gpu_memory_gib=80)), "memory") == "pass"
    # 8B in bfloat16 is ~15 GiB of weights, half of it per GPU at T=2.
    estimate = next(c for c in small.checks if c.name == "memory").data
    assert 14.5 < estimate["stages"][0]["weights_bytes"] / 2**30 < 15.5


def forgather(**plans):
    with torch.device("meta"):
        return DynamicCausalLM(ForgatherConfig(), **plans)


def test_custom_model_with_correct_plans_passes_on_the_transformers_backend():
    report = validate_plans(forgather(), 2, 2)
    assert report.passed, [c.line for c in report.failures]
    assert status(report, "vllm_native") == "warn" and "Transformers backend" in detail(report, "vllm_native")
    matched = next(c for c in report.checks if c.name == "tp_patterns").data["patterns"]
    assert matched["model.layer_stack.layers.*.attention.query_linear"]["matched"] == 2


def test_custom_model_without_a_tp_plan_cannot_use_tensor_parallelism():
    report = validate_plans(forgather(tp_plan={}), 2, 1)
    assert status(report, "vllm_native") == "fail" and "needs the model's tp plan" in detail(report, "vllm_native")


def test_pattern_that_matches_nothing_names_the_nearest_modules():
    plan = {**TP_PLAN}
    plan["model.layer_stack.layers.*.attention.query_lin"] = plan.pop(
        "model.layer_stack.layers.*.attention.query_linear"
    )
    report = validate_plans(forgather(tp_plan=plan), 2, 1)
    assert status(report, "tp_patterns") == "fail"
    assert "nearest: model.layer_stack.layers.*.attention.query_linear" in detail(report, "tp_patterns")


def test_linear_missing_from_the_plan_is_named():
    plan = {k: v for k, v in TP_PLAN.items() if not k.endswith("up_proj")}
    report = validate_plans(forgather(tp_plan=plan), 2, 1)
    assert status(report, "tp_coverage") == "fail"
    assert "model.layer_stack.layers.*.feedforward.up_proj" in detail(report, "tp_coverage")


def test_wrong_style_breaks_the_column_row_pairing():
    plan = {**TP_PLAN, "model.layer_stack.layers.*.attention.output_linear": "colwise"}
    report = validate_plans(forgather(tp_plan=plan), 2, 1)
    assert status(report, "tp_pairing") == "fail"
    assert "model.layer_stack.layers.*.attention: a column split" in detail(report, "tp_pairing")


def test_unknown_style_is_refused():
    plan = {**TP_PLAN, "model.layer_stack.layers.*.feedforward.down_proj": "row_wise"}
    assert status(validate_plans(forgather(tp_plan=plan), 2, 1), "tp_styles") == "fail"


def test_pipeline_plan_naming_a_missing_module():
    plan = {**PP_PLAN, "model.output_head": PP_PLAN["model.output_decoder"]}
    del plan["model.output_decoder"]
    report = validate_plans(forgather(pp_plan=plan), 1, 2)
    assert status(report, "pp_plan") == "fail"
    assert "model.output_head is not a module (nearest: model.output_decoder" in detail(report, "pp_plan")


def test_pipeline_stage_taking_what_no_stage_produces():
    plan = {**PP_PLAN, "model.output_decoder": (["encoder_states"], ["logits"])}
    report = validate_plans(forgather(pp_plan=plan), 1, 2)
    assert "model.output_decoder takes encoder_states, which no earlier stage produces" in detail(report, "pp_plan")


def test_pipeline_stage_whose_forward_cannot_take_its_inputs():
    plan = {**PP_PLAN, "model.input_encoder": (["input_ids", "token_type_ids", "segment_ids"], ["hidden_states"])}
    report = validate_plans(forgather(pp_plan=plan), 1, 2)
    assert "InputEncoder.forward(input_ids) cannot take token_type_ids, segment_ids" in detail(report, "pp_plan")


def test_no_split_modules_must_name_existing_classes():
    report = validate_plans(forgather(no_split=["PostLNLayer"]), 1, 1)
    assert status(report, "no_split_modules") == "fail"
    assert "nearest: PreLNLayer" in detail(report, "no_split_modules")


def write_config(folder: Path, **sizes) -> Path:
    from transformers import LlamaConfig

    config = LlamaConfig(**{**LLAMA3_8B, **sizes})
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(folder)
    return folder


def test_print_structure_of_a_70b_config_needs_no_weights(run_cli, tmp_path):
    folder = write_config(tmp_path / "llama70b", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                          num_attention_heads=64)  # fmt: skip
    # 70B parameters in float32 would need 280 GB; on the meta device the tree costs nothing.
    result = run_cli("print-structure", folder, "--max-depth", "4", "--show-params")
    assert result.exit_code == 0
    assert result.stdout.startswith("LlamaForCausalLM (70.55B parameters)")
    assert "model.layers.0..79: LlamaDecoderLayer" in result.stdout
    assert ".weight [128256, 8192] float32" in result.stdout


def test_validate_plans_cli_writes_a_report_and_exits_by_verdict(run_cli, tmp_path):
    folder = write_config(tmp_path / "model")
    good = run_cli("validate-plans", folder, "--tp", "4", "--pp", "2", "--output", tmp_path / "tp4_pp2.json")
    assert good.exit_code == 0 and "✓ vLLM can split it at T=4, P=2" in good.stdout
    assert json.loads((tmp_path / "tp4_pp2.json").read_text())["passed"] is True
    assert (tmp_path / "tp4_pp2.md").is_file()
    bad = run_cli("validate-plans", folder, "--tp", "3")
    assert bad.exit_code == 1 and "✗ vLLM cannot split it at T=3, P=1: tp_heads, tp_kv_heads" in bad.stdout


def test_fewer_kv_heads_than_t_that_do_not_divide_it_are_refused():
    report = validate_plans(meta_llama(num_key_value_heads=4, hidden_size=3072, num_attention_heads=24), 6, 1)
    assert status(report, "tp_kv_heads") == "fail"
    assert "T=6 is neither a divisor nor a multiple of the 4 KV heads" in detail(report, "tp_kv_heads")


def test_verification_report_carries_a_tp_pp_section(tiny_model, run_cli, tmp_path):
    model = tiny_model("llama", "safetensors")
    for tp in (2, 3):
        result = run_cli("validate-plans", model, "--tp", tp, "--output", tmp_path / f"tp{tp}.json", "--report-only")
        assert result.exit_code == 0
    report = tmp_path / "verification.json"
    result = run_cli(
        "verify", model, "--plans", tmp_path / "tp2.json", "--plans", tmp_path / "tp3.json", "--report", report
    )
    assert result.exit_code == 1
    assert "✓ vLLM split at T=2, P=1" in result.stdout
    assert "✗ vLLM split at T=3, P=1: attention heads split over T=3: 4 heads are not divisible by 3" in result.stdout
    assert json.loads(report.read_text())["failed_checks"] == ["parallel:T=3, P=1"]


def test_heads_that_do_not_divide_the_hidden_size_are_named_in_one_line(run_cli, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 100,
              "num_attention_heads": 3, "num_key_value_heads": 1, "intermediate_size": 128,
              "num_hidden_layers": 2, "vocab_size": 512}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    for command in ("validate-plans", "print-structure"):
        result = run_cli(command, folder)
        assert result.exit_code == 1
        assert result.stderr.splitlines() == [
            f"distillery {command}: error: {folder / 'config.json'}: hidden_size 100 is not a multiple of "
            "num_attention_heads 3 (each head takes hidden_size / num_attention_heads of it); fix config.json: "
            "the weights' shapes tell which number is right"
        ]
