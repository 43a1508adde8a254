"""How the config's models become output model folders: one per HF source, one per chosen DeepSpeed step."""

from __future__ import annotations

import pytest

from workflow_scripts.errors import DistilleryError
from workflow_scripts.workflow.formats import models_of_rule
from workflow_scripts.workflow.model_targets import model_targets


@pytest.fixture
def run(tmp_path):
    for step in (100, 20, 300):
        (tmp_path / "run" / f"checkpoint-{step}").mkdir(parents=True)
    return tmp_path / "run"


def deepspeed_model(run, step="latest") -> dict:
    return {"ft": {"source": {"format": "deepspeed", "path": str(run), "step": step}}}


def test_latest_is_the_highest_step_number(run):
    plan = model_targets(deepspeed_model(run))
    assert list(plan) == ["ft"]
    assert plan["ft"].source.endswith("checkpoint-300") and plan["ft"].step == 300


def test_all_gives_one_model_per_checkpoint_in_step_order(run):
    assert list(model_targets(deepspeed_model(run, "all"))) == ["ft_step_20", "ft_step_100", "ft_step_300"]


def test_a_list_or_a_single_step(run):
    assert list(model_targets(deepspeed_model(run, [300, 20]))) == ["ft_step_300", "ft_step_20"]
    assert list(model_targets(deepspeed_model(run, 100))) == ["ft_step_100"]


def test_a_step_the_run_lacks_is_named(run):
    with pytest.raises(DistilleryError, match=r"asks for step\(s\) \[7\].*available: \[20, 100, 300\]"):
        model_targets(deepspeed_model(run, [7, 20]))


def test_hf_models_pass_through_and_constraints_separate_formats(run):
    plan = model_targets({**deepspeed_model(run, "all"), "merged": {"source": {"format": "hf", "path": "x"}}})
    assert plan["merged"].source == "x"
    assert models_of_rule(plan, "hf_merge") == "merged"
    assert models_of_rule(plan, "deepspeed_consolidate") == "ft_step_20|ft_step_100|ft_step_300"
    assert models_of_rule({}, "hf_merge") == "(?!)"
