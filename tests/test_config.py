"""The workflow config: the default and every example validate against the schema, which fills defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "config/schema/config.schema.yaml")
CONFIGS = [REPO / "config/config.yaml", *sorted((REPO / "config/examples").glob("*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    validate(yaml.safe_load(path.read_text()), SCHEMA)


def test_schema_fills_defaults():
    config = {"models": {"m": {"source": {"format": "hf", "path": "x"}}}}
    validate(config, SCHEMA)
    assert config["results"] == "results"
    assert config["models"]["m"]["dtype"] == "float32"
    assert config["models"]["m"]["max_shard_size"] == "40GB"
    assert config["verify"]["tolerances"]["bfloat16"] == 5.0e-3


def test_schema_refuses_unknown_keys():
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="shard_size"):
        validate({"models": {"m": {"source": {"format": "hf", "path": "x"}, "shard_size": "1GB"}}}, SCHEMA)


def test_kd_job_defaults_and_the_guides_variables(monkeypatch):
    from workflow_scripts.workflow.kd_jobs import wire_kd_jobs

    config = yaml.safe_load((REPO / "config/examples/kd-llama3.1-1b.yaml").read_text())
    validate(config, SCHEMA)
    assert config["kd"]["finewebedu-kd"]["engine"]["pipeline_parallel_size"] == 1
    monkeypatch.setenv("MODEL_PATH", "/models/llama3.1-1b-hf")
    monkeypatch.setenv("TOKENIZER_PATH", "/tokenizers/Llama-3.1-8B")
    monkeypatch.setenv("DATASET_PATH", "gs://bucket/finewebedu")
    plan = wire_kd_jobs(config["kd"], {}, {})["finewebedu-kd"]
    assert plan.gpus == 1 and plan.model_input is None and plan.dataset_inputs == []
    assert "--model-path /models/llama3.1-1b-hf --tokenizer-path /tokenizers/Llama-3.1-8B" in plan.flags
    assert "--dataset 'gs://bucket/finewebedu/*.parquet'" in plan.flags and "--shuffle-chunks" in plan.flags


def test_kd_dataset_in_a_folder_the_workflow_builds():
    """A chunk job reads a built dataset from its copy of the folder, so the job names the folder, or files in it."""
    from workflow_scripts.errors import DistilleryError
    from workflow_scripts.workflow.kd_jobs import wire_kd_jobs

    config = yaml.safe_load((REPO / "config/examples/tiny-models.yaml").read_text())
    validate(config, SCHEMA)
    built = {"tiny-web": "work/datasets/tiny-web"}
    for path in (
        "work/datasets/tiny-web",
        "work/datasets/tiny-web/*.parquet",
        "work/datasets/tiny-web/part-000.parquet",
    ):
        config["kd"]["tiny-web-kd"]["dataset"]["path"] = path
        plan = wire_kd_jobs(config["kd"], {}, built)["tiny-web-kd"]
        assert plan.built_dataset == "work/datasets/tiny-web" and plan.dataset_inputs == ["work/datasets/tiny-web"]

    config["kd"]["tiny-web-kd"]["dataset"]["path"] = "work/datasets/tiny-web/en/*.parquet"
    with pytest.raises(DistilleryError, match="is below work/datasets/tiny-web, which the workflow builds"):
        wire_kd_jobs(config["kd"], {}, built)


def test_misspelled_keys_are_refused_wherever_the_schema_lists_the_keys():
    from workflow_scripts.errors import DistilleryError
    from workflow_scripts.workflow.config_check import check_keys

    schema = yaml.safe_load(Path(SCHEMA).read_text())
    model = {"source": {"format": "hf", "path": "x"}}
    with pytest.raises(DistilleryError, match=r"^config my.yaml: unknown key 'verfy' \(did you mean 'verify'\?\)$"):
        check_keys({"models": {}, "verfy": {}}, "config my.yaml", schema)
    with pytest.raises(DistilleryError, match=r"unknown key 'dtyp' in models.m \(did you mean 'dtype'\?\)"):
        check_keys({"models": {"m": {**model, "dtyp": "float16"}}}, "config my.yaml", schema)
    with pytest.raises(DistilleryError, match=r"unknown key 'temprature' in kd.job.sampling \(did you mean"):
        check_keys({"kd": {"job": {"sampling": {"temprature": 0.5}}}}, "config my.yaml", schema)
    # Names the user chooses (models, jobs, tolerances by dtype) are not keys of the schema.
    check_keys({"models": {"any-name": model}, "verify": {"tolerances": {"float8": 0.1}}}, "config my.yaml", schema)
