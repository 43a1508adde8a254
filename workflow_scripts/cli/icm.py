"""`distillery icm`: Internal Coherence Maximization, with the reference ICM.py's flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DistilleryError
from ..icm.data import FORMATS as ICM_FORMATS
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
    search.add_argument("--alpha", type=float, default=30.0, help="weight of mutual predictability (30)")
    search.add_argument("--seed", type=int, default=27565976)
    search.add_argument("--batch-size", "--batch_size", type=int, default=256, help="claims labeled together (256)")
    search.add_argument("--num-seed", "--num_seed", type=int, default=8, help="randomly labeled claims at start (8)")
    search.add_argument("--K", "--iterations", dest="iterations", type=int, default=3000, help="iterations (3000)")
    search.add_argument(
        "--consistency-fix-K",
        "--consistency_fix_K",
        dest="consistency_fix_iterations",
        type=int,
        default=10,
        help="consistency-fix rounds for the seed labels (10)",
    )
    search.add_argument(
        "--proposal-fix-K",
        dest="proposal_fix_iterations",
        type=int,
        default=10,
        help="consistency-fix rounds after each proposal (10)",
    )
    search.add_argument("--decay", type=float, default=0.99, help="decay of the exp schedule (0.99)")
    search.add_argument("--initial-T", "--initial_T", dest="initial_temperature", type=float, default=10.0)
    search.add_argument("--final-T", "--final_T", dest="final_temperature", type=float, default=0.01)
    search.add_argument("--scheduler", dest="schedule", default="log", choices=["log", "exp"])
    search.add_argument("--top-logprobs", type=int, default=20, help="next-token candidates read per prompt (20)")
    search.add_argument(
        "--predictability",
        default="mean_logodds",
        choices=["mean_logodds", "sum_logprob"],
        help="mean log-odds (the reference's code) or sum of log P (the paper's formula)",
    )
    search.add_argument(
        "--demonstration-order",
        default="labeling",
        choices=["labeling", "dataset"],
        help="labeling: in the order claims got labels (cache-friendly); dataset: the reference's",
    )
    search.add_argument(
        "--score-unlabeled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score unlabeled claims in each batch (default: on, off for transformers)",
    )
    search.add_argument("--save-every", type=int, default=10, help="save the state every N iterations (10)")
    add_engine_flags(parser)
    parser.set_defaults(handler=_run_icm)


def _run_icm(args: argparse.Namespace) -> int:
    from ..engines import resolve_engine_kind
    from ..icm.algorithm import ICMSettings
    from ..icm.run import ICMJob, run_icm_job

    engine = engine_settings(args)
    kind = resolve_engine_kind(engine.kind)
    score_unlabeled = args.score_unlabeled
    if score_unlabeled is None:
        # Without a prefix cache every extra prompt is a full forward pass: score unlabeled claims on demand.
        score_unlabeled = kind != "transformers"
    settings = ICMSettings(
        alpha=args.alpha,
        num_seed=args.num_seed,
        iterations=args.iterations,
        consistency_fix_iterations=args.consistency_fix_iterations,
        proposal_fix_iterations=args.proposal_fix_iterations,
        initial_temperature=args.initial_temperature,
        final_temperature=args.final_temperature,
        decay=args.decay,
        schedule=args.schedule,
        seed=args.seed,
        predictability=args.predictability,
        demonstration_order=args.demonstration_order,
        score_unlabeled=score_unlabeled,
        save_every=args.save_every,
    )
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
