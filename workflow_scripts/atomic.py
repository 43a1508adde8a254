"""Outputs that appear only when complete: build in a hidden sibling, then rename into place."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import DistilleryError
from .output_guard import check_output


@contextlib.contextmanager
def atomic_output_dir(output: Path, force: bool = False, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield an empty staging folder on the same file system; on success it replaces `output`.

    `inputs` are what the command reads: an output that is, contains or lies inside one is refused, and
    `force` replaces only an earlier output of distillery or an empty folder (output_guard.py).
    On any error (or a kill) the staging folder is removed or left hidden, and `output` is untouched.
    """
    output = Path(output)
    check_output(output, inputs, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(output)
    staging = output.parent / f".{output.name}.partial-{_this_process()}"
    try:
        staging.mkdir()
        yield staging
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _naming(exc, staging, output) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replaced = output.parent / f".{output.name}.replaced-{_this_process()}"
    if output.exists():
        os.replace(output, replaced)
    os.replace(staging, output)
    if replaced.exists():
        shutil.rmtree(replaced) if replaced.is_dir() else replaced.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has that id (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _this_process() -> str:
    # The host name keeps runs on other nodes of a shared file system apart.
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_abandoned_staging(output: Path) -> list[Path]:
    """Remove staging folders of `output` left by killed runs on this host (their process is gone)."""
    removed = []
    prefix = f".{output.name}.partial-{socket.gethostname()}-"
    for candidate in output.parent.glob(f"{glob.escape(prefix)}*"):
        pid = candidate.name[len(prefix) :]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            shutil.rmtree(candidate, ignore_errors=True) if candidate.is_dir() else candidate.unlink()
            removed.append(candidate)
    return removed


def _naming(exc: OSError, staged: Path, final: Path) -> OSError:
    """The error naming `final` where it names the staged copy (which is gone) or no file at all."""
    if exc.filename is not None and not Path(exc.filename).is_relative_to(staged):
        return exc
    return exc.__class__(exc.errno, exc.strerror or str(exc), str(final))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_texts({Path(path): text})


def atomic_write_texts(texts: dict[Path, str]) -> None:
    """Write several files so that all of them appear or none: each is staged, then all are renamed."""
    staged: dict[Path, Path] = {}
    path = next(iter(texts), Path())
    try:
        for path, text in texts.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            staged[path] = path.parent / f".{path.name}.partial-{_this_process()}"
            _write_file(staged[path], text.encode("utf-8"))
        for path, temporary in staged.items():
            os.replace(temporary, path)
    except OSError as exc:
        _remove_staged(staged)
        raise _naming(exc, staged.get(path, path), path) from exc
    except BaseException:
        _remove_staged(staged)
        raise


def _write_file(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        write_all(descriptor, data)
    finally:
        os.close(descriptor)


def _remove_staged(staged: dict[Path, Path]) -> None:
    for temporary in staged.values():
        temporary.unlink(missing_ok=True)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd`; `os.write` may write fewer (a disk filling up), so write the rest."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class StagingFile:
    """A staging file written straight through `os.write`, with no buffer of its own, so a full disk fails the
    `write` that hit it (pyarrow's ParquetWriter takes it as a file object too)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        self.written = 0
        self.closed = False

    def write(self, data) -> int:
        data = bytes(data)
        write_all(self.fd, data)
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


@contextlib.contextmanager
def atomic_output_file(output: Path) -> Iterator[StagingFile]:
    """Yield a hidden staging file beside `output`; once the block ends it is synced and renamed onto `output`.

    On any error the staging file is removed; staging files of killed runs on this host are removed first.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(output)
    staging = StagingFile(output.parent / f".{output.name}.partial-{_this_process()}")
    try:
        yield staging
        os.fsync(staging.fd)
        staging.close()
        os.replace(staging.path, output)
    except BaseException:
        staging.close()
        staging.path.unlink(missing_ok=True)
        raise


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_full_as_error(path: Path, hint: str) -> Iterator[None]:
    """A full disk or quota (ENOSPC, EDQUOT) while writing `path`, as the one-line error naming it."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        raise DistilleryError(f"cannot write: {os.strerror(exc.errno)}", exc.filename or path, hint) from None
