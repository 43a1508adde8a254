"""Step numbers of a DeepSpeed / HF Trainer run, from folder names alone (no torch: the workflow plans with it)."""

from __future__ import annotations

import re
from pathlib import Path

_STEP_FOLDER = re.compile(r"checkpoint-(\d+)$")
_TAG_STEP = re.compile(r"global_step(\d+)$")


def step_of(folder: Path) -> int | None:
    match = _STEP_FOLDER.search(folder.name) or _TAG_STEP.search(folder.name)
    return int(match.group(1)) if match else None


def list_step_folders(run: Path) -> list[Path]:
    """`checkpoint-N` folders of a training run, by step number (not by name: 1000 comes after 200)."""
    return sorted((p for p in run.glob("checkpoint-*") if p.is_dir() and step_of(p) is not None), key=step_of)
