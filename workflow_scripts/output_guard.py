"""The rules every command that writes a folder keeps, so that a user's mistake never costs data.

An output may not be, contain or lie inside anything the command reads (symlinks and `..` resolved first), and
`--force` replaces only what can be lost: an earlier output of distillery (its `provenance.json` says so) or an
empty folder, never any other folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .errors import DistilleryError

_GLOB_CHARACTERS = set("*?[")


def written_by_distillery(folder: Path) -> bool:
    """Whether `folder` holds the provenance.json distillery writes beside every artifact."""
    try:
        record = json.loads((Path(folder) / "provenance.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("tool") == "distillery"


def _local_path(source: str | Path) -> Path | None:
    """The local path an input names, resolved; a glob's fixed folder; None for a URL (nothing local to harm)."""
    text = str(source)
    if "://" in text:
        return None
    parts = Path(text).expanduser().parts
    fixed = list(_until_glob(parts))
    return Path(*fixed).resolve() if fixed else Path.cwd().resolve()


def _until_glob(parts: tuple[str, ...]) -> Iterable[str]:
    for part in parts:
        if _GLOB_CHARACTERS & set(part):
            return
        yield part


def check_apart_from_inputs(output: Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output that is, contains or lies inside one of `inputs`: writing it would destroy what is read."""
    target = Path(output).expanduser().resolve()
    for source in inputs:
        if source is None or str(source) == "":
            continue
        read = _local_path(source)
        if read is None:
            continue
        if target == read:
            relation = "is"
        elif target.is_relative_to(read):
            relation = "lies inside"
        elif read.is_relative_to(target):
            relation = "contains"
        else:
            continue
        raise DistilleryError(
            f"the output {relation} the input {source}, which writing it would destroy",
            output,
            "choose an output outside the input",
        )


def check_replaceable(output: Path, force: bool) -> None:
    """Refuse to replace an existing output without --force, and with it anything but distillery's or nothing."""
    output = Path(output)
    if not output.exists() and not output.is_symlink():
        return
    if not force:
        raise DistilleryError("output already exists", output, "pass --force to replace it")
    if output.is_dir() and (written_by_distillery(output) or not any(output.iterdir())):
        return
    raise DistilleryError(
        "is not an earlier output of distillery (no provenance.json of ours) nor an empty folder, and --force "
        "replaces only those",
        output,
        "choose another output, or move this one away yourself",
    )


def check_output(output: Path, inputs: Iterable[str | Path | None] = (), force: bool = False) -> None:
    """Both rules, to be called before any work starts (atomic_output_dir calls it again before writing)."""
    check_apart_from_inputs(output, inputs)
    check_replaceable(output, force)
