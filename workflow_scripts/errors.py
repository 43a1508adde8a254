"""The one exception type for a user's mistake: the CLI prints it as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class DistilleryError(Exception):
    """A problem with the user's input or environment, worded as: which file, what is wrong, what to do."""

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.hint = hint
        parts = [f"{self.path}: {message}" if self.path else message]
        if hint:
            parts.append(hint)
        super().__init__("; ".join(parts))
