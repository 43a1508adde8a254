"""The one exception type for a user's mistake: the CLI prints it as one line, without a traceback."""

from __future__ import annotations

import errno
import re
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


def require_folder(path: str | Path, hint: str = "check the path") -> Path:
    """`path` as a Path if it is an existing folder; otherwise the one-line error users see."""
    path = Path(path)
    if not path.exists():
        raise DistilleryError("does not exist", path, hint)
    if not path.is_dir():
        raise DistilleryError("is not a folder", path, "pass the folder, not a file in it")
    return path


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its class name: for one-line errors about a library's."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


_OS_ERROR_HINTS = {
    errno.ENOSPC: "free space and rerun",
    errno.EDQUOT: "free space (or raise the quota) and rerun",
    errno.EACCES: "make it writable (or choose another path) and rerun",
    errno.EPERM: "make it writable (or choose another path) and rerun",
    errno.EROFS: "the file system is read-only: choose another path",
}


def os_error_line(exc: OSError) -> str:
    """An error of the file system as one line: the path, the cause with its errno, what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    cause = f"{exc.strerror} (errno {exc.errno})" if exc.strerror else first_line(exc)
    return f"{where}{cause}; {_OS_ERROR_HINTS.get(exc.errno, 'check the path and rerun')}"


def command_error_line(command: str, message: object) -> str:
    """How a command reports a user's mistake on stderr: one line, which `kd-status` finds in a chunk's log."""
    return f"distillery {command}: error: {message}"


COMMAND_ERROR_LINE = re.compile(r"^distillery \S+: error: ")  # a line of command_error_line's, whatever the command
