"""The config schema and the settings classes agree: every setting of a config section has its schema entry with
the same default, and every schema key of that section is a setting (or a key the workflow's wiring reads).

So a new setting without a schema entry fails here, and so does a schema entry nothing reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workflow_scripts.icm.job import ICMJob
from workflow_scripts.kd.settings import KdJob
from workflow_scripts.layouts.options import LayOutOptions
from workflow_scripts.setting import config_defaults

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/schema/config.schema.yaml").read_text())
_NO_DEFAULT = object()


def schema_keys(node: dict, prefix: str = "") -> dict:
    """Each leaf key of a schema section by its dotted name, with its default (or _NO_DEFAULT)."""
    keys = {}
    for name, child in node.get("properties", {}).items():
        dotted = f"{prefix}{name}"
        if "properties" in child:
            keys.update(schema_keys(child, dotted + "."))
        else:
            keys[dotted] = child.get("default", _NO_DEFAULT)
    return keys


# section of the schema, settings class, keys the workflow's wiring reads itself (paths, job resources, the server job)
SECTIONS = {
    "kd": (
        SCHEMA["properties"]["kd"]["additionalProperties"],
        KdJob,
        {"model", "gpus", "engine_server", "engine_slots", "chunks_per_engine"},
    ),
    # `make` is the list of layouts, the lay_out rule's wildcard
    "layouts": (SCHEMA["properties"]["layouts"]["additionalProperties"], LayOutOptions, {"make"}),
    "icm.jobs": (
        SCHEMA["properties"]["icm"]["properties"]["jobs"]["additionalProperties"],
        ICMJob,
        {"model", "data.path", "mem_mb", "runtime_min", "server.start", "server.preset", "server.port"},
    ),
}


@pytest.mark.parametrize("section", SECTIONS)
def test_every_setting_has_a_schema_entry_with_its_default(section):
    schema, cls, _ = SECTIONS[section]
    keys = schema_keys(schema)
    for key, default in config_defaults(cls).items():
        assert key in keys, f"{cls.__name__} reads {section}.{key}, which the schema lacks"
        if keys[key] is not _NO_DEFAULT:
            assert keys[key] == default, f"{section}.{key}: schema default {keys[key]!r}, {cls.__name__} {default!r}"


@pytest.mark.parametrize("section", SECTIONS)
def test_every_schema_key_is_a_setting(section):
    schema, cls, wiring = SECTIONS[section]
    unread = set(schema_keys(schema)) - set(config_defaults(cls)) - wiring
    assert not unread, f"schema keys of {section} that no setting reads: {sorted(unread)}"


# --- conversion and verification settings (models.NAME and verify:) ---------------------------------------------


def schema_default(section: dict, dotted: str):
    """The default the schema declares at a dotted key below `section` (a schema with `properties`)."""
    *parents, key = dotted.split(".")
    for name in parents:
        section = section["properties"][name]
    return section["properties"][key].get("default")


def model_schema() -> dict:
    return SCHEMA["properties"]["models"]["additionalProperties"]


def test_model_schema_defaults_equal_the_conversion_options_defaults():
    """consolidate's and titan-to-hf's options read a model entry; where the schema has a default, it is theirs."""
    from workflow_scripts.convert.registry import ConsolidateOptions, TitanToHFOptions

    for options in (ConsolidateOptions, TitanToHFOptions):
        for key, default in config_defaults(options).items():
            if key.startswith("source."):
                continue  # source keys have no schema defaults (see the schema's note on oneOf)
            assert schema_default(model_schema(), key) == default, (options.__name__, key)


def test_a_wheels_schema_keys_are_the_settings_fetch_wheel_reads():
    from workflow_scripts.fetch_wheel import WheelSource

    wheel = SCHEMA["properties"]["wheels"]["additionalProperties"]
    assert set(wheel["properties"]) == set(wheel["required"]) == set(config_defaults(WheelSource))


def test_verify_schema_defaults_equal_the_verify_settings_defaults():
    """One definition of the probe prompts and tolerances: the schema documents the settings' own."""
    from workflow_scripts.verify.settings import VerifySettings

    verify = SCHEMA["properties"]["verify"]
    for key, default in config_defaults(VerifySettings).items():
        assert schema_default(verify, key) == default, key
