"""The progress lines a running chunk job writes to its log, for a person's `tail -f` and for `distillery kd-status`.

One line every `interval` seconds (and one when the job starts and when it stops), also while the engine starts,
so a log that stops growing means a job that stopped:

    2026-12-01T10:42:05Z kd-chunk part-000/000000000-000020000: 1200/20000 rows, 153400 output tokens;
        3.20 rows/s, 410 tok/s over the last 30 s; ETA 1h37m

(one line in the log). Rows and tokens count the whole chunk, rows saved by an earlier, killed run included, so
the counts only grow within one log; the rates are those since the previous line, the ETA is the chunk's rest at
this run's average rate. `PROGRESS_LINE` parses the line back; nothing after the tokens is read.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TextIO

PROGRESS_SECONDS = 30.0
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
PROGRESS_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) kd-chunk (?P<chunk>\S+): "
    r"(?P<rows>\d+)/(?P<total>\d+) rows, (?P<tokens>\d+) output tokens"
)


@dataclass(frozen=True)
class ProgressPoint:
    """What one progress line says: at `time` (seconds since the epoch), `rows` of `total` done."""

    time: float
    chunk: str
    rows: int
    total: int
    tokens: int


def format_progress_line(point: ProgressPoint, rates: str = "") -> str:
    stamp = datetime.fromtimestamp(point.time, timezone.utc).strftime(TIME_FORMAT)
    counts = f"{stamp} kd-chunk {point.chunk}: {point.rows}/{point.total} rows, {point.tokens} output tokens"
    return f"{counts}; {rates}" if rates else counts


def parse_progress_line(line: str) -> ProgressPoint | None:
    match = PROGRESS_LINE.match(line)
    if not match:
        return None
    when = datetime.strptime(match["time"], TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    return ProgressPoint(when, match["chunk"], int(match["rows"]), int(match["total"]), int(match["tokens"]))


def duration(seconds: float) -> str:
    """A span as a person reads it: 45s, 12m05s, 3h07m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ChunkProgress:
    """Counts the rows a chunk job saves (`counting` wraps its side file) and writes a progress line every
    `interval` seconds from a background thread, until `stop`; an interval of 0 writes none."""

    def __init__(
        self,
        chunk: str,
        total: int,
        rows: int,
        tokens: int,
        interval: float = PROGRESS_SECONDS,
        stream: TextIO | None = None,
    ) -> None:
        self.chunk, self.total, self.rows, self.tokens = chunk, total, rows, tokens
        self.interval = interval
        self.stream = stream or sys.stderr
        self._started_rows, self._started = rows, time.monotonic()
        self._last = (self._started, rows, tokens)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._report_until_stopped, name=f"progress {chunk}", daemon=True)

    def start(self) -> ChunkProgress:
        if self.interval > 0:
            self.write_line()
            self._thread.start()
        return self

    def counting(self, side_file) -> _CountingSideFile:
        return _CountingSideFile(side_file, self)

    def saved_row(self, lines: list[dict]) -> None:
        # One side-file append is one row: its samples' records, or its skip line.
        self.rows += 1
        self.tokens += sum(line.get("completion_tokens", 0) for line in lines)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
            self.write_line()

    def _report_until_stopped(self) -> None:
        while not self._stopped.wait(self.interval):
            self.write_line()

    def write_line(self) -> None:
        now, rows, tokens = time.monotonic(), self.rows, self.tokens
        last_time, last_rows, last_tokens = self._last
        self._last = (now, rows, tokens)
        span = max(now - last_time, 1e-9)
        rates = (
            f"{(rows - last_rows) / span:.2f} rows/s, {(tokens - last_tokens) / span:.0f} tok/s over the last "
            f"{duration(span)}; ETA {self._eta(now, rows)}"
        )
        point = ProgressPoint(time.time(), self.chunk, rows, self.total, tokens)
        print(format_progress_line(point, rates), file=self.stream, flush=True)

    def _eta(self, now: float, rows: int) -> str:
        if rows >= self.total:
            return "0s"
        average = (rows - self._started_rows) / max(now - self._started, 1e-9)
        return duration((self.total - rows) / average) if average > 0 else "unknown"


class _CountingSideFile:
    """The chunk's side file, telling the progress each row it saves."""

    def __init__(self, side_file, progress: ChunkProgress) -> None:
        self.side_file, self.progress = side_file, progress

    def append(self, lines: list[dict]) -> None:
        self.side_file.append(lines)
        self.progress.saved_row(lines)
