"""`distillery <command>`: one subcommand per workflow step, with the flags of the scripts users migrate from.

A small registry names each command's module (`cli/<stage>.py`) and help line: `distillery --help` lists every
command without importing one, and a command's module (and its flags) is loaded only when that command runs or
shows its help. Heavy libraries are imported inside the commands, so `distillery --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import DistilleryError, os_error_line

# command -> (module of workflow_scripts.cli with its PARSERS, the help line of `distillery --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "consolidate": ("convert", "merge a sharded or DeepSpeed checkpoint into one vLLM-ready HF model folder"),
    "batch-consolidate": ("convert", "consolidate many runs or checkpoints, one output folder each"),
    "verify": (
        "verify",
        "check a model folder for vLLM: files, headers, config, tensors, NaN/Inf, logits vs a reference",
    ),
    "print-structure": ("plans", "print a model's module tree with parameter shapes, built without its weights"),
    "validate-plans": ("plans", "check that vLLM can split a model at tensor-parallel T and pipeline-parallel P"),
    "maxtext-param-only": (
        "convert",
        "turn a MaxText full training-state checkpoint into a param-only one (no optimizer state)",
    ),
    "maxtext-to-hf": ("convert", "convert a MaxText param-only checkpoint of a Llama model into an HF model folder"),
    "make-tiny-model": ("tiny", "build a tiny random Llama or Qwen3 with a locally trained tokenizer (for tests)"),
    "make-tiny-dataset": (
        "tiny",
        "write a small parquet dataset (text, chat messages, ids; nulls and blanks included)",
    ),
    "kd-manifest": ("kd", "list a KD job's chunks from parquet footers"),
    "kd-teacher": ("kd", "record a KD job's teacher and generation settings (chunks are redone when they change)"),
    "kd-chunk": ("kd", "generate completions for one chunk, resumably"),
    "kd-dataset": ("kd", "merge a KD job's chunks into the dataset and summary.json"),
    "kd-status": ("kd", "a KD job's rows done, chunks done, running and failed, rows/s, tokens/s and ETA"),
    "generate": ("kd", "run a whole KD job without Snakemake (several hosts: --worker-index/--num-workers)"),
    "icm": ("icm", "label a dataset without gold labels by Internal Coherence Maximization (Wen et al. 2025)"),
    "serve": ("serve", "start `vllm serve` from a size preset (8B, 70B, 405B), prefix caching always on"),
    "check-server": ("serve", "check an OpenAI-compatible server: it answers, returns logprobs, has prefix caching on"),
    "titan-to-hf": (
        "convert",
        "convert a TorchTitan Llama 3 or Qwen3 checkpoint (DCP folder or .pt) into an HF model folder",
    ),
    "infer": ("infer", "generate completions of prompts with a model folder (vLLM where installed, else transformers)"),
}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _chosen_command(argv: list[str]) -> str | None:
    """The command named on the command line (the first word that is one), if any."""
    return next((word for word in argv if word in COMMANDS), None)


def _configure(command: str, parser: argparse.ArgumentParser) -> None:
    module = importlib.import_module(f"{__package__}.{COMMANDS[command][0]}")
    module.PARSERS[command](parser)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv`, only the command it names gets its flags (and only its module is imported)."""
    parser = _Parser(prog="distillery", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"distillery {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    chosen = None if argv is None else _chosen_command(argv)
    for command, (_, help_line) in COMMANDS.items():
        subparser = commands.add_parser(command, help=help_line)
        if argv is None or command == chosen:
            _configure(command, subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        if args.verbose or args.debug
        else "%(levelname)s: %(message)s",
    )
    try:
        return args.handler(args)
    except DistilleryError as exc:
        if args.debug:
            raise
        print(f"distillery {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the disk or the file system (full, read-only, ...), not the user's input
        if args.debug:
            raise
        print(f"distillery {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"distillery {args.command}: interrupted", file=sys.stderr)
        return 130
