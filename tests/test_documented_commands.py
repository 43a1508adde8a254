"""Every `snakemake ...` command README.md and the example configs show, typed as written in the repository
(with `-n`): a target after `--configfile X` would be read as a second config file, and the command would fail."""

from __future__ import annotations

import re
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


def test_the_documentation_shows_commands():
    commands = documented_commands()
    assert "snakemake kd" in commands and any("icm-truthfulqa.yaml" in command for command in commands)


@pytest.mark.parametrize("command", documented_commands())
def test_documented_command_runs_as_written(repository, command):
    args = re.sub(r"config/examples/[\w.-]+\.yaml", "my.yaml", command).split()[1:]
    result = snakemake_in(repository, *args, *([] if "--lint" in args else ["-n"]))
    assert result.returncode == 0, f"{command}:\n{result.stderr[-2000:]}"
