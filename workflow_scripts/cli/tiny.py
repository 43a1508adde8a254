"""`distillery make-tiny-model` and `make-tiny-dataset`: small real inputs for tests and the CI workflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..choices import TINY_LAYOUTS


def _add_make_tiny_model(parser: argparse.ArgumentParser) -> None:
    from ..architectures.tiny_spec import TinyModelSpec
    from ..setting import add_flags

    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--layout", default="safetensors", choices=TINY_LAYOUTS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", default="40KB", help="shard size for the sharded layouts")
    add_flags(parser, TinyModelSpec)
    parser.add_argument("--force", action="store_true")
    parser.set_defaults(handler=_run_make_tiny_model)


def _run_make_tiny_model(args: argparse.Namespace) -> int:
    from ..architectures.tiny import TinyModelSpec, build_tiny_model
    from ..atomic import atomic_output_dir
    from ..provenance import write_provenance
    from ..setting import from_args

    spec = from_args(TinyModelSpec, args)
    with atomic_output_dir(args.output, force=args.force) as staging:
        build_tiny_model(staging, spec, args.layout, args.seed, args.dtype, args.max_shard_size)
        write_provenance(staging, command=["distillery", *args.argv], tool_version=__version__)
    print(f"✓ {args.output}: tiny {spec.architecture} ({args.layout}, {args.dtype})")
    return 0


def _add_make_tiny_dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--rows", type=int, default=40, help="rows of the first file (each next one has 7 more)")
    parser.add_argument("--row-group-rows", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    parser.set_defaults(handler=_run_make_tiny_dataset)


def _run_make_tiny_dataset(args: argparse.Namespace) -> int:
    from ..atomic import atomic_output_dir
    from ..kd.tiny_dataset import write_tiny_dataset
    from ..provenance import write_provenance

    with atomic_output_dir(args.output, force=args.force) as staging:
        write_tiny_dataset(staging, args.files, args.rows, args.row_group_rows, args.seed)
        write_provenance(staging, command=["distillery", *args.argv], tool_version=__version__)
    print(f"✓ {args.output}: {args.files} parquet files")
    return 0


PARSERS = {
    "make-tiny-model": _add_make_tiny_model,
    "make-tiny-dataset": _add_make_tiny_dataset,
}
