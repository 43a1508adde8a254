"""The lines of a chunk file, and the side file a running chunk job appends to.

Every line of `chunks/{part}/{start}-{stop}.jsonl` is one (row, sample) record; its JSON schema is
`workflow_scripts/schemas/kd_record.schema.json`. The side file `.{start}-{stop}.jsonl.partial` holds the same
records plus one line per skipped row, in the order rows finished; a row's lines are written in one piece, so a
kill leaves at most one torn row at the end, which recovery cuts off. A line that is JSON but not a record or a skip
line (a key missing, a wrong type: a hand edit, another program's file) is treated the same way.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import disk_full_as_error, write_all
from ..errors import DistilleryError

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "kd_record.schema.json"


def side_file(output: Path) -> Path:
    return output.parent / f".{output.name}.partial"


def stats_file(output: Path) -> Path:
    return output.with_name(output.name[: -len(".jsonl")] + ".stats.json")


def chunk_of(paths: list[Path]) -> Path:
    """The chunk file among a chunk's files, or the one beside its `.stats.json`."""
    chunks = [path for path in paths if not path.name.endswith(".stats.json")]
    return chunks[0] if chunks else paths[0].with_name(paths[0].name[: -len(".stats.json")] + ".jsonl")


def skip_line(row_index: int, row_id: str, reason: str, detail: str) -> dict:
    return {"skipped": reason, "detail": detail, "row_index": row_index, "id": row_id}


SKIP_LINE_FIELDS = {"skipped": str, "detail": str, "row_index": int, "id": str}
_JSON_TYPES = {"integer": int, "string": str}


@functools.cache
def record_fields() -> dict[str, type]:
    """The required keys of a record and their Python types, from the record schema."""
    schema = json.loads(SCHEMA_FILE.read_text())
    return {key: _JSON_TYPES.get(schema["properties"][key].get("type"), str) for key in schema["required"]}


def is_side_file_line(line: object) -> bool:
    """Whether a parsed side-file line is a whole record or skip line (bool is no integer here)."""
    if not isinstance(line, dict):
        return False
    fields = SKIP_LINE_FIELDS if "skipped" in line else record_fields()
    return all(isinstance(line.get(key), kind) and not isinstance(line.get(key), bool) for key, kind in fields.items())


@dataclass
class Recovered:
    """What a side file already holds: finished rows (generated or skipped) and the byte length of complete rows."""

    records: dict[int, list[dict]] = field(default_factory=dict)
    skipped: dict[int, dict] = field(default_factory=dict)
    complete_bytes: int = 0

    @property
    def done_rows(self) -> set[int]:
        return set(self.records) | set(self.skipped)


def recover(path: Path, samples_per_row: int) -> Recovered:
    """Read a side file, keeping only whole rows; the caller truncates the file to `complete_bytes`."""
    recovered = Recovered()
    if not path.exists():
        return recovered
    pending: dict[int, list[dict]] = {}
    offset = 0
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # torn by a kill
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not is_side_file_line(line):
                break  # not a line we wrote: cut it and what follows, as a torn row
            offset += len(raw)
            row = line["row_index"]
            if "skipped" in line:
                recovered.skipped[row] = line
                recovered.complete_bytes = offset
                continue
            pending.setdefault(row, []).append(line)
            if len(pending[row]) == samples_per_row:
                recovered.records[row] = pending.pop(row)
                recovered.complete_bytes = offset
    return recovered


RESUME_HINT = "free space on its file system and run the chunk job again: it resumes from the rows already saved"


class SideFile:
    """Appends finished rows to the side file, each row in one `os.write` loop, synced to disk every few seconds.

    Nothing is buffered here: a row is written or (disk full, kill) torn at the end, where recovery cuts it off.
    """

    def __init__(self, path: Path, complete_bytes: int, sync_seconds: float = 5.0) -> None:
        import fcntl
        import time

        self.path = path
        self._time = time.monotonic
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise DistilleryError("another process is writing this chunk", path, "wait for it or stop it") from None
        os.ftruncate(self.fd, complete_bytes)
        self.sync_seconds = sync_seconds
        self._last_sync = self._time()

    def append(self, lines: list[dict]) -> None:
        row = b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)
        with disk_full_as_error(self.path, RESUME_HINT):
            write_all(self.fd, row)
            if self._time() - self._last_sync >= self.sync_seconds:
                os.fsync(self.fd)
                self._last_sync = self._time()

    def close(self) -> None:
        try:
            with disk_full_as_error(self.path, RESUME_HINT):
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
