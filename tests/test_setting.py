"""A setting is declared once; its flag, config key, environment variable, argv and JSON form follow from it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from workflow_scripts.errors import DistilleryError
from workflow_scripts.setting import (
    add_flags,
    config_defaults,
    from_args,
    from_config,
    from_dict,
    nested,
    setting,
    to_argv,
    to_dict,
)


@dataclass(frozen=True)
class Sampling:
    temperature: float = setting(0.8, help="sampling temperature", env="TEMPERATURE")
    max_tokens: int = setting(256, help="completion length cap")
    stop: tuple[str, ...] = setting((), help="stop string (repeatable)")
    seed: int = setting(0, help="sampling seed")


@dataclass(frozen=True)
class Engine:
    kind: str = setting("auto", help="engine", flag="--engine", choices=("auto", "vllm"))
    max_num_seqs: int = setting(256, help="sequences per batch", aliases=("--gen-batch-size",), env="GEN_BATCH_SIZE")
    max_model_len: int | None = setting(None, help="context length")
    prefix_caching: bool = setting(True, help="vLLM prefix cache", config="enable_prefix_caching")
    seed: int = setting(0, help="sampling seed", config=None)
    api_key: str | None = setting(None, help="API key", flag=None, config=None, secret=True)
    tokenizer: str | None = setting(None, help="tokenizer folder", config="/tokenizer")


@dataclass(frozen=True)
class Verify:
    tolerances: dict = setting(help="largest relative logit difference by dtype", default_factory=dict)


@dataclass(frozen=True)
class Job:
    name: str = setting("kd", help="job name", flag="--job-name", config=None)
    prompt_mode: str = setting("prefix", help="how rows become prompts", config="dataset.prompt_mode")
    sampling: Sampling = nested(Sampling)
    engine: Engine = nested(Engine)


@dataclass(frozen=True)
class FlatJob:
    """A job whose config lays its engine out flat (`engine: vllm`, `server: {max_model_len: ...}`)."""

    seed: int = setting(7, help="search seed")
    engine: Engine = nested(
        Engine, config="", keys={"kind": "engine", "max_model_len": "server.max_model_len"}, without=("seed",)
    )


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, Job)
    return parser.parse_args(list(argv))


def test_no_flags_gives_the_declared_defaults():
    assert from_args(Job, parse()) == Job()


def test_flags_fill_nested_settings_and_a_shared_flag_fills_both_fields():
    job = from_args(Job, parse("--temperature", "0.2", "--engine", "vllm", "--seed", "7", "--stop", "a", "--stop", "b"))
    assert job.sampling == Sampling(temperature=0.2, stop=("a", "b"), seed=7)
    assert job.engine.kind == "vllm" and job.engine.seed == 7


def test_an_alias_is_the_same_setting():
    assert from_args(Job, parse("--gen-batch-size", "32")).engine.max_num_seqs == 32


def test_a_bool_setting_has_a_negative_flag():
    assert from_args(Job, parse("--no-prefix-caching")).engine.prefix_caching is False


def test_an_optional_setting_takes_none():
    assert from_args(Job, parse("--max-model-len", "none")).engine.max_model_len is None
    assert from_args(Job, parse("--max-model-len", "4096")).engine.max_model_len == 4096


def test_a_bad_flag_value_is_a_usage_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse("--max-tokens", "many")
    assert "--max-tokens='many' is not a whole number" in capsys.readouterr().err


def test_environment_variables_are_read_only_where_a_command_asks_and_flags_win():
    environ = {"TEMPERATURE": "0.3", "GEN_BATCH_SIZE": "16"}
    assert from_args(Job, parse()).sampling.temperature == 0.8
    job = from_args(Job, parse("--gen-batch-size", "8"), environ=environ)
    assert job.sampling.temperature == 0.3 and job.engine.max_num_seqs == 8


def test_a_bad_environment_variable_names_the_variable_and_its_value():
    expected = r"GEN_BATCH_SIZE='four' is not a whole number; set it to one \(or unset it\), or pass --gen-batch-size"
    with pytest.raises(DistilleryError, match=expected):
        from_args(Job, parse(), environ={"GEN_BATCH_SIZE": "four"})


def test_to_argv_round_trips_through_the_parser():
    job = Job(
        prompt_mode="chat",
        sampling=Sampling(temperature=0.0, stop=("\n",), seed=3),
        engine=Engine(kind="vllm", max_model_len=1024, prefix_caching=False, seed=3),
    )
    argv = to_argv(job)
    assert from_args(Job, parse(*argv), name="kd") == job
    assert "--no-prefix-caching" in argv and argv.count("--seed") == 1


def test_to_argv_refuses_two_values_for_one_shared_flag():
    with pytest.raises(ValueError, match="--seed holds two values"):
        to_argv(Job(sampling=Sampling(seed=1), engine=Engine(seed=2)))


def test_to_argv_leaves_secrets_out():
    assert to_argv(Job(engine=Engine(api_key="sk-secret"))) == []


def test_from_config_reads_dotted_and_nested_keys_and_defaults_the_rest():
    entry = {"dataset": {"prompt_mode": "chat"}, "sampling": {"temperature": 0.5, "stop": ["x"]}, "engine": {}}
    job = from_config(Job, entry, name="job1")
    assert job == Job(name="job1", prompt_mode="chat", sampling=Sampling(temperature=0.5, stop=("x",)))


def test_the_json_round_trip_is_exact_and_keeps_secrets_out():
    job = Job(sampling=Sampling(stop=("a",)), engine=Engine(api_key="sk-secret", max_model_len=64))
    data = to_dict(job)
    assert "api_key" not in data["engine"] and data["sampling"]["stop"] == ["a"]
    assert from_dict(Job, data) == Job(sampling=Sampling(stop=("a",)), engine=Engine(max_model_len=64))


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(DistilleryError, match="unknown Sampling settings: temprature"):
        from_dict(Sampling, {"temprature": 1.0})


def test_config_defaults_are_listed_by_dotted_key():
    defaults = config_defaults(Job)
    assert defaults["dataset.prompt_mode"] == "prefix"
    assert defaults["sampling.stop"] == [] and defaults["engine.enable_prefix_caching"] is True
    assert "name" not in defaults and "engine.seed" not in defaults


def test_a_key_starting_with_a_slash_is_read_from_the_top_entry():
    job = from_config(Job, {"tokenizer": "/tok", "engine": {"tokenizer": "ignored"}})
    assert job.engine.tokenizer == "/tok"
    assert config_defaults(Job)["tokenizer"] is None and "engine.tokenizer" not in config_defaults(Job)


@pytest.mark.parametrize("text", ["float32=1e-5,bfloat16=5e-3", '{"float32": 1e-5, "bfloat16": 5e-3}'])
def test_a_dict_setting_is_one_flag_of_pairs_or_json(text):
    parser = argparse.ArgumentParser()
    add_flags(parser, Verify)
    settings = from_args(Verify, parser.parse_args(["--tolerances", text]))
    assert settings.tolerances == {"float32": 1e-5, "bfloat16": 5e-3}
    assert from_args(Verify, parser.parse_args(to_argv(settings))) == settings


def test_a_malformed_dict_flag_is_a_usage_error(capsys):
    parser = argparse.ArgumentParser()
    add_flags(parser, Verify)
    with pytest.raises(SystemExit):
        parser.parse_args(["--tolerances", "float32"])
    assert "--tolerances='float32' is not KEY=VALUE pairs or a JSON object" in capsys.readouterr().err


def test_a_nested_class_laid_out_by_its_parent_reads_the_parent_keys_only():
    job = from_config(FlatJob, {"engine": "vllm", "server": {"max_model_len": 64}, "max_num_seqs": 8, "seed": 3})
    assert job == FlatJob(seed=3, engine=Engine(kind="vllm", max_model_len=64))  # max_num_seqs is no key of it
    assert config_defaults(FlatJob) == {"seed": 7, "engine": "auto", "server.max_model_len": None}


def test_a_nested_setting_left_out_is_no_flag_of_the_parent_and_keeps_its_default():
    parser = argparse.ArgumentParser()
    add_flags(parser, FlatJob)
    job = from_args(FlatJob, parser.parse_args(["--seed", "3", "--max-num-seqs", "8"]))
    assert job == FlatJob(seed=3, engine=Engine(max_num_seqs=8))  # the engine's seed stays 0
    assert to_argv(job) == ["--seed", "3", "--max-num-seqs", "8"]


def test_a_choice_in_other_letters_is_that_choice():
    assert from_args(Job, parse("--engine", "VLLM")).engine.kind == "vllm"


@dataclass(frozen=True)
class Conversion:
    output: str | None = setting(None, help="output folder", config=None, required=True)
    dtype: str = setting("float32", help="precision", switches={"--keep-original-precision": "original"})


def parse_conversion(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_flags(parser, Conversion)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("order", [("--dtype", "bfloat16", "--keep-original-precision"),
                                   ("--keep-original-precision", "--dtype", "bfloat16")])  # fmt: skip
def test_a_switch_sets_its_value_whatever_the_settings_own_flag_says(order):
    assert from_args(Conversion, parse_conversion("--output", "out", *order)).dtype == "original"
    assert to_argv(Conversion("out", "original")) == ["--output", "out", "--dtype", "original"]  # never the switch


def test_a_required_setting_is_a_flag_the_command_must_be_given(capsys):
    with pytest.raises(SystemExit):
        parse_conversion("--dtype", "bfloat16")
    assert "the following arguments are required: --output" in capsys.readouterr().err
    assert from_config(Conversion, {"output": "ignored", "dtype": "float16"}) == Conversion(None, "float16")
