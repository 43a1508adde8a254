"""`distillery report-model`, `report-kd` and `report-icm`: the figures of `snakemake --report`, from the JSON
artifacts of verification, KD and ICM (`workflow_scripts/report/`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_report_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verification", type=Path, required=True, help="the model's verification.json")
    parser.add_argument("--plans", type=Path, action="append", default=[], help="a plans/tpT_ppP.json (repeatable)")
    parser.add_argument("--verification-html", type=Path, required=True, help="write the checks table here")
    parser.add_argument("--plans-html", type=Path, required=True, help="write the parallel plans here")
    parser.set_defaults(handler=_run_report_model)


def _run_report_model(args: argparse.Namespace) -> int:
    from ..report.models import write_figures

    write_figures(args.verification, args.plans, args.verification_html, args.plans_html)
    print(f"✓ {args.verification_html}, {args.plans_html}")
    return 0


def _add_report_kd(parser: argparse.ArgumentParser) -> None:
    from ..report.kd import SAMPLES

    parser.add_argument("--summary", type=Path, required=True, help="the job's summary.json")
    parser.add_argument("--dataset", type=Path, required=True, help="the job's dataset (.jsonl or .parquet)")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="records shown as sample completions")
    parser.add_argument("--summary-html", type=Path, required=True, help="write rows, skips and tokens here")
    parser.add_argument("--throughput-svg", type=Path, required=True, help="write tokens/s per chunk here")
    parser.add_argument("--samples-html", type=Path, required=True, help="write the sample completions here")
    parser.set_defaults(handler=_run_report_kd)


def _run_report_kd(args: argparse.Namespace) -> int:
    from ..errors import DistilleryError
    from ..report.kd import write_figures

    if args.samples < 0:
        raise DistilleryError(f"--samples must be 0 or more, not {args.samples}")
    write_figures(args.summary, args.dataset, args.summary_html, args.throughput_svg, args.samples_html, args.samples)
    print(f"✓ {args.summary_html}, {args.throughput_svg}, {args.samples_html}")
    return 0


def _add_report_icm(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", required=True, help="the ICM job's name, for the titles")
    parser.add_argument("--report", type=Path, required=True, help="the job's report.json")
    parser.add_argument("--labels", type=Path, required=True, help="the job's labels.jsonl")
    parser.add_argument("--summary-html", type=Path, required=True, help="write accuracy and label balance here")
    parser.add_argument("--objective-svg", type=Path, required=True, help="write the objective per iteration here")
    parser.set_defaults(handler=_run_report_icm)


def _run_report_icm(args: argparse.Namespace) -> int:
    from ..report.icm import write_figures

    write_figures(args.job, args.report, args.labels, args.summary_html, args.objective_svg)
    print(f"✓ {args.summary_html}, {args.objective_svg}")
    return 0


PARSERS = {
    "report-model": _add_report_model,
    "report-kd": _add_report_kd,
    "report-icm": _add_report_icm,
}
