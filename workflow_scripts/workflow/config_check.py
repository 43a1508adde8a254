"""The workflow's config as the user wrote it, checked before Snakemake validates it against
config/schema/config.schema.yaml: which file is read, YAML errors with their line, misspelled keys with the
nearest valid name. Each problem is one line naming the file (see `one_line_errors`).

A user's `--configfile` replaces config/config.yaml (the demo) instead of being merged over it; with no config
file given, the demo runs.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

from ..errors import DistilleryError

SCHEMA = Path(__file__).resolve().parents[2] / "config/schema/config.schema.yaml"


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A user's mistake found while the Snakefile is read ends the run with its one line, no traceback
    (Snakemake prints a DistilleryError with a traceback and the Snakefile's line)."""
    try:
        yield
    except DistilleryError as error:
        sys.exit(str(error))


def read_yaml(path: str | Path) -> object:
    """A config file's content; a syntax error names the file and the line."""
    try:
        with open(path, encoding="utf-8") as stream:
            return yaml.safe_load(stream)
    except FileNotFoundError:
        raise DistilleryError("not found", f"config {path}", "check the --configfile path") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"config {path}, line {mark.line + 1}" if mark else f"config {path}"
        problem = error.problem or error.context
        if error.context and error.problem and error.context_mark:
            problem += f" ({error.context} that starts on line {error.context_mark.line + 1})"
        raise DistilleryError(f"not valid YAML: {problem}", where, "fix the YAML syntax there") from None
    except yaml.YAMLError as error:
        raise DistilleryError(f"not valid YAML: {error}", f"config {path}") from None


def _unknown_key(data: object, schema: dict, where: str) -> tuple[str, str, list[str]] | None:
    """The first key of `data` that `schema` does not list, as (key, where it is, the keys there)."""
    if not isinstance(data, dict) or not isinstance(schema, dict):
        return None
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, value in data.items():
        inside = f"{where}.{key}" if where else str(key)
        if key in properties:
            found = _unknown_key(value, properties[key], inside)
        elif extra is False:
            return str(key), where, sorted(properties)
        else:
            found = _unknown_key(value, extra, inside)
        if found:
            return found
    return None


def check_keys(data: object, source: str, schema: dict) -> None:
    """Refuse a key the schema does not know, wherever the schema lists the keys, naming the nearest valid one."""
    found = _unknown_key(data, schema, "")
    if not found:
        return
    key, where, valid = found
    nearest = difflib.get_close_matches(key, valid, n=1)
    place = f" in {where}" if where else ""
    hint = f"did you mean {nearest[0]!r}?" if nearest else f"valid keys: {', '.join(valid)}"
    raise DistilleryError(f"unknown key {key!r}{place} ({hint})", source)


def check_config_sources(configfiles: Sequence[str | Path], overrides: dict) -> None:
    """Check each config file, and the `--config` values, against the schema's keys."""
    schema = yaml.safe_load(SCHEMA.read_text())
    for path in configfiles:
        check_keys(read_yaml(path), f"config {path}", schema)
    check_keys(overrides, "--config", schema)


def check_yaml_of_command_line(argv: Sequence[str]) -> None:
    """Read the `--configfile` files of a snakemake command line, so a YAML error is one line with its file and
    line: Snakemake loads them before the Snakefile and says only that some config file is not valid YAML."""
    paths, taking = [], False
    for arg in argv[1:]:
        if arg.startswith("-"):
            name, _, value = arg.partition("=")
            taking = name in ("--configfile", "--configfiles")
            if taking and value:
                paths.append(value)
                taking = False
        elif taking:
            paths.append(arg)
    try:
        for path in paths:
            if Path(path).is_file():
                read_yaml(path)
    except DistilleryError as error:
        sys.exit(str(error))
