"""`distillery lay-out`: an HF model folder written as a training checkpoint (sharded .bin, TorchTitan DCP,
DeepSpeed ZeRO, MaxText), for converting it back and checking the conversion against the folder."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def _add_lay_out(parser: argparse.ArgumentParser) -> None:
    from ..choices import LAYOUTS
    from ..layouts.options import LayOutOptions
    from ..setting import add_flags

    parser.description = (
        "Write an HF model folder as a training checkpoint: hf-bin-sharded (save_pretrained's .bin shards), "
        "titan-dcp (a TorchTitan DCP step in torchtitan 0.3's names and rotary layout), deepspeed-zero "
        "(HF Trainer's checkpoint-N with ZeRO-2/3 rank files) or maxtext (a param-only Orbax checkpoint)."
    )
    parser.add_argument("--input", required=True, type=Path, help="the HF model folder")
    parser.add_argument("--output", required=True, type=Path, help="the checkpoint folder to write")
    parser.add_argument("--as", dest="layout", required=True, choices=LAYOUTS, help="the checkpoint format")
    add_flags(parser, LayOutOptions)
    parser.set_defaults(handler=_run_lay_out)


def _run_lay_out(args: argparse.Namespace) -> int:
    from ..layouts.options import LayOutOptions
    from ..layouts.run import lay_out
    from ..setting import from_args

    options = dataclasses.replace(
        from_args(LayOutOptions, args),
        input=args.input,
        output=args.output,
        layout=args.layout,
        command=["distillery", *args.argv],
    )
    result = lay_out(options)
    print(f"✓ {result.output}: {result.num_tensors} tensors as {result.layout.name}; "
          f"{result.layout.reads_back} converts it back")  # fmt: skip
    return 0


PARSERS = {"lay-out": _add_lay_out}
