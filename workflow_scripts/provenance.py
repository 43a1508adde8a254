"""`provenance.json` beside every artifact: where it came from, how it was made, with which versions."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

_PACKAGES = (
    "torch",
    "transformers",
    "safetensors",
    "tokenizers",
    "gguf",
    "deepspeed",
    "jax",
    "orbax-checkpoint",
    "vllm",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def describe_source_files(paths: list[Path], folder: Path) -> list[dict]:
    """Name (relative to `folder`), size and modification time of each source file: enough to notice a changed
    source cheaply, without reading gigabytes to checksum it."""
    described = []
    for path in paths:
        stat = path.stat()
        described.append(
            {
                "name": str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path.resolve()),
                "size": stat.st_size,
                "modified": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(),
            }
        )
    return described


def write_provenance(folder: Path, *, command: list[str], tool_version: str, **sections) -> Path:
    record = {
        "tool": "distillery",
        "tool_version": tool_version,
        "created": datetime.now(timezone.utc).isoformat(),
        "command": command or sys.argv,
        "host": platform.node(),
        "versions": package_versions(),
        **sections,
    }
    path = Path(folder) / "provenance.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path
