"""The engine flags commands share: how to reach the model (in-process vLLM or transformers, or a server)."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from ..engines.base import EngineSettings
from ..errors import DistilleryError
from ..setting import add_flags


def add_trust_remote_code(parser) -> None:
    """For commands that load a model folder outside the engines: its own code (auto_map) runs only when asked."""
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run the model folder's own code (auto_map); never asked"
    )


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """How to reach the model: in-process vLLM or transformers, or an OpenAI-compatible server."""
    group = parser.add_argument_group("engine")
    add_flags(group, EngineSettings)
    group.add_argument("--base-url-file", type=Path, help="read the server URL from this file (written by serve)")


def reachable_engine(settings: EngineSettings, args: argparse.Namespace, api_key_env: str) -> EngineSettings:
    """The engine with what no flag carries: the API key from its variable, the server URL from a file."""
    settings = replace(settings, api_key=os.environ.get(api_key_env) or None)
    if args.base_url_file:
        if not args.base_url_file.is_file():
            raise DistilleryError("does not exist", args.base_url_file, "is the server rule running?")
        settings = replace(settings, base_url=args.base_url_file.read_text().strip())
    return settings
