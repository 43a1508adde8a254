"""The `layouts:` section as the workflow plans it: which layout folders are made, what the lay_out rule passes,
and which models read them back (workflow/layouts.py); no Snakemake, no torch."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from workflow_scripts.errors import DistilleryError
from workflow_scripts.workflow.layouts import LayoutPlan
from workflow_scripts.workflow.model_targets import model_targets

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "config/schema/config.schema.yaml")
EXAMPLE = REPO / "config/examples/layouts-roundtrip.yaml"


def example_config() -> dict:
    config = yaml.safe_load(EXAMPLE.read_text())
    validate(config, SCHEMA)
    return config


def test_each_layout_is_a_folder_under_work_named_by_model_and_layout():
    plan = LayoutPlan.from_config(example_config(), importable=lambda package: True)
    assert plan.outputs() == [f"work/layouts/tiny-llama/{layout}"
                              for layout in ("hf-bin-sharded", "titan-dcp", "deepspeed-zero", "maxtext")]  # fmt: skip
    assert plan.model_constraint() == "tiny\\-llama" and not plan.messages()


def test_without_deepspeed_its_layout_and_the_model_reading_it_are_left_out():
    config = example_config()
    plan = LayoutPlan.from_config(config, importable=lambda package: package != "deepspeed")
    assert "work/layouts/tiny-llama/deepspeed-zero" not in plan.outputs()
    assert plan.messages() == ["layout deepspeed-zero of tiny-llama is not made: deepspeed not installed"]
    models = plan.readable_models(model_targets(config["models"], built=plan.built_sources()))
    assert sorted(models) == ["tiny-llama", "tiny-llama-bin", "tiny-llama-maxtext", "tiny-llama-titan"]


def test_a_maxtext_layout_is_planned_as_param_only_before_it_exists():
    """The workflow reads a MaxText source's metadata when it plans; a layout it writes itself is not there yet."""
    config = example_config()
    plan = LayoutPlan.from_config(config, importable=lambda package: True)
    target = model_targets(config["models"], built=plan.built_sources())["tiny-llama-maxtext"]
    assert target.format == "maxtext" and not target.full_state


def test_the_rule_passes_the_entrys_settings_as_the_commands_own_flags():
    from workflow_scripts.cli import build_parser
    from workflow_scripts.layouts.options import LayOutOptions
    from workflow_scripts.setting import from_args

    config = {"work": "work", "models": {"m": {"source": {"format": "hf", "path": "x"}}},
              "layouts": {"m": {"make": ["deepspeed-zero"], "zero_stage": 2, "world_size": 4}}}  # fmt: skip
    validate(config, SCHEMA)
    plan = LayoutPlan.from_config(config)
    flags = plan.flags("m")
    assert flags == "--zero-stage 2 --world-size 4"
    argv = ["lay-out", "--input", "i", "--output", "o", "--as", "deepspeed-zero", *shlex.split(flags)]
    args = build_parser().parse_args(argv)
    assert from_args(LayOutOptions, args) == plan.options("m")
    assert (plan.options("m").zero_stage, plan.options("m").max_shard_size) == (2, "100MB")


def test_layouts_of_a_model_the_config_does_not_have_are_refused_in_one_line():
    config = {"work": "work", "models": {}, "layouts": {"ghost": {"make": ["titan-dcp"]}}}
    with pytest.raises(DistilleryError, match=r"^layouts names 'ghost', which models: does not have; "):
        LayoutPlan.from_config(config)


@pytest.mark.integration
def test_the_example_plans_a_lay_out_job_per_layout_and_a_conversion_back_of_each(tmp_path):
    """Snakemake's own planning of config/examples/layouts-roundtrip.yaml: each model reading a layout is built from
    the lay_out job writing it, which reads the HF folder of the model it lays out."""
    from helpers.snakemake_runs import planned_jobs, snakemake

    result = snakemake(tmp_path, "-n", configfile=EXAMPLE)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    layouts = ("hf-bin-sharded", "titan-dcp", "deepspeed-zero", "maxtext")
    assert [job for job in jobs if job[0] == "lay_out"] == sorted(
        ("lay_out", f"model=tiny-llama, layout={layout}") for layout in layouts
    )
    conversions = {"tiny-llama-bin": "hf_merge", "tiny-llama-titan": "titan_to_hf",
                   "tiny-llama-zero": "deepspeed_consolidate", "tiny-llama-maxtext": "maxtext_to_hf"}  # fmt: skip
    for model, rule in conversions.items():
        assert (rule, f"model={model}") in jobs and ("verify_model", f"model={model}") in jobs
