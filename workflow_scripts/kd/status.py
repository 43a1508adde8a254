"""`distillery kd-status`: how far a KD job is, from what is on disk: its folder (manifest, chunk files, the side
files of unfinished chunks) and its chunk logs (the kd_chunk rule's `logs/kd_chunk/{job}/{part}/{start}-{stop}.log`).

A chunk is
- done: its `.jsonl` and `.stats.json` exist (both appear, by rename, only once the chunk is complete);
- running: not done, and its log or its side file changed in the last `stale_after` seconds (a chunk job writes a
  progress line every 30 s, while its engine starts too: kd/chunk_progress.py);
- failed: not done, not running, yet it has a log or a side file: a job started it and stopped without writing the
  chunk file, on an error (the log's last line says which) or killed. Its saved rows stay: a rerun resumes there;
- pending: none of these, no job has started it.
Rows per second and output tokens per second are those the progress lines of the logs show over the last `window`
seconds; the ETA is the remaining rows at that rate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from itertools import pairwise, takewhile
from pathlib import Path

from ..errors import COMMAND_ERROR_LINE
from .chunk_progress import ProgressPoint, duration, parse_progress_line
from .manifest import Chunk, Manifest
from .records import recover, side_file, stats_file

CHUNK_LOGS = "logs/kd_chunk"  # the kd_chunk rule's log folder, below Snakemake's working directory
WINDOW_SECONDS = 300.0
STALE_SECONDS = 300.0
# How a chunk job ends on an error: distillery's one line, or (a bug of ours) a traceback's last line. Anything
# else after the last progress line (a library's warning, in whatever format it logs) says nothing of why it stopped.
TRACEBACK = "Traceback (most recent call last):"
LOG_TAIL_BYTES = 1 << 20  # a day of progress lines, whatever an engine logs besides


def chunk_logs(job: str) -> Path:
    """The folder of a job's chunk logs, relative to the workflow's working directory."""
    return Path(CHUNK_LOGS) / job


@dataclass
class ChunkState:
    chunk: str
    state: str  # done, running, failed or pending
    rows: int  # rows saved: all of a done chunk, those in the side file of another
    log: str | None = None
    why: str = ""  # a failed chunk's error line, or that it stopped without one
    progress: list[ProgressPoint] = field(default_factory=list)  # the lines of a log written in the window


class _Folder:
    """The names in one folder, listed once (a stat per chunk file would be 20,000 calls at 10,000 chunks)."""

    def __init__(self) -> None:
        self._names: dict[Path, set[str]] = {}

    def has(self, path: Path) -> bool:
        if path.parent not in self._names:
            try:
                self._names[path.parent] = set(os.listdir(path.parent))
            except (FileNotFoundError, NotADirectoryError):
                self._names[path.parent] = set()
        return path.name in self._names[path.parent]


def _mtime(path: Path, listing: _Folder) -> float | None:
    if not listing.has(path):
        return None
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # renamed away since the listing: a chunk that just finished
        return None


def _log_lines(log: Path) -> list[str]:
    with open(log, "rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
        return handle.read().decode("utf-8", "replace").splitlines()


def _progress(chunk: Chunk, lines: list[str]) -> list[ProgressPoint]:
    points = (parse_progress_line(line) for line in lines)
    return [point for point in points if point and point.chunk == chunk.name]


def chunk_state(
    manifest: Manifest, chunk: Chunk, logs: Path | None, listing: _Folder, now: float, window: float, stale_after: float
) -> ChunkState:
    output = manifest.job_folder / chunk.relative_path
    log = logs / f"{chunk.name}.log" if logs else None
    log_time = _mtime(log, listing) if log else None
    lines = _log_lines(log) if log_time is not None and log_time >= now - window else []
    progress = _progress(chunk, lines)
    shown_log = str(log) if log_time is not None else None
    rows = chunk.stop - chunk.start
    if listing.has(output) and listing.has(stats_file(output)):
        return ChunkState(chunk.name, "done", rows, shown_log, progress=progress)
    side = side_file(output)
    side_time = _mtime(side, listing)
    saved = len(recover(side, manifest.settings["sampling"]["n"]).done_rows) if side_time is not None else 0
    changed = max((t for t in (log_time, side_time) if t is not None), default=None)
    if changed is None:
        return ChunkState(chunk.name, "pending", 0)
    if changed >= now - stale_after:
        return ChunkState(chunk.name, "running", saved, shown_log, progress=progress)
    return ChunkState(
        chunk.name, "failed", saved, shown_log, _why_stopped((lines or _log_lines(log)) if shown_log else [])
    )


def _why_stopped(log_lines: list[str]) -> str:
    """The error the job ended on, after its last progress line: distillery's error line, else the last line
    of a traceback; a log with neither stopped without saying why."""
    tail = list(takewhile(lambda line: not parse_progress_line(line), reversed(log_lines)))[::-1]
    errors = [line for line in tail if COMMAND_ERROR_LINE.match(line)]
    if errors:
        return errors[-1].strip()
    if TRACEBACK in tail:
        said = [line for line in tail[tail.index(TRACEBACK) + 1 :] if line.strip() and not line[0].isspace()]
        if said:
            return said[-1].strip()
    return "stopped with no error (killed, or its node went away)"


def _count_at(points: list[ProgressPoint], when: float) -> tuple[float, float]:
    """Rows and tokens a log says were done at `when`, between its lines linearly (its first line before it)."""
    if when <= points[0].time:
        return points[0].rows, points[0].tokens
    for before, after in pairwise(points):
        if when <= after.time:
            share = (when - before.time) / (after.time - before.time) if after.time > before.time else 1.0
            return (
                before.rows + share * (after.rows - before.rows),
                before.tokens + share * (after.tokens - before.tokens),
            )
    return points[-1].rows, points[-1].tokens


def window_rates(states: list[ChunkState], now: float, window: float) -> dict:
    """Rows and output tokens per second over the window, from every log with progress lines in it."""
    logged = [state.progress for state in states if state.progress]
    if not logged:
        return {"rows_per_second": None, "output_tokens_per_second": None}
    since = max(now - window, min(points[0].time for points in logged))
    span = max(now - since, 1.0)
    rows = tokens = 0.0
    for points in logged:
        (rows_now, tokens_now), (rows_then, tokens_then) = _count_at(points, now), _count_at(points, since)
        rows, tokens = rows + rows_now - rows_then, tokens + tokens_now - tokens_then
    return {"rows_per_second": round(rows / span, 3), "output_tokens_per_second": round(tokens / span, 1)}


def job_status(
    manifest: Manifest,
    logs: Path | None = None,
    now: float | None = None,
    window: float = WINDOW_SECONDS,
    stale_after: float = STALE_SECONDS,
) -> dict:
    """The job's chunks by state, its rows and its rates; `logs`: the folder of its chunk logs, if there is one."""
    now = time.time() if now is None else now
    listing = _Folder()
    states = [chunk_state(manifest, c, logs, listing, now, window, stale_after) for c in manifest.chunks]
    by_state = {name: [s for s in states if s.state == name] for name in ("done", "running", "failed", "pending")}
    total_rows = sum(c.stop - c.start for c in manifest.chunks)
    done_rows = sum(state.rows for state in states)
    rates = window_rates(states, now, window)
    rate, remaining_rows = rates["rows_per_second"], total_rows - done_rows
    return {
        "job": manifest.job,
        "chunks": len(states),
        **{f"{name}_chunks": len(chunks) for name, chunks in by_state.items()},
        "remaining_chunks": len(states) - len(by_state["done"]),
        "rows": total_rows,
        "done_rows": done_rows,
        "remaining_rows": remaining_rows,
        "rows_in_unfinished_chunks": done_rows - sum(state.rows for state in by_state["done"]),
        "logs": str(logs) if logs else None,
        "window_seconds": window,
        **rates,
        "eta_seconds": 0 if not remaining_rows else round(remaining_rows / rate) if rate else None,
        "running": [{"chunk": s.chunk, "rows": s.rows, "log": s.log} for s in by_state["running"]],
        "failed": [{"chunk": s.chunk, "rows": s.rows, "log": s.log, "why": s.why} for s in by_state["failed"]],
        "remaining": [state.chunk for state in states if state.state != "done"],
    }


def format_status(status: dict, limit: int = 10) -> str:
    lines = [
        f"job {status['job']}: {status['done_rows']}/{status['rows']} rows done, {status['remaining_rows']} remaining "
        f"({status['rows_in_unfinished_chunks']} saved in unfinished chunks)",
        f"chunks: {status['done_chunks']} done, {status['running_chunks']} running, {status['failed_chunks']} failed, "
        f"{status['pending_chunks']} pending ({status['chunks']} in all)",
        _rate_line(status),
    ]
    for kind, detail in (("running", lambda c: f"{c['rows']} rows saved"), ("failed", lambda c: c["why"])):
        for chunk in status[kind][:limit]:
            lines.append(
                f"  {kind}: {chunk['chunk']}: {detail(chunk)}" + (f" ({chunk['log']})" if chunk["log"] else "")
            )
        if len(status[kind]) > limit:
            lines.append(f"  ... and {len(status[kind]) - limit} more {kind}")
    return "\n".join(lines)


def _rate_line(status: dict) -> str:
    window = duration(status["window_seconds"])
    if status["rows_per_second"] is None:
        where = status["logs"] or "(no log folder)"
        return f"last {window}: no progress lines in the chunk logs {where}; rates and ETA unknown"
    eta = duration(status["eta_seconds"]) if status["eta_seconds"] is not None else "unknown (no rows done lately)"
    return (
        f"last {window}: {status['rows_per_second']:.2f} rows/s, {status['output_tokens_per_second']:.0f} "
        f"output tokens/s; ETA {eta}"
    )
