"""The conversion commands: one per converter of the format registry (`convert/registry.py`: `consolidate`,
`maxtext-to-hf`, `titan-to-hf`, ...), batch-consolidate and maxtext-param-only.

A converter's command is derived from its entry: its flags are its options class's settings (`add_flags`), its
description the class's docstring, and it prints the summary of what its conversion returns. Flags keep the
names of the scripts users migrate from (consolidate_for_vllm.py, MaxText's converters).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from functools import partial
from pathlib import Path

from ..convert.registry import ConsolidateOptions, Converter, converters
from ..errors import DistilleryError
from ..setting import add_flags, from_args


def _options(cls: type, args: argparse.Namespace, **paths):
    """A converter's options: its settings from the flags, with the paths and the command line set here."""
    return dataclasses.replace(from_args(cls, args, **paths), command=["distillery", *args.argv])


def _add_conversion(converter: Converter, parser: argparse.ArgumentParser) -> None:
    parser.description = inspect.cleandoc(converter.options.__doc__)
    add_flags(parser, converter.options)
    parser.set_defaults(handler=partial(_run_conversion, converter))


def _run_conversion(converter: Converter, args: argparse.Namespace) -> int:
    print(converter.convert(_options(converter.options, args)).summary())
    return 0


def _add_batch_consolidate(parser: argparse.ArgumentParser) -> None:
    parser.description = "Consolidate the latest (or every) checkpoint of several training runs or models."
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-dir", type=Path, help="one run or model folder")
    source.add_argument("--input-pattern", help="glob of run or model folders, e.g. './ft_runs_*/qwen2.5-7b'")
    source.add_argument("--input-list", type=Path, help="file listing one folder per line")
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--all-checkpoints", action="store_true", help="every checkpoint-N, not just the latest")
    parser.add_argument("--checkpoint-filter", help="checkpoint folders to take, e.g. 'checkpoint-{100,200,300}'")
    parser.add_argument("--max-workers", type=int, default=4, help="conversions run at once (4)")
    parser.add_argument(
        "--naming-template",
        default="{input_name}_step_{step}",
        help="output folder name from {input_name}, {run_name}, {step} (default: {input_name}_step_{step})",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and do nothing")
    parser.add_argument("--continue-on-error", action="store_true", help="go on after a failed conversion")
    # Each run's paths are the batch's; every other setting of consolidate applies to each conversion.
    add_flags(parser, ConsolidateOptions, skip=("--input", "--output", "--checkpoint-dir", "--tag"))
    parser.set_defaults(handler=_run_batch_consolidate)


def _run_batch_consolidate(args: argparse.Namespace) -> int:
    from ..convert.batch import collect_inputs, plan_batch, run_batch

    if args.max_workers < 1:
        raise DistilleryError(f"--max-workers must be at least 1, not {args.max_workers}")
    inputs = collect_inputs(args.input_dir, args.input_pattern, args.input_list)
    items = plan_batch(inputs, args.output_dir, args.naming_template, args.all_checkpoints, args.checkpoint_filter)
    print(f"{len(items)} conversion(s):")
    for item in items:
        print(f"  {item.checkpoint or item.input} -> {item.output}")
    if args.dry_run:
        print("dry run: nothing was written")
        return 0
    base = _options(ConsolidateOptions, args, input=Path(), output=Path())
    outcomes = run_batch(items, base, args.max_workers, args.continue_on_error)
    failures = [outcome for outcome in outcomes if outcome.error]
    print(f"\nsummary: {len(outcomes) - len(failures)} succeeded, {len(failures)} failed"
          + (f", {len(items) - len(outcomes)} not started" if len(outcomes) < len(items) else ""))  # fmt: skip
    for outcome in sorted(outcomes, key=lambda o: items.index(o.item)):
        mark = "✗" if outcome.error else "✓"
        print(f"  {mark} {outcome.item.output}: {outcome.error or outcome.detail}")
    return 1 if failures else 0


def _add_maxtext_param_only(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "What MaxText's generate_param_only_checkpoint does, without building the model or restoring "
        "the optimizer state: the parameters are copied array by array into CHECKPOINT_DIR/0/items."
    )
    parser.add_argument(
        "--load-full-state-path", "--input", dest="full_state", required=True,
        help="the training checkpoint: .../checkpoints/N/items (or .../checkpoints/N, or .../checkpoints: newest N)",
    )  # fmt: skip
    parser.add_argument("--checkpoint-dir", "--output", dest="checkpoint_dir", required=True, type=Path,
                        help="where the param-only checkpoint goes (its arrays in CHECKPOINT_DIR/0/items)")  # fmt: skip
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "original"],
                        help="parameter precision (bfloat16, as MaxText writes it)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.set_defaults(handler=_run_maxtext_param_only)


def _run_maxtext_param_only(args: argparse.Namespace) -> int:
    from ..convert.maxtext_param_only import ParamOnlyOptions, make_param_only_checkpoint

    result = make_param_only_checkpoint(
        ParamOnlyOptions(args.full_state, args.checkpoint_dir, args.dtype, args.force, ["distillery", *args.argv])
    )
    print(f"✓ {result.items}: {result.num_params} parameter arrays from {result.source_items}")
    return 0


PARSERS = {
    **{command: partial(_add_conversion, converter) for command, converter in converters().items()},
    "batch-consolidate": _add_batch_consolidate,
    "maxtext-param-only": _add_maxtext_param_only,
}
