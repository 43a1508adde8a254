"""A job cancelled with `scancel` reaches Snakemake as a failed job (so it is retried), not as one still running.

The end-to-end proof is tests/test_slurm.py (a real `scancel` on a real SLURM); these tests pin the state mapping
and that the SLURM executor's own status query is the one that learns it.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys

import pytest

from workflow_scripts.workflow.slurm_states import normalise_state, read_cancelled_jobs_as_failed


@pytest.mark.parametrize(
    ("sacct", "executor_reads"),
    [
        ("CANCELLED by 1000", "CANCELLED"),
        ("CANCELLED by 0", "CANCELLED"),
        ("CANCELLED", "CANCELLED"),
        ("COMPLETED", "COMPLETED"),
        ("RUNNING", "RUNNING"),
        ("OUT_OF_MEMORY", "OUT_OF_MEMORY"),
    ],
)
def test_a_state_set_by_a_user_is_read_as_the_state_itself(sacct, executor_reads):
    assert normalise_state(sacct) == executor_reads


def test_the_slurm_executor_sees_a_cancelled_job_as_cancelled(monkeypatch):
    executor = pytest.importorskip("snakemake_executor_plugin_slurm")
    monkeypatch.setattr(executor, "query_job_status", executor.query_job_status)  # undone after the test
    sacct_output = "101|COMPLETED\n102|CANCELLED by 1000\n103|RUNNING\n"
    command = shlex.join(["printf", sacct_output])  # what `sacct --parsable2 --format=JobIdRaw,State` prints

    assert read_cancelled_jobs_as_failed()
    assert not read_cancelled_jobs_as_failed(), "applied twice: each Snakefile parse would wrap it again"
    states, _ = asyncio.run(executor.query_job_status(command, logging.getLogger("test")))

    assert states == {"101": "COMPLETED", "102": "CANCELLED", "103": "RUNNING"}


def test_without_the_slurm_executor_nothing_changes(monkeypatch):
    monkeypatch.setitem(sys.modules, "snakemake_executor_plugin_slurm", None)
    assert not read_cancelled_jobs_as_failed()
