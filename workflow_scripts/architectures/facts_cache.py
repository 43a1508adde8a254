"""distillery's on-disk cache of what transformers answered about a model's files.

Importing transformers costs a conversion more than copying its weights: its config classes pull in
torch.distributed.tensor, sympy and accelerate, its modeling code torch._dynamo (15-25 s of a 2-core VM's start-up
under load, against 5 s to copy 1.6 GB). The answers a conversion needs (a config's key values, the weights an
architecture expects, a tokenizer's size and special ids) are a function of a few small files and of the library
versions, so each is kept under `$DISTILLERY_CACHE_DIR` (default `~/.cache/distillery`), one JSON file per answer,
named by the hash of everything that decides it: the kind of answer, distillery's version, the installed versions
of transformers, tokenizers and huggingface_hub (read from their package metadata, so a key imports none of
them) and the caller's key text (file contents, a normalized config). Only answers are stored, never failures:
a file transformers refuses is refused by transformers itself every time, with its own message.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..atomic import atomic_write_text

log = logging.getLogger(__name__)

_LIBRARIES = ("transformers", "tokenizers", "huggingface_hub")


def cache_folder() -> Path:
    return Path(os.environ.get("DISTILLERY_CACHE_DIR") or Path.home() / ".cache" / "distillery")


@functools.cache
def library_versions() -> str:
    versions = []
    for library in _LIBRARIES:
        try:
            versions.append(f"{library}=={metadata.version(library)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{library} absent")
    return ", ".join(versions)


def entry_path(kind: str, key: str) -> Path:
    """The file holding the answer of `kind` for `key`, under the current library versions."""
    text = f"{kind}\ndistillery {__version__}\n{library_versions()}\n{key}"
    return cache_folder() / kind / f"{hashlib.sha256(text.encode()).hexdigest()}.json"


def read_entry(path: Path) -> dict | None:
    """The stored answer, or None when there is none or it cannot be read (then the caller computes it)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def write_entry(path: Path, answer: dict) -> None:
    try:
        atomic_write_text(path, json.dumps(answer))
    except OSError as exc:  # a read-only or full cache folder costs the next run the computation, nothing else
        log.debug("cannot cache %s: %s", path, exc)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
