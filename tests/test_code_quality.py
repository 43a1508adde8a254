"""The repository stays clean: ruff, ruff format, snakemake --lint and snakefmt, as CI and reviewers expect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)


def test_ruff_check_is_clean():
    result = run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout


def test_ruff_format_is_clean():
    result = run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout


@pytest.mark.integration
def test_snakemake_lint_is_clean():
    result = run(sys.executable, "-m", "snakemake", "--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_snakefmt_is_clean():
    result = run(sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules")
    assert result.returncode == 0, result.stderr


def test_cli_help_is_instant():
    """No heavy import (torch, transformers) happens before a command runs."""
    code = "import sys, workflow_scripts.cli as c; c.build_parser(); print('torch' in sys.modules)"
    result = run(sys.executable, "-c", code)
    assert result.stdout.strip() == "False"
