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
