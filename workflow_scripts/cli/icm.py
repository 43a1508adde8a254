"""`distillery icm`: Internal Coherence Maximization, with the reference ICM.py's flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DistilleryError
from ..icm.algorithm import ICMSettings
from ..icm.data import FORMATS as ICM_FORMATS
from ..setting import add_flags, from_args
from .engine_flags import add_engine_flags, engine_settings


def _add_icm(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Search for the labels a base model finds most mutually predictable and logically consistent "
        "(ICM). Flags keep the reference ICM.py's names (--alpha, --num_seed, --K, ...); writes labels.jsonl and "
        "report.json into --output-dir, and saves its state so a killed run resumes."
    )
    parser.add_argument("--data", required=True, type=Path, help="the claims (JSON list or JSONL)")
    parser.add_argument(
        "--testbed",
        "--format",
        dest="data_format",
        default="generic",
        type=str.lower,
        choices=ICM_FORMATS,
        help="data format and prompt: truthfulqa, gsm8k, alpaca, generic",
    )
    parser.add_argument("--prompt-template", help="prompt of a claim, from its fields, e.g. '{text}\\nI think ...'")
    parser.add_argument("--output-dir", required=True, type=Path, help="where labels.jsonl and report.json go")
    parser.add_argument("--state", type=Path, help="search state for resuming (default: OUTPUT_DIR/.icm-state.json)")
    search = parser.add_argument_group("search (the reference's flags and defaults)")
    add_flags(search, ICMSettings)
    search.add_argument("--batch-size", "--batch_size", type=int, default=256, help="claims labeled together (256)")
    search.add_argument("--top-logprobs", type=int, default=20, help="next-token candidates read per prompt (20)")
    search.add_argument(
        "--score-unlabeled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score unlabeled claims in each batch (default: on, off for transformers)",
    )
    add_engine_flags(parser)
    parser.set_defaults(handler=_run_icm)


def _run_icm(args: argparse.Namespace) -> int:
    from ..engines import resolve_engine_kind
    from ..icm.run import ICMJob, run_icm_job

    engine = engine_settings(args, seed=0)  # the search's --seed is not the engine's
    kind = resolve_engine_kind(engine.kind)
    score_unlabeled = args.score_unlabeled
    if score_unlabeled is None:
        # Without a prefix cache every extra prompt is a full forward pass: score unlabeled claims on demand.
        score_unlabeled = kind != "transformers"
    settings = from_args(ICMSettings, args, score_unlabeled=score_unlabeled)
    if args.batch_size < 1:
        raise DistilleryError(f"--batch-size must be at least 1, not {args.batch_size}")
    job = ICMJob(
        data=args.data,
        data_format=args.data_format,
        output_dir=args.output_dir,
        state_path=args.state or args.output_dir / ".icm-state.json",
        settings=settings,
        engine=engine,
        batch_size=args.batch_size,
        prompt_template=args.prompt_template,
        top_logprobs=args.top_logprobs,
        command=("distillery", *args.argv),
    )
    report = run_icm_job(job, progress=True)
    accuracy = ""
    if report["accuracy"] is not None:
        accuracy = f", accuracy {report['accuracy']:.1%} on {report['gold_labels_compared']} gold labels"
    balance = report["label_balance"]
    print(
        f"✓ {args.output_dir}/labels.jsonl: {balance['true']} true, {balance['false']} false, "
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
