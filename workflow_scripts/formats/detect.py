"""Tell the kinds of checkpoint folder apart, as the consolidation script's `--type auto` does."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import require_folder
from . import hf_checkpoint

_MP_RANK = re.compile(r"mp_rank_\d+_model_states\.pt$")


def looks_like_deepspeed(folder: Path) -> bool:
    """A DeepSpeed run (`checkpoint-N/` folders), checkpoint (`latest`, `global_stepN/`, `zero_to_fp32.py`) or step."""
    if (folder / "zero_to_fp32.py").is_file() or (folder / "latest").is_file():
        return True
    if any(_MP_RANK.search(p.name) for p in folder.glob("*model_states.pt")):
        return True
    if any(p.is_dir() for p in folder.glob("global_step*")):
        return True
    return any(looks_like_deepspeed(p) for p in folder.glob("checkpoint-*") if p.is_dir())


def detect_input_type(folder: str | Path) -> str:
    folder = require_folder(folder, "check --input")
    if looks_like_deepspeed(folder):
        return "deepspeed"
    layout, _, _ = hf_checkpoint.weight_layout(folder)
    return "hf_single" if layout in ("safetensors", "bin") else "hf_sharded"
