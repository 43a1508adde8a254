"""Outputs that appear only when complete: build in a hidden sibling, then rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import DistilleryError


@contextlib.contextmanager
def atomic_output_dir(output: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder on the same file system; on success it replaces `output`.

    On any error (or a kill) the staging folder is removed or left hidden, and `output` is untouched.
    """
    output = Path(output)
    if output.exists() and not force:
        raise DistilleryError("output already exists", output, "pass --force to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replaced = output.parent / f".{output.name}.replaced-{os.getpid()}"
    if output.exists():
        os.replace(output, replaced)
    os.replace(staging, output)
    if replaced.exists():
        shutil.rmtree(replaced) if replaced.is_dir() else replaced.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.partial-{os.getpid()}"
    temporary.write_text(text)
    os.replace(temporary, path)
