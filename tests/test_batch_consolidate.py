"""`distillery batch-consolidate`: many runs and checkpoints, named by template, failures summarised."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from workflow_scripts.convert.batch import expand_braces


def test_braces_expand_like_a_shell():
    assert expand_braces("checkpoint-{100,200,300}") == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    assert expand_braces("a{1,2}b{x,y}") == ["a1bx", "a1by", "a2bx", "a2by"]
    assert expand_braces("checkpoint-*") == ["checkpoint-*"]


@pytest.fixture
def experiments(tiny_model_store, tmp_path):
    """./experiments/ft_runs_*/qwen: HF model folders of two runs."""
    for run in ("ft_runs_a", "ft_runs_b"):
        shutil.copytree(tiny_model_store("qwen3", "safetensors_sharded"), tmp_path / "experiments" / run / "qwen")
    return tmp_path / "experiments"


def test_input_pattern_with_run_name_template(experiments, run_cli, tmp_path):
    result = run_cli(
        "batch-consolidate", "--input-pattern", f"{experiments}/ft_runs_*/qwen", "--output-dir", tmp_path / "out",
        "--naming-template", "{run_name}_final",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ft_runs_a_final", "ft_runs_b_final"]
    assert "summary: 2 succeeded, 0 failed" in result.stdout


def test_input_list_and_default_template(experiments, run_cli, tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# runs to convert\n{experiments}/ft_runs_a/qwen\n\n")
    result = run_cli("batch-consolidate", "--input-list", listing, "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["qwen_step_final"]


def test_dry_run_prints_the_plan_and_writes_nothing(experiments, run_cli, tmp_path):
    result = run_cli(
        "batch-consolidate", "--input-pattern", f"{experiments}/*/qwen", "--output-dir", tmp_path / "out",
        "--naming-template", "{run_name}_{input_name}", "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0
    assert "2 conversion(s):" in result.stdout and "dry run: nothing was written" in result.stdout
    assert not (tmp_path / "out").exists()


def test_template_that_escapes_the_output_dir_is_refused(experiments, run_cli, tmp_path):
    result = run_cli(
        "batch-consolidate", "--input-dir", experiments / "ft_runs_a/qwen", "--output-dir", tmp_path / "out",
        "--naming-template", "../{input_name}",
    )  # fmt: skip
    assert result.exit_code == 1 and "not a folder name inside --output-dir" in result.stderr
    assert not (tmp_path / "qwen").exists()


def test_output_symlink_pointing_outside_the_output_dir_is_refused_as_a_symlink(experiments, run_cli, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "qwen_step_final").symlink_to(tmp_path / "elsewhere")
    source = experiments / "ft_runs_a/qwen"
    result = run_cli("batch-consolidate", "--input-dir", source, "--output-dir", tmp_path / "out")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "is a symlink pointing outside --output-dir" in result.stderr and "template" not in result.stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_template_giving_two_inputs_the_same_name_is_refused(experiments, run_cli, tmp_path):
    result = run_cli("batch-consolidate", "--input-pattern", f"{experiments}/*/qwen", "--output-dir", tmp_path / "out")
    assert result.exit_code == 1 and "the same output to several inputs" in result.stderr


def test_template_with_an_unknown_field_is_refused(experiments, run_cli, tmp_path):
    result = run_cli(
        "batch-consolidate", "--input-dir", experiments / "ft_runs_a/qwen", "--output-dir", tmp_path / "out",
        "--naming-template", "{model}_{step}",
    )  # fmt: skip
    assert result.exit_code == 1 and "unknown field(s) model" in result.stderr


@pytest.mark.integration
def test_all_checkpoints_of_a_deepspeed_run(deepspeed_run, run_cli, tmp_path):
    run = deepspeed_run(2)
    result = run_cli("batch-consolidate", "--input-dir", run, "--output-dir", tmp_path / "out", "--all-checkpoints")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run_step_2", "run_step_4"]
    single = tmp_path / "single"
    run_cli("consolidate", "--input", run, "--output", single)
    ours, theirs = load_file(tmp_path / "out/run_step_4/model.safetensors"), load_file(single / "model.safetensors")
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


@pytest.mark.integration
def test_checkpoint_filter_with_braces(deepspeed_run, run_cli, tmp_path):
    result = run_cli(
        "batch-consolidate", "--input-dir", deepspeed_run(2), "--output-dir", tmp_path / "out",
        "--checkpoint-filter", "checkpoint-{2,3}", "--naming-template", "qwen25_step_{step}",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["qwen25_step_2"]


@pytest.mark.integration
def test_no_checkpoint_matching_the_filter(deepspeed_run, run_cli, tmp_path):
    result = run_cli(
        "batch-consolidate", "--input-dir", deepspeed_run(2), "--output-dir", tmp_path / "out",
        "--checkpoint-filter", "checkpoint-{100,200}",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "no checkpoint-N folder matching --checkpoint-filter 'checkpoint-{100,200}'" in result.stderr
    assert "found: checkpoint-2, checkpoint-4" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def one_broken_run(deepspeed_run, tmp_path):
    runs = tmp_path / "runs"
    for name in ("a_broken", "b_good"):
        shutil.copytree(deepspeed_run(2), runs / name)
    (runs / "a_broken/checkpoint-4/global_step4/zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    return runs


@pytest.mark.integration
def test_continue_on_error_carries_on_and_lists_each_failure(one_broken_run, run_cli, tmp_path):
    result = run_cli(
        "batch-consolidate", "--input-pattern", f"{one_broken_run}/*", "--output-dir", tmp_path / "out",
        "--continue-on-error", "--max-workers", "1",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "summary: 1 succeeded, 1 failed" in result.stdout
    assert "✗" in result.stdout and "missing rank 1" in result.stdout
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b_good_step_4"]


@pytest.mark.integration
def test_without_continue_on_error_the_batch_stops_at_the_first_failure(one_broken_run, run_cli, tmp_path):
    result = run_cli(
        "batch-consolidate", "--input-pattern", f"{one_broken_run}/*", "--output-dir", tmp_path / "out",
        "--max-workers", "1",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "summary: 0 succeeded, 1 failed, 1 not started" in result.stdout
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
