"""`distillery print-structure` and `validate-plans`: a model's module tree and its TP/PP splits, from config.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DistilleryError
from .engine_flags import add_trust_remote_code


def _add_print_structure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model folder (only config.json is read)")
    parser.add_argument("--max-depth", type=int, help="deepest level to print")
    parser.add_argument("--show-params", action="store_true", help="list each module's parameters and shapes")
    add_trust_remote_code(parser)
    parser.set_defaults(handler=_run_print_structure)


def _run_print_structure(args: argparse.Namespace) -> int:
    from ..plans.structure import build_meta_model, structure_lines

    model = build_meta_model(args.model, args.trust_remote_code)
    print("\n".join(structure_lines(model, args.max_depth, args.show_params)))
    return 0


def _add_validate_plans(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model folder (only config.json is read)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size T")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size P")
    parser.add_argument("--strict", action="store_true", help="treat warnings as failures")
    parser.add_argument("--gpu-memory", type=float, help="memory of one GPU in GiB, for the memory estimate")
    parser.add_argument("--max-model-len", type=int, default=4096, help="tokens per sequence for the KV cache")
    parser.add_argument("--batch", type=int, default=1, help="sequences held in the KV cache at once")
    parser.add_argument("--output", type=Path, help="write the JSON report here (and a .md beside it)")
    parser.add_argument(
        "--report-only", action="store_true", help="exit 0 whatever the verdict (the workflow's verify step judges)"
    )
    add_trust_remote_code(parser)
    parser.set_defaults(handler=_run_validate_plans)


def _run_validate_plans(args: argparse.Namespace) -> int:
    from ..plans.structure import build_meta_model
    from ..plans.validate import validate_plans, write_plan_report
    from ..plans.vllm_limits import Budget

    if args.tp < 1 or args.pp < 1:
        raise DistilleryError(f"--tp and --pp must be at least 1 (got {args.tp}, {args.pp})")
    model = build_meta_model(args.model, args.trust_remote_code)
    budget = Budget(gpu_memory_gib=args.gpu_memory, max_model_len=args.max_model_len, batch=args.batch)
    report = validate_plans(model, args.tp, args.pp, budget, args.strict, name=str(args.model))
    if args.output:
        write_plan_report(report, args.output)
    lines = report.console_lines()
    lines[-1] = (
        f"✓ vLLM can split it at T={args.tp}, P={args.pp}"
        if report.passed
        else (f"✗ vLLM cannot split it at T={args.tp}, P={args.pp}: " + ", ".join(c.name for c in report.failures))
    )
    print("\n".join(lines))
    return 0 if report.passed or args.report_only else 1


PARSERS = {
    "print-structure": _add_print_structure,
    "validate-plans": _add_validate_plans,
}
