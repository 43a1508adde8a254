"""The chunk manifest (`kd/{job}/manifest.json`): the job's settings and, for each parquet file, row ranges of
`chunk_rows`, read from the footers alone.

A missing column or an unreadable file fails here, before any GPU job starts. Chunk paths are
`chunks/{part}/{start:09d}-{stop:09d}.jsonl` below the job folder.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import DistilleryError
from .local_copies import IN_PLACE, LocalCopies
from .settings import KdJob
from .sources import list_parquet_files, part_name, read_footer

MANIFEST_VERSION = 1
TEXT_TYPES = ("string", "large_string", "binary", "large_binary", "string_view")


@dataclass(frozen=True)
class Chunk:
    part: str
    file: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.part}/{self.start:09d}-{self.stop:09d}"

    @property
    def relative_path(self) -> str:
        return f"chunks/{self.name}.jsonl"


def _check_column(job: KdJob, footer) -> None:
    column = job.prompt.column
    if column not in footer.columns:
        raise DistilleryError(
            f"has no column {column!r} (prompt mode {job.prompt.mode})",
            footer.path,
            f"its columns: {', '.join(footer.columns)}",
        )
    kind = footer.columns[column]
    if job.prompt.mode == "chat":
        if not kind.startswith(("list", "large_list")):
            raise DistilleryError(f"column {column!r} is {kind}, not a list of chat messages", footer.path)
    elif kind not in TEXT_TYPES:
        raise DistilleryError(f"column {column!r} is {kind}, not text", footer.path)
    if job.prompt.id_column and job.prompt.id_column not in footer.columns:
        raise DistilleryError(f"has no id column {job.prompt.id_column!r}", footer.path)


def split_into_chunks(job: KdJob, copies: LocalCopies = IN_PLACE) -> tuple[list[Chunk], list[dict]]:
    local_files, root = list_parquet_files(copies.local_dataset(job))
    chunks, described = [], []
    parts: dict[str, str] = {}
    for local_file in local_files:
        footer = read_footer(local_file)
        _check_column(job, footer)
        part = part_name(local_file, root)
        file = copies.named_file(job, local_file)
        if part in parts:
            raise DistilleryError(f"gives the same chunk folder name {part!r} as {parts[part]}", file)
        parts[part] = file
        described.append({"path": file, "part": part, "rows": footer.num_rows, "row_groups": footer.row_group_rows})
        for start in range(0, footer.num_rows, job.chunk_rows):
            chunks.append(Chunk(part, file, start, min(start + job.chunk_rows, footer.num_rows)))
    if job.shuffle_chunks:
        # Several hosts taking chunks in file order would all start on the same file; a seeded order spreads them.
        random.Random(job.seed).shuffle(chunks)
    return chunks, described


def write_manifest(job: KdJob, job_settings: dict, output: Path, copies: LocalCopies = IN_PLACE) -> dict:
    chunks, files = split_into_chunks(job, copies)
    manifest = {
        "version": MANIFEST_VERSION,
        "job": job.name,
        "settings_hash": job.settings_hash(),
        "settings": job_settings,
        "files": files,
        "rows": sum(f["rows"] for f in files),
        "chunks": [{"part": c.part, "file": c.file, "start": c.start, "stop": c.stop} for c in chunks],
    }
    atomic_write_text(Path(output), json.dumps(manifest, indent=1) + "\n")
    return manifest


class Manifest:
    """A parsed manifest with its chunks by name (Snakemake looks one up per chunk job)."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path = path
        self.data = data
        self.job: str = data["job"]
        self.settings: dict = data["settings"]
        self.settings_hash: str = data["settings_hash"]
        self.chunks = [Chunk(c["part"], c["file"], c["start"], c["stop"]) for c in data["chunks"]]
        self.by_name = {chunk.name: chunk for chunk in self.chunks}
        self.positions = {chunk.name: index for index, chunk in enumerate(self.chunks)}  # a chunk's engine job

    def chunk(self, name: str) -> Chunk:
        try:
            return self.by_name[name]
        except KeyError:
            raise DistilleryError(
                f"has no chunk {name!r}", self.path, "rebuild the manifest or check the name"
            ) from None

    @property
    def job_folder(self) -> Path:
        return self.path.parent


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> Manifest:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise DistilleryError(f"is not valid JSON ({exc.msg} at line {exc.lineno})", path) from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        raise DistilleryError("is not a distillery KD manifest of this version", path, "rebuild it with kd-manifest")
    return Manifest(Path(path), data)


def load_manifest(path: str | Path) -> Manifest:
    """The manifest, parsed once per file version."""
    path = Path(path)
    if not path.is_file():
        raise DistilleryError("manifest not found", path, "run `distillery kd-manifest` (or the kd_manifest rule)")
    return _load(str(path), path.stat().st_mtime_ns)
