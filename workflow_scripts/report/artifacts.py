"""Reading the artifacts a figure is made from, with one-line errors that name the file."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

from ..errors import DistilleryError

_RERUN = "rerun the step that writes it (snakemake rebuilds a missing or stale artifact)"


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DistilleryError("does not exist", path, _RERUN) from None
    except ValueError as exc:
        raise DistilleryError(f"is not JSON ({exc})", path, _RERUN) from None
    if not isinstance(data, dict):
        raise DistilleryError("is not a JSON object", path, _RERUN)
    return data


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    """The first `limit` lines of a JSON-lines file (all of them without a limit)."""
    try:
        with open(path, encoding="utf-8") as lines:
            return [_line(text, path, number) for number, text in enumerate(islice(lines, limit), 1)]
    except FileNotFoundError:
        raise DistilleryError("does not exist", path, _RERUN) from None


def _line(text: str, path: Path, number: int) -> dict:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DistilleryError(f"line {number} is not JSON ({exc})", path, _RERUN) from None


def first_records(dataset: Path, limit: int) -> list[dict]:
    """The first `limit` records of a KD dataset, `.jsonl` or `.parquet`, without reading the rest."""
    if Path(dataset).suffix != ".parquet":
        return read_jsonl(dataset, limit)
    import pyarrow.parquet as pq

    if not Path(dataset).exists():
        raise DistilleryError("does not exist", dataset, _RERUN)
    batch = next(pq.ParquetFile(dataset).iter_batches(batch_size=max(limit, 1)), None)
    return [] if batch is None else batch.to_pylist()[:limit]
