"""Where a memory-mapped tensor's bytes lie inside its `torch.save` zip file.

`torch.save` writes each storage as an uncompressed zip record (`<archive>/data/<key>`), and `torch.load(mmap=True)`
maps the whole file, so a storage's address minus the mapping's base is its record's offset in the file. Knowing
it lets a tensor be copied file to file by the kernel instead of through this process.
"""

from __future__ import annotations

import ctypes
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

_LOCAL_HEADER = 30


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def _record_offsets(path: Path) -> set[int]:
    offsets = set()
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            if "/data/" in info.filename and info.compress_type == zipfile.ZIP_STORED:
                handle.seek(info.header_offset)
                header = handle.read(_LOCAL_HEADER)
                name_length, extra_length = struct.unpack("<HH", header[26:30])
                offsets.add(info.header_offset + _LOCAL_HEADER + name_length + extra_length)
    return offsets


def _storage_bytes(path: Path, offset: int) -> int:
    return max(0, path.stat().st_size - offset)


def file_offset_finder(path: Path, loaded) -> Callable[[torch.Tensor], int] | None:
    """A function giving the file offset of a tensor of `loaded` (what torch.load(path, mmap=True) returned).

    None when the mapping cannot be matched to the file's records with certainty (then read through memory).
    """
    pointers = sorted({t.untyped_storage().data_ptr() for t in _tensors(loaded) if t.untyped_storage().nbytes()})
    if not pointers:
        return None
    offsets = _record_offsets(path)
    bases = [pointers[0] - offset for offset in sorted(offsets)]
    matching = [base for base in bases if all(pointer - base in offsets for pointer in pointers)]
    if len(matching) != 1:
        return None
    base = matching[0]
    sample = min(64, _storage_bytes(path, pointers[0] - base))
    with open(path, "rb") as handle:
        handle.seek(pointers[0] - base)
        if handle.read(sample) != ctypes.string_at(pointers[0], sample):
            return None

    def offset_of(tensor: torch.Tensor) -> int:
        return tensor.data_ptr() - base

    return offset_of
