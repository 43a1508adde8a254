"""Merge a job's chunk files into its dataset (`dataset.jsonl` or `dataset.parquet`) and `summary.json`.

Chunks are merged in file and row order, whatever order they were generated in, so the dataset is the same for
any chunk schedule.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..atomic import StagingFile, atomic_output_file, atomic_write_text, disk_full_as_error
from ..errors import DistilleryError
from ..provenance import package_versions
from .chunk import chunk_output
from .manifest import Manifest
from .prompts import SKIP_EMPTY
from .records import stats_file
from .settings import job_from_dict

_RERUN_HINT = "free space on its file system and run kd-dataset again (the chunks are kept)"


def ordered_chunks(manifest: Manifest):
    order = {entry["path"]: index for index, entry in enumerate(manifest.data["files"])}
    return sorted(manifest.chunks, key=lambda chunk: (order[chunk.file], chunk.start))


def _check_complete(manifest: Manifest) -> None:
    missing = [c.name for c in manifest.chunks if not chunk_output(manifest, c).exists()]
    if missing:
        raise DistilleryError(
            f"{len(missing)} of {len(manifest.chunks)} chunks are not generated yet (first: {missing[0]})",
            manifest.path,
            "run the remaining kd_chunk jobs (snakemake -n lists them) or `distillery kd-status`",
        )


def _skip_label(skip: dict) -> str:
    # Empty prompts say why in their detail (null, blank, no tokens); other reasons are their own label.
    return skip["detail"] if skip["skipped"] == SKIP_EMPTY and skip["detail"] else skip["skipped"]


def _refuse_no_usable_row(manifest: Manifest, chunk_stats: list[dict]) -> None:
    """Fail, before anything is written, when every row was skipped: an empty dataset is a mistake, not a result."""
    if any(stats["samples"] for stats in chunk_stats):
        return
    prompt = job_from_dict(manifest.settings).prompt
    files = sorted({stats["file"] for stats in chunk_stats})
    where = ", ".join(files) if len(files) <= 3 else f"{len(files)} files (first: {files[0]})"
    rows = sum(stats["rows"] for stats in chunk_stats)
    counts = Counter(_skip_label(skip) for stats in chunk_stats for skip in stats["skipped"])
    if len(counts) == 1 and sum(counts.values()) == rows:
        label = next(iter(counts))
        what = f"are {label}" if label in ("null", "blank") else f"were skipped as {label}"
        message = f"all {rows} rows of column {prompt.column} {what} in {where}"
    else:
        reasons = ", ".join(f"{count} {label}" for label, count in counts.most_common())
        message = f"none of the {rows} rows of column {prompt.column} is usable in {where}: {reasons}"
    setting = "messages_column" if prompt.mode == "chat" else "text_column"
    raise DistilleryError(
        message, hint=f"check the column ({setting}) and the data: each chunk's .stats.json lists its skipped rows"
    )


def _write_jsonl(manifest: Manifest, staging: StagingFile) -> None:
    for chunk in ordered_chunks(manifest):
        with open(chunk_output(manifest, chunk), "rb") as part:
            while block := part.read(16 << 20):
                staging.write(block)


def _write_parquet(manifest: Manifest, staging: StagingFile) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for chunk in ordered_chunks(manifest):
            with open(chunk_output(manifest, chunk), encoding="utf-8") as part:
                records = [json.loads(line) for line in part]
            if not records:
                continue
            table = pa.Table.from_pylist(records)
            if writer is None:
                writer = pq.ParquetWriter(staging, table.schema)
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()


def _chunk_stats(manifest: Manifest) -> list[dict]:
    return [json.loads(stats_file(chunk_output(manifest, c)).read_text()) for c in ordered_chunks(manifest)]


def engine_runs(chunk_stats: list[dict]) -> list[dict]:
    """Each engine that generated chunks, once: its id, start time and chunks. Chunks written before chunk stats
    named their engine count as an engine of their own where they paid a start."""
    runs: dict[str, dict] = {}
    for stats in chunk_stats:
        engine = stats.get("engine_id") or (f"chunk {stats['chunk']}" if stats["engine_start_seconds"] else None)
        if engine is None:
            continue
        run = runs.setdefault(engine, {"engine_id": engine, "start_seconds": stats["engine_start_seconds"]})
        run["chunks"] = run.get("chunks", 0) + 1
    return list(runs.values())


def busy_seconds(chunk_stats: list[dict]) -> float | None:
    """Seconds during which some chunk was generating: the union of the chunks' spans (chunks that share an
    engine overlap). None where a chunk does not record its span (chunks of older versions)."""
    spans = sorted((s["generated_from"], s["generated_until"]) for s in chunk_stats if "generated_from" in s)
    if len(spans) != len(chunk_stats):
        return None
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return total


def summarize(manifest: Manifest, chunk_stats: list[dict]) -> dict:
    reasons = Counter(skip["skipped"] for stats in chunk_stats for skip in stats["skipped"])
    completion_tokens = sum(s["completion_tokens"] for s in chunk_stats)
    busy = busy_seconds(chunk_stats)
    generate_seconds = busy if busy is not None else sum(s["generate_seconds"] for s in chunk_stats)
    engines = engine_runs(chunk_stats)
    engine_seconds = sum(run["start_seconds"] for run in engines)
    versions: dict[str, str] = {}
    for stats in chunk_stats:
        versions.update(stats["versions"])
    return {
        "job": manifest.job,
        "settings_hash": manifest.settings_hash,
        "settings": manifest.settings,
        "files": len(manifest.data["files"]),
        "chunks": len(chunk_stats),
        "rows": sum(s["rows"] for s in chunk_stats),
        "generated_rows": sum(s["generated_rows"] for s in chunk_stats),
        "samples": sum(s["samples"] for s in chunk_stats),
        "skipped_rows": sum(reasons.values()),
        "skipped_by_reason": dict(sorted(reasons.items())),
        "skipped": [dict(skip, chunk=s["chunk"]) for s in chunk_stats for skip in s["skipped"]][:1000],
        "prompt_tokens": sum(s["prompt_tokens"] for s in chunk_stats),
        "completion_tokens": completion_tokens,
        "generate_seconds": round(generate_seconds, 3),
        "engine_starts": len(engines),
        "engine_start_seconds": round(engine_seconds, 3),
        "output_tokens_per_second": round(completion_tokens / generate_seconds, 2) if generate_seconds else None,
        "output_tokens_per_second_with_engine_start": round(completion_tokens / (generate_seconds + engine_seconds), 2)
        if generate_seconds + engine_seconds
        else None,
        "engines": sorted({s["engine"] for s in chunk_stats}),
        "engine_runs": engines[:1000],
        "versions": {**package_versions(), **versions},
        "per_chunk": [
            {
                "chunk": s["chunk"],
                "rows": s["rows"],
                "skipped": len(s["skipped"]),
                "completion_tokens": s["completion_tokens"],
                "generate_seconds": s["generate_seconds"],
                "output_tokens_per_second": round(s["completion_tokens"] / s["generate_seconds"], 2)
                if s["generate_seconds"]
                else None,
                "resumed_rows": s["resumed_rows"],
            }
            for s in chunk_stats
        ],
    }


def build_dataset(manifest: Manifest, output: Path, summary_path: Path, output_format: str) -> dict:
    _check_complete(manifest)
    chunk_stats = _chunk_stats(manifest)
    _refuse_no_usable_row(manifest, chunk_stats)
    output, summary_path = Path(output), Path(summary_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(manifest, chunk_stats)
    summary["output"] = {"path": str(output), "format": output_format}
    write = _write_parquet if output_format == "parquet" else _write_jsonl
    with disk_full_as_error(output, _RERUN_HINT), atomic_output_file(output) as staging:
        write(manifest, staging)
    with disk_full_as_error(summary_path, _RERUN_HINT):
        atomic_write_text(summary_path, json.dumps(summary, indent=1) + "\n")
    return summary
