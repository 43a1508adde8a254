"""`distillery icm`: Internal Coherence Maximization, with the reference ICM.py's flags.

The flags are the ICM job's settings (`icm/job.py`, `icm/algorithm.py`, `engines/base.py`): the rule passes the
same flags, from the job's config entry.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..errors import DistilleryError
from ..icm.algorithm import ICMSettings
from ..icm.job import ICMJob
from ..setting import add_flags, from_args
from .engine_flags import add_engine_flags, reachable_engine


def _add_icm(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Search for the labels a base model finds most mutually predictable and logically consistent "
        "(ICM). Flags keep the reference ICM.py's names (--alpha, --num_seed, --K, ...); writes labels.jsonl and "
        "report.json into --output-dir, and saves its state so a killed run resumes."
    )
    # the search's flags first: its --seed is the job's, not the engine's
    add_flags(parser.add_argument_group("search (the reference's flags and defaults)"), ICMSettings)
    add_engine_flags(parser)
    add_flags(parser.add_argument_group("job"), ICMJob)
    parser.set_defaults(handler=_run_icm)


def job_from_args(args: argparse.Namespace) -> ICMJob:
    job = from_args(ICMJob, args)
    if job.data is None or job.output_dir is None:
        raise DistilleryError("pass the claims with --data and the output folder with --output-dir")
    if job.batch_size < 1:
        raise DistilleryError(f"--batch-size must be at least 1, not {job.batch_size}")
    return replace(
        job,
        command=("distillery", *args.argv),
        state_path=job.state_path or job.output_dir / ".icm-state.json",
        engine=reachable_engine(job.engine, args, job.api_key_env),
    )


def _run_icm(args: argparse.Namespace) -> int:
    from ..icm.run import run_icm_job

    job = job_from_args(args)
    report = run_icm_job(job, progress=True)
    accuracy = ""
    if report["accuracy"] is not None:
        accuracy = f", accuracy {report['accuracy']:.1%} on {report['gold_labels_compared']} gold labels"
    balance = report["label_balance"]
    print(
        f"✓ {job.output_dir}/labels.jsonl: {balance['true']} true, {balance['false']} false, "
        f"{balance['unlabeled']} unlabeled after {report['iterations']} iterations{accuracy}"
    )
    print(
        f"  acceptance {report['acceptance_rate']}, violations left {report['consistency_violations_left']}, "
        f"{report['seconds_per_iteration']['mean']} s and {report['engine_calls_per_iteration']} engine calls "
        f"per iteration, prefix-cache hit rate {report['prefix_cache']['hit_rate']}"
    )
    return 0


PARSERS = {
    "icm": _add_icm,
}
