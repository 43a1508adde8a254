"""Parquet inputs by local path, glob or URL (`gs://`, `s3://`, anything fsspec knows).

Only what is needed is read: footers for the manifest, and for a chunk the row groups that overlap its rows.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from ..errors import DistilleryError, first_line

_GLOB_CHARS = re.compile(r"[*?\[]")


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _filesystem(path: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(path)
    except (ImportError, ValueError) as exc:
        raise DistilleryError(f"cannot open this location: {first_line(exc)}", path) from None


def glob_root(pattern: str) -> str | None:
    """The folder of a glob before its first wildcard (`data/web/*.parquet` -> `data/web`); None for a plain path."""
    match = _GLOB_CHARS.search(pattern)
    return None if match is None else os.path.dirname(pattern[: match.start()] + "x")


def list_parquet_files(dataset: str) -> tuple[list[str], str]:
    """The dataset's parquet files, sorted, and the root their part names are taken relative to.

    `dataset` is a file, a folder (every *.parquet below it) or a glob; each may be a URL.
    """
    if is_url(dataset):
        fs, root_path = _filesystem(dataset)
        if _GLOB_CHARS.search(root_path):
            found = fs.glob(root_path)
            root = glob_root(root_path)
        elif fs.isdir(root_path):
            found = [p for p in fs.find(root_path) if p.endswith(".parquet")]
            root = root_path.rstrip("/")
        else:
            found = [root_path] if fs.exists(root_path) else []
            root = root_path.rsplit("/", 1)[0]
        files = sorted(fs.unstrip_protocol(p) for p in found)
        root = fs.unstrip_protocol(root)
    else:
        if _GLOB_CHARS.search(dataset):
            files = sorted(glob.glob(dataset, recursive=True))
            root = glob_root(dataset)
        elif os.path.isdir(dataset):
            files = sorted(glob.glob(os.path.join(dataset, "**", "*.parquet"), recursive=True))
            root = dataset
        else:
            files = [dataset] if os.path.exists(dataset) else []
            root = os.path.dirname(dataset)
    if not files:
        raise DistilleryError("no parquet files found", dataset, "check the path or glob (e.g. data/*.parquet)")
    return files, root


def part_name(file: str, root: str) -> str:
    """A file's name in chunk paths: its path below the dataset root, without `.parquet`, `/` as `__`."""
    relative = file[len(root) :].lstrip("/") if root and file.startswith(root) else os.path.basename(file)
    if relative.endswith(".parquet"):
        relative = relative[: -len(".parquet")]
    return relative.replace("/", "__")


def open_parquet(path: str):
    """A `pyarrow.parquet.ParquetFile` reading lazily (footer first, then only the row groups asked for)."""
    import pyarrow.parquet as pq

    try:
        if is_url(path):
            fs, inner = _filesystem(path)
            return pq.ParquetFile(fs.open(inner, "rb"))
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise DistilleryError("parquet file not found", path) from None
    except (OSError, ValueError) as exc:
        raise DistilleryError(f"not a readable parquet file: {first_line(exc)}", path) from None


@dataclass(frozen=True)
class ParquetFooter:
    path: str
    num_rows: int
    row_group_rows: list[int]
    columns: dict[str, str]  # name -> arrow type


def read_footer(path: str) -> ParquetFooter:
    parquet = open_parquet(path)
    metadata = parquet.metadata
    schema = parquet.schema_arrow
    return ParquetFooter(
        path=path,
        num_rows=metadata.num_rows,
        row_group_rows=[metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)],
        columns={name: str(schema.field(name).type) for name in schema.names},
    )


def read_rows(path: str, start: int, stop: int, columns: list[str]) -> dict[str, list]:
    """Rows [start, stop) of `columns`, reading only the row groups that hold them."""
    parquet = open_parquet(path)
    metadata = parquet.metadata
    groups, first_row, offset = [], None, 0
    for index in range(metadata.num_row_groups):
        rows = metadata.row_group(index).num_rows
        if offset < stop and offset + rows > start:
            groups.append(index)
            first_row = offset if first_row is None else first_row
        offset += rows
    if stop > metadata.num_rows:
        raise DistilleryError(
            f"has {metadata.num_rows} rows, fewer than the chunk's end {stop}",
            path,
            "the file changed since the manifest was made; rebuild the manifest",
        )
    table = parquet.read_row_groups(groups, columns=columns)
    table = table.slice(start - (first_row or 0), stop - start)
    return {name: table.column(name).to_pylist() for name in columns}
