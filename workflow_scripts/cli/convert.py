"""The conversion commands: consolidate, batch-consolidate, maxtext-param-only, maxtext-to-hf, titan-to-hf.

Flags keep the names of the scripts users migrate from (consolidate_for_vllm.py, MaxText's converters).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import DistilleryError
from ..setting import add_flags, from_args


def _add_conversion_flags(parser: argparse.ArgumentParser) -> None:
    """The flags consolidate and batch-consolidate share, as consolidate_for_vllm.py names them."""
    from ..convert.options import ConsolidateOptions

    add_flags(parser, ConsolidateOptions)
    _add_precision_alias(parser)
    parser.add_argument("--safetensors", dest="weights_format", action="store_const", const="safetensors")
    parser.add_argument("--pytorch-bin", dest="weights_format", action="store_const", const="pytorch_bin")


def _add_precision_alias(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-original-precision", action="store_true",
                        help="keep each tensor's dtype, whatever --dtype says (--dtype original)")  # fmt: skip


def _options(cls, args: argparse.Namespace, **paths):
    """A converter's options: its settings from the flags, with the paths and the command line set here."""
    precision = {"dtype": "original"} if getattr(args, "keep_original_precision", False) else {}
    settings = from_args(cls, args, **precision)
    return dataclasses.replace(settings, command=["distillery", *args.argv], **paths)


def _conversion_options(args: argparse.Namespace, **paths):
    from ..convert.options import ConsolidateOptions

    return _options(ConsolidateOptions, args, **paths)


def _add_consolidate(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Merge a DeepSpeed ZeRO checkpoint or an HF model folder (sharded safetensors or .bin, nested "
        "shards, single file) into one vLLM-ready folder: weights streamed tensor by tensor, config, tokenizer "
        "and provenance.json."
    )
    parser.add_argument("--input", required=True, type=Path, help="input folder (a model or a training run)")
    parser.add_argument("--output", required=True, type=Path, help="output folder")
    _add_conversion_flags(parser)
    deepspeed_flags = parser.add_argument_group("DeepSpeed options")
    deepspeed_flags.add_argument(
        "--checkpoint-dir", type=Path, help="this checkpoint folder (checkpoint-N or global_stepN), not the latest"
    )
    deepspeed_flags.add_argument("--tag", help="global_stepN to use instead of the one 'latest' names")
    parser.set_defaults(handler=_run_consolidate)


def _run_consolidate(args: argparse.Namespace) -> int:
    from ..convert.consolidate import consolidate

    result = consolidate(
        _conversion_options(
            args, input=args.input, output=args.output, checkpoint_dir=args.checkpoint_dir, tag=args.tag
        )
    )
    files = ", ".join(f.name for f in result.files)
    print(f"✓ {result.output}: {result.num_tensors} tensors from {result.input_type} input into {files}")
    if result.dropped_tied:
        print(f"  tied weights left to the loader: {', '.join(result.dropped_tied)}")
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
    _add_conversion_flags(parser)
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
    base = _conversion_options(args, input=Path(), output=Path())
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


def _add_maxtext_to_hf(parser: argparse.ArgumentParser) -> None:
    from ..convert.options import MaxTextToHFOptions

    parser.description = (
        "The flags of llama_mistral_mixtral_orbax_to_hf: map MaxText's parameter tree onto HF Llama "
        "names with MaxText's rotary layout and query scaling undone, and write config, tokenizer and provenance."
    )
    parser.add_argument("--orbax-checkpoint", required=True, help="param-only checkpoint: .../0/items (local or gs://)")
    parser.add_argument("--hf-model-path", required=True, type=Path, help="output folder")
    add_flags(parser, MaxTextToHFOptions)
    parser.set_defaults(handler=_run_maxtext_to_hf)


def _run_maxtext_to_hf(args: argparse.Namespace) -> int:
    from ..convert.maxtext_to_hf import convert_maxtext_to_hf
    from ..convert.options import MaxTextToHFOptions

    options = _options(MaxTextToHFOptions, args, orbax_checkpoint=args.orbax_checkpoint,
                       hf_model_path=args.hf_model_path)  # fmt: skip
    result = convert_maxtext_to_hf(options)
    files = ", ".join(f.name for f in result.files)
    print(f"✓ {result.output}: {result.num_tensors} tensors of {options.model_size} "
          f"(rope {result.math.rope_type}) into {files}")  # fmt: skip
    return 0


def _add_titan_to_hf(parser: argparse.ArgumentParser) -> None:
    from ..convert.options import TitanToHFOptions

    parser.description = (
        "Convert a TorchTitan checkpoint (torch.distributed.checkpoint folder or a .pt state dict, "
        "with the names of TorchTitan's vLLM guide or of torchtitan 0.3) into a vLLM-ready HF Llama or Qwen3 "
        "folder, reading one tensor at a time."
    )
    parser.add_argument("--input", required=True, type=Path, help="DCP folder (e.g. checkpoint/step-1000) or .pt")
    parser.add_argument("--output", required=True, type=Path, help="output folder")
    add_flags(parser, TitanToHFOptions)
    _add_precision_alias(parser)
    parser.set_defaults(handler=_run_titan_to_hf)


def _run_titan_to_hf(args: argparse.Namespace) -> int:
    from ..convert.options import TitanToHFOptions
    from ..convert.titan_to_hf import convert_titan_to_hf

    result = convert_titan_to_hf(_options(TitanToHFOptions, args, input=args.input, output=args.output))
    print(f"✓ {result.output}: {result.num_tensors} tensors of a {result.layout.describe}, config from "
          f"{result.config_source}")  # fmt: skip
    return 0


PARSERS = {
    "consolidate": _add_consolidate,
    "batch-consolidate": _add_batch_consolidate,
    "maxtext-param-only": _add_maxtext_param_only,
    "maxtext-to-hf": _add_maxtext_to_hf,
    "titan-to-hf": _add_titan_to_hf,
}
