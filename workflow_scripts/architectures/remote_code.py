"""Models with their own code (`auto_map` in config.json or tokenizer_config.json).

Left to itself, transformers asks on the terminal whether to run such code ("[y/N]", running it on "y") and in a
job waits 15 s for an answer. distillery never lets it ask: every load passes `trust_remote_code` explicitly, and a
local folder that needs its own code is refused in one line unless the user passed `--trust-remote-code` (in the
workflow: the model's or job's `trust_remote_code: true`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DistilleryError

FILES_WITH_AUTO_MAP = ("config.json", "tokenizer_config.json")


def _has_auto_map(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False  # missing or unreadable: the loader says so in its own words
    return isinstance(data, dict) and bool(data.get("auto_map"))


def allow_remote_code(folder: str | Path | None, trust_remote_code: bool) -> bool:
    """The `trust_remote_code` to pass to transformers (or vLLM) for `folder`.

    Without the user's permission, a local folder whose config maps classes to its own code is refused: loading
    it with the library's classes instead would check or run a different model than the one the folder holds.
    """
    if trust_remote_code or not folder or not Path(folder).is_dir():
        return bool(trust_remote_code)
    folder = Path(folder)
    for name in FILES_WITH_AUTO_MAP:
        if _has_auto_map(folder / name):
            raise DistilleryError(
                f"{folder / name} has auto_map: the model needs its own code",
                hint=f"pass --trust-remote-code if you trust {folder}",
            )
    return False
