"""The config schema's defaults are the settings' defaults: a setting's default is written once, in its field."""

from __future__ import annotations

from pathlib import Path

import yaml

from workflow_scripts.setting import config_defaults

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "config/schema/config.schema.yaml").read_text())


def schema_default(section: dict, dotted: str):
    """The default the schema declares at a dotted key below `section` (a schema with `properties`)."""
    *parents, key = dotted.split(".")
    for name in parents:
        section = section["properties"][name]
    return section["properties"][key].get("default")


def model_schema() -> dict:
    return SCHEMA["properties"]["models"]["additionalProperties"]


# --- conversion and verification settings ------------------------------------------------------------------------


def test_model_schema_defaults_equal_the_conversion_options_defaults():
    """consolidate's and titan-to-hf's options read a model entry; where the schema has a default, it is theirs."""
    from workflow_scripts.convert.options import ConsolidateOptions, TitanToHFOptions

    for options in (ConsolidateOptions, TitanToHFOptions):
        for key, default in config_defaults(options).items():
            if key.startswith("source."):
                continue  # source keys have no schema defaults (see the schema's note on oneOf)
            assert schema_default(model_schema(), key) == default, (options.__name__, key)


def test_verify_schema_defaults_equal_the_verify_settings_defaults():
    """One definition of the probe prompts and tolerances: the schema documents the settings' own."""
    from workflow_scripts.verify.settings import VerifySettings

    verify = SCHEMA["properties"]["verify"]
    for key, default in config_defaults(VerifySettings).items():
        assert schema_default(verify, key) == default, key
