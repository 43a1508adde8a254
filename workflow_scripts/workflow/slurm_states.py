"""SLURM job states as snakemake-executor-plugin-slurm must read them for `scancel` to count as a failure.

`sacct` reports a job cancelled by a person as "CANCELLED by <uid>". The executor (2.x, 2.8 at the time of
writing) compares each state with its list of failure states by equality, so it takes such a job for one that is
still queued, and the workflow waits for it forever instead of retrying it. The pre-plugin SLURM profile had the
same bug and fixed it the same way: read the state's first word. The Snakefile applies this to the executor that
Snakemake has loaded; without the plugin (local runs, jobs on the nodes) it does nothing.
"""

from __future__ import annotations

import re
import sys

_SET_BY_USER = re.compile(r"^([A-Z_]+) by \d+$")
_MARK = "_distillery_reads_cancelled_by_uid"


def normalise_state(state: str) -> str:
    """'CANCELLED by 1000' -> 'CANCELLED'; every other state is returned as it is."""
    match = _SET_BY_USER.match(state.strip())
    return match.group(1) if match else state


def read_cancelled_jobs_as_failed() -> bool:
    """Make the loaded SLURM executor see "CANCELLED by <uid>" as "CANCELLED". Returns whether it was applied now.

    The executor's status loop calls its module's `query_job_status` on each poll, so wrapping that one name is
    enough; the wrapper is applied once, however often the Snakefile is parsed.
    """
    executor = sys.modules.get("snakemake_executor_plugin_slurm")
    query = getattr(executor, "query_job_status", None)
    if query is None or getattr(query, _MARK, False):
        return False

    async def query_job_status(command, logger):
        states, duration = await query(command, logger)
        if states is not None:
            states = {job: normalise_state(state) for job, state in states.items()}
        return states, duration

    setattr(query_job_status, _MARK, True)
    executor.query_job_status = query_job_status
    return True
