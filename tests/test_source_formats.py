"""The format registry: a model's config entry gives its convert step, flags, sizing and numeric reference."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from workflow_scripts.convert import registry
from workflow_scripts.workflow import formats
from workflow_scripts.workflow.model_targets import ModelTarget

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "config/schema/config.schema.yaml")


def target(name: str, source: dict, **settings) -> ModelTarget:
    """A model as the workflow plans it, from a config entry the schema has validated (and filled)."""
    config = {"models": {name: {"source": source, **settings}}}
    validate(config, SCHEMA)
    entry = config["models"][name]
    return ModelTarget(name, source["format"], source["path"], entry)


def parsed(command: str, flags: str):
    """The flags as the command's own parser reads them, next to the paths a rule passes."""
    from workflow_scripts.cli import build_parser

    paths = {
        "consolidate": ["--input", "in", "--output", "out"],
        "titan-to-hf": ["--input", "in", "--output", "out"],
        "gguf-to-hf": ["--input", "in", "--output", "out"],
        "maxtext-to-hf": ["--orbax-checkpoint", "in", "--hf-model-path", "out"],
    }[command]
    return build_parser().parse_args([command, *paths, *shlex.split(flags)])


def test_dtype_original_reaches_the_converter_as_the_word_original():
    model = target("m", {"format": "hf", "path": "x"}, dtype="original", weights_format="pytorch_bin")
    flags = formats.conversion_flags(model)
    assert flags == "--dtype original --weights-format pytorch_bin"
    args = parsed("consolidate", flags)
    assert (args.dtype, args.weights_format) == ("original", "pytorch_bin")


def test_consolidate_flags_carry_base_model_and_trust_pickle():
    model = target("m", {"format": "deepspeed", "path": "run", "trust_pickle": True}, base_model="/base")
    assert formats.conversion_argv(model) == ["--base-model-name", "/base", "--trust-pickle"]


def test_maxtext_flags_pass_the_config_values_over_the_script_defaults():
    """maxtext-to-hf's own defaults are MaxText's script's (bfloat16, 5GB); the workflow passes the config's."""
    source = {"format": "maxtext", "path": "ckpt", "model_size": "llama3.1-1b", "tokenizer": "/tok dir"}
    flags = formats.conversion_flags(target("m", source))
    args = parsed("maxtext-to-hf", flags)
    assert (args.model_size, args.dtype, args.max_shard_size, args.tokenizer_path) == (
        "llama3.1-1b",
        "float32",
        "40GB",
        "/tok dir",
    )


def test_titan_takes_the_base_models_tokenizer_where_the_source_names_none():
    model = target("m", {"format": "titan", "path": "step-10", "flavor": "qwen3:0.6B"}, base_model="/base")
    flags = formats.conversion_flags(model)
    assert flags == "--flavor qwen3:0.6B --base-model-name /base"
    assert parsed("titan-to-hf", flags).base_model_name == "/base"
    assert formats.extra_inputs(model) == []


def test_a_titan_sources_config_and_tokenizer_are_inputs_of_its_rule():
    source = {"format": "titan", "path": "step-10", "config": "c.json", "tokenizer": "tok"}
    assert formats.extra_inputs(target("m", source)) == ["c.json", "tok"]


def test_a_gguf_source_is_converted_by_gguf_to_hf_with_the_models_dtype():
    model = target("m", {"format": "gguf", "path": "work/wheels/smollm2"}, dtype="bfloat16")
    assert formats.format_of(model).rule == "gguf_to_hf"
    assert parsed("gguf-to-hf", formats.conversion_flags(model)).dtype == "bfloat16"
    assert formats.reference(model, "results") == "work/wheels/smollm2"  # transformers' own load of the file


def test_each_convert_step_builds_only_its_formats_models():
    models = {
        "a": ModelTarget("a", "hf", "x", {}),
        "b": ModelTarget("b", "maxtext", "y", {}, full_state=True),
        "c": ModelTarget("c", "maxtext", "z", {}),
    }
    assert formats.models_of_rule(models, "hf_merge") == "a"
    assert formats.models_of_rule(models, "maxtext_to_hf") == "b|c"
    assert formats.models_of_rule(models, "maxtext_param_only") == "b"
    assert formats.models_of_rule(models, "titan_to_hf") == "(?!)"


def test_a_full_maxtext_state_is_converted_and_verified_from_its_param_only_copy():
    model = ModelTarget("m", "maxtext", "gs://bucket/ckpt", {}, full_state=True)
    assert formats.conversion_input(model, "results") == "results/models/m/param_only"
    assert formats.reference(model, "results") == "results/models/m/param_only"
    remote_param_only = ModelTarget("m", "maxtext", "gs://bucket/ckpt", {})
    assert formats.reference(remote_param_only, "results") is None  # MaxText's math reads local arrays only


def test_a_deepspeed_checkpoint_without_hf_weights_has_no_reference(tmp_path):
    (tmp_path / "global_step10").mkdir()
    assert formats.reference(ModelTarget("m", "deepspeed", str(tmp_path), {}), "results") is None
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert formats.reference(ModelTarget("m", "deepspeed", str(tmp_path), {}), "results") == str(tmp_path)


@pytest.mark.parametrize("reference", ["none", "/verified/model"])
def test_a_models_own_reference_setting_wins(reference):
    model = ModelTarget("m", "hf", "x", {"verify": {"reference": reference}})
    assert formats.reference(model, "results") == (None if reference == "none" else reference)


def test_per_model_tolerances_are_laid_over_the_global_ones():
    from workflow_scripts.verify import settings as verify_settings

    config = yaml.safe_load((REPO / "config/examples/tiny-models.yaml").read_text())
    config["models"]["loose"] = {"source": {"format": "hf", "path": "x"}, "verify": {"tolerances": {"bfloat16": 0.02}}}
    validate(config, SCHEMA)
    settings = verify_settings.for_model(config["verify"], config["models"]["loose"]["verify"])
    assert settings.tolerances == {"float32": 1e-5, "float16": 1e-3, "bfloat16": 0.02}
    argv = verify_settings.to_argv(settings)
    from workflow_scripts.cli import build_parser

    args = build_parser().parse_args(["verify", "--model-path", "m", *argv])
    assert verify_settings.verify_settings_from_args(args) == settings


def test_a_source_takes_only_its_formats_keys():
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError):
        target("m", {"format": "hf", "path": "x", "model_size": "llama3.1-1b"})
    with pytest.raises(WorkflowError):
        target("m", {"format": "maxtext", "path": "x"})  # model_size is required


# --- the registry itself: a format's entry is all the rest of the project needs ---------------------------------


@pytest.mark.parametrize("name", list(registry.FORMATS))
def test_every_lazy_function_of_an_entry_exists(name):
    """The entry names its converter and reference by module and function: a typo fails here, not in a job."""
    entry = registry.FORMATS[name]
    lazies = [entry.converter.convert]
    if entry.numeric_reference:
        lazies += [entry.numeric_reference.recognises, entry.numeric_reference.load]
    assert all(callable(lazy.resolve()) for lazy in lazies)


@pytest.mark.parametrize("name", list(registry.FORMATS))
def test_every_format_has_its_command_rule_sizing_and_placement(name):
    from workflow_scripts.cli.main import COMMANDS
    from workflow_scripts.workflow.resources import CONVERSION_SIZING

    entry = registry.FORMATS[name]
    rules = "".join(path.read_text() for path in (REPO / "rules").glob("*.smk"))
    assert COMMANDS[entry.converter.command] == ("convert", entry.converter.help)
    assert f"rule {entry.rule}:" in rules and f"distillery {entry.converter.command} " in rules
    assert entry.sizing in CONVERSION_SIZING
    assert entry.runs_on in ("highmem", "tpu")  # the needs profiles/slurm maps (tests/test_profiles.py)
    assert entry.converter.options.__doc__.strip()  # the command's description


def test_the_command_of_a_converter_reads_exactly_its_options(tmp_path):
    """The flags of `distillery COMMAND` are its options' settings: what the command parses is what it converts."""
    from workflow_scripts.convert.registry import TitanToHFOptions
    from workflow_scripts.setting import from_args

    args = parsed("titan-to-hf", "--flavor 8B --keep-original-precision --dtype bfloat16")
    options = from_args(TitanToHFOptions, args)
    assert (options.input, options.output, options.flavor, options.dtype) == (Path("in"), Path("out"), "8B", "original")


def test_verify_computes_a_references_logits_with_its_formats_forward(tmp_path, tiny_model):
    """A TorchTitan .pt reference runs TorchTitan's forward, an HF folder is loaded as one."""
    (tmp_path / "model.pt").write_bytes(b"")
    assert registry.numeric_reference_of(tmp_path / "model.pt") == registry.FORMATS["titan"].numeric_reference.load
    assert registry.numeric_reference_of(tiny_model()) is None
