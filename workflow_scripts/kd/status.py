"""`distillery kd-status`: how much of a KD job is done, from its manifest and the files on disk."""

from __future__ import annotations

from .chunk import chunk_output
from .manifest import Manifest
from .records import recover, side_file


def job_status(manifest: Manifest) -> dict:
    done_chunks = done_rows = partial_rows = 0
    remaining = []
    samples = manifest.settings["sampling"]["n"]
    for chunk in manifest.chunks:
        output = chunk_output(manifest, chunk)
        if output.exists():
            done_chunks += 1
            done_rows += chunk.stop - chunk.start
            continue
        remaining.append(chunk.name)
        partial_rows += len(recover(side_file(output), samples).done_rows)
    total_rows = sum(c.stop - c.start for c in manifest.chunks)
    return {
        "job": manifest.job,
        "chunks": len(manifest.chunks),
        "done_chunks": done_chunks,
        "remaining_chunks": len(remaining),
        "rows": total_rows,
        "done_rows": done_rows + partial_rows,
        "remaining_rows": total_rows - done_rows - partial_rows,
        "rows_in_unfinished_chunks": partial_rows,
        "remaining": remaining,
    }


def format_status(status: dict, limit: int = 10) -> str:
    lines = [
        f"job {status['job']}: {status['done_chunks']}/{status['chunks']} chunks done, "
        f"{status['remaining_chunks']} remaining",
        f"rows: {status['done_rows']}/{status['rows']} done ({status['rows_in_unfinished_chunks']} saved in "
        f"unfinished chunks), {status['remaining_rows']} remaining",
    ]
    for name in status["remaining"][:limit]:
        lines.append(f"  remaining: {name}")
    if len(status["remaining"]) > limit:
        lines.append(f"  ... and {len(status['remaining']) - limit} more")
    return "\n".join(lines)
