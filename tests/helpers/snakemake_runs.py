"""Running the workflow as a user would (`python -m snakemake ...`) and reading which jobs it planned or ran."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The workflow on random tiny models: seconds per run, nothing downloaded (the default config's real model is
# tests/test_workflow.py's).
TINY_MODELS = REPO / "config" / "examples" / "tiny-models.yaml"


def snakemake(
    workdir: Path, *args: str, configfile: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(configfile or TINY_MODELS), "--cores", "2", *args,
    ]  # fmt: skip
    environment = {**os.environ, **env} if env else None
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment)


def _jobs(text: str) -> list[tuple[str, str]]:
    """Jobs of a group (an engine job and its chunks) are listed indented below the group."""
    jobs = []
    for block in re.split(r"\n(?= *(?:localrule|rule|localcheckpoint|checkpoint) \w+:)", text):
        rule = re.match(r" *(?:localrule|rule|localcheckpoint|checkpoint) (\w+):", block)
        if rule and rule.group(1) != "all":
            wildcards = re.search(r"wildcards: (.*)", block)
            jobs.append((rule.group(1), wildcards.group(1) if wildcards else ""))
    return sorted(jobs)


def planned_jobs(result: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(rule, wildcards) of each job a dry run would execute."""
    return _jobs(result.stdout)


def executed_jobs(result: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(rule, wildcards) of each job a real run executed, from Snakemake's job log."""
    return _jobs(result.stderr)


def repository_copy(folder: Path) -> Path:
    """The workflow's files (Snakefile, rules, report captions, config, profiles, envs) in `folder`, to run it there
    as users run it: `snakemake ...` in the repository, no `-s`, no `--directory`."""
    import shutil

    for name in ("Snakefile", "rules", "report", "config", "profiles", "envs"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name)
        else:
            shutil.copy(source, folder / name)
    return folder


def snakemake_in(folder: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake ARGS` typed in `folder` (a repository copy): profile and config found as Snakemake finds them."""
    command = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=900, env=env)
