"""`distillery verify`: the checks of verify_model.py, with a logits comparison against a reference."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DistilleryError
from ..verify.settings import add_verify_flags, verify_settings_from_args
from .engine_flags import add_trust_remote_code


def _add_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", type=Path, help="model folder (or use --model-path)")
    parser.add_argument("--model-path", type=Path, help="model folder, as verify_model.py takes it")
    parser.add_argument("--reference", type=Path, help="source checkpoint or verified model to compare logits with")
    parser.add_argument("--report", type=Path, help="write the JSON report here (a .md is written beside it)")
    parser.add_argument("--markdown", type=Path, help="where to write the Markdown report")
    parser.add_argument(
        "--plans", action="append", default=[], type=Path, help="a validate-plans JSON report to include (repeatable)"
    )
    add_verify_flags(parser)
    add_trust_remote_code(parser)
    parser.set_defaults(handler=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from ..architectures.remote_code import allow_remote_code

    model_path = args.model_path or args.model
    if model_path is None:
        raise DistilleryError("no model given", hint="pass --model-path FOLDER")
    allow_remote_code(model_path, args.trust_remote_code)  # before torch is imported: a refusal is instant

    from ..convert.registry import numeric_reference_of
    from ..verify.run import verify_model

    settings = verify_settings_from_args(args)
    report = verify_model(
        model_path,
        reference_path=args.reference,
        expect_single_file=settings.expect_single_file,
        probe_prompts=settings.probe_prompts,
        tolerances=settings.tolerances,
        plan_reports=args.plans,
        trust_remote_code=args.trust_remote_code,
        # The reference's format says how to compute its logits, where it is no HF folder.
        load_reference=numeric_reference_of(args.reference) if args.reference else None,
    )
    if args.report:
        report.write(args.report, args.markdown)
    print("\n".join(report.console_lines()))
    return 0 if report.passed else 1


PARSERS = {
    "verify": _add_verify,
}
