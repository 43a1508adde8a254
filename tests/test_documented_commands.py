"""Every `snakemake ...` command README.md and the example configs show, typed as written in the repository.

Each is read by Snakemake's own argument parser (a target after `--configfile X` is read as a second config file,
and the command fails), then the commands that share a profile and config files are planned together with `-n`:
one Snakemake start per combination instead of one per command."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from helpers.snakemake_runs import REPO, repository_copy, snakemake_in

pytestmark = [pytest.mark.integration]

# Commands that need a bucket; the storage runs are tested against a real S3 server in test_remote_storage.py.
NEEDS_A_BUCKET = "--default-storage-provider"


def documented_commands() -> list[str]:
    """The snakemake commands of README.md (code spans and code-block lines, `&&` chains split) and of the example
    configs' comments, in order, each once."""
    readme = (REPO / "README.md").read_text()
    lines = [part.strip() for line in readme.splitlines() for part in line.split("&&")]
    commands = re.findall(r"`(snakemake [^`]*)`", readme) + [line for line in lines if line.startswith("snakemake ")]
    for example in sorted((REPO / "config/examples").glob("*.yaml")):
        commands += [command.strip() for command in re.findall(r"(snakemake [^`\n]*)", example.read_text())]
    return list(dict.fromkeys(command for command in commands if NEEDS_A_BUCKET not in command))


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """The repository with a user's `my.yaml` of one tiny model; the example configs name checkpoints that are not
    here, so their commands run on it (their keys are checked by test_config.py)."""
    folder = repository_copy(tmp_path_factory.mktemp("repository"))
    config = {"tiny_models": {"src": {}}, "models": {"m": {"source": {"format": "hf", "path": "work/sources/src"}}}}
    (folder / "my.yaml").write_text(yaml.safe_dump(config))
    return folder


TARGET_RULES = {"all", "models", "verification", "layouts", "kd", "icm"}


def parsed(command: str):
    """The command as Snakemake reads it, an example config standing for the user's `my.yaml`."""
    from snakemake.cli import get_argument_parser

    return get_argument_parser().parse_args(re.sub(r"config/examples/[\w.-]+\.yaml", "my.yaml", command).split()[1:])


def test_the_documentation_shows_commands():
    commands = documented_commands()
    assert "snakemake kd" in commands and any("icm-truthfulqa.yaml" in command for command in commands)


@pytest.mark.parametrize("command", documented_commands())
def test_documented_command_names_only_files_that_exist_and_targets_that_are_rules(command):
    args = parsed(command)
    for configfile in args.configfile or []:
        assert configfile.name == "my.yaml", f"{command}: {configfile} is read as a config file"
    for file in re.findall(r"config/examples/[\w.-]+\.yaml", command):
        assert (REPO / file).is_file(), f"{command}: {file} does not exist"
    for profile in args.profile or []:
        assert (REPO / profile / "config.yaml").is_file(), f"{command}: no profile {profile}"
    assert set(args.targets) <= TARGET_RULES, f"{command}: {set(args.targets) - TARGET_RULES} are not rules"


def planned_together() -> dict[tuple, set[str]]:
    """The documented commands by what Snakemake plans from (profile, config files, `--lint`/`--unlock` or a plan),
    each group with the union of its commands' targets and of `--rerun-incomplete`."""
    groups = defaultdict(set)
    for command in documented_commands():
        args = parsed(command)
        mode = "--lint" if args.lint else "--unlock" if args.unlock else "-n"
        key = (tuple(args.profile or ()), tuple(str(file) for file in args.configfile or ()), mode)
        groups[key] |= (set(args.targets) or {"all"}) | ({"--rerun-incomplete"} if args.rerun_incomplete else set())
    return groups


def snakemake_args(key: tuple) -> list[str]:
    profile, configfiles, mode = key
    args = [*(f"--profile={name}" for name in profile), *(f"--configfile={name}" for name in configfiles), mode]
    return args if mode != "-n" else args + sorted(planned_together()[key])


@pytest.mark.parametrize("key", sorted(planned_together()), ids=lambda key: " ".join(snakemake_args(key)))
def test_documented_commands_plan_as_written(repository, key):
    args = snakemake_args(key)
    result = snakemake_in(repository, *args)
    assert result.returncode == 0, f"snakemake {' '.join(args)}:\n{result.stderr[-2000:]}"
