"""Reader of GGUF files, llama.cpp's single-file format: metadata and tensor index parsed here, each tensor read
(and dequantized to float32) only when it is loaded.

Format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), little-endian: the magic `GGUF`, the version
(2 or 3), the tensor count and the metadata count (u64); the metadata as typed key/value pairs (strings and
arrays length-prefixed); for each tensor its name, its dimensions (fastest-varying first), its ggml type and
its offset into the data section, which starts at the next multiple of `general.alignment` (32 by default).

The header is parsed here rather than by the `gguf` package's `GGUFReader`, which builds an object per item of
the tokenizer's arrays and needs half a minute for a small model's: ours reads it in well under a second, and
names the file in every error. The `gguf` package only dequantizes (its `quants.dequantize`, numpy) the block
types (Q4_0, Q4_1, Q8_0, K-quants, ...); F32, F16 and BF16 tensors keep their stored dtype.
"""

from __future__ import annotations

import math
import struct
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..errors import DistilleryError
from .reader import SourceTensor

GGUF_SUFFIX = ".gguf"
_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
# Metadata value types: fixed-size ones by struct format; 8 is a string, 9 an array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# ggml types stored as plain values, read without dequantizing.
_PLAIN = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}


def gguf_file_of(path: str | Path) -> Path:
    """The GGUF file a source names: the file itself, or the only `.gguf` file of a folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DistilleryError("does not exist", path, "pass a .gguf file or a folder holding one")
    found = sorted(path.glob(f"*{GGUF_SUFFIX}"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DistilleryError(f"holds {len(found)} .gguf files ({names}), not one", path, "pass the .gguf file itself")
    return found[0]


def is_gguf_source(path: str | Path) -> bool:
    """A `.gguf` file, or a folder holding exactly one and no HF model (no config.json)."""
    path = Path(path)
    if path.is_dir():
        return not (path / "config.json").exists() and len(list(path.glob(f"*{GGUF_SUFFIX}"))) == 1
    return path.is_file() and path.suffix == GGUF_SUFFIX


class GGUFCheckpoint:
    """A GGUF file's metadata and tensors by their GGUF names (`reader.py`'s protocol); quantized tensors load as
    float32, dequantized."""

    layout = "gguf"

    def __init__(self, path: str | Path) -> None:
        self.path = gguf_file_of(path)
        with open(self.path, "rb") as handle:
            self.version, self.metadata, infos, header_end = _read_header(_Cursor(handle, self.path))
        alignment = self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        data_start = -(-header_end // alignment) * alignment
        size = self.path.stat().st_size
        self.tensor_types: dict[str, str] = {}
        self.tensors: dict[str, SourceTensor] = {}
        for name, dims, ggml_type, offset in infos:
            stored, nbytes = _stored_bytes(ggml_type, dims, name, self.path)
            if data_start + offset + nbytes > size:
                raise DistilleryError(f"tensor {name!r} ends past the end of the file (truncated)", self.path,
                                      "copy or download the file again")  # fmt: skip
            shape = tuple(reversed(dims))  # GGUF lists the fastest-varying dimension first, torch last
            load = partial(_load, self.path, data_start + offset, nbytes, ggml_type, shape)
            self.tensor_types[name] = stored
            self.tensors[name] = SourceTensor(name, _PLAIN.get(ggml_type, torch.float32), shape, self.path, load)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def weight_files(self) -> list[Path]:
        return [self.path]

    def field(self, key: str, default: Any = None) -> Any:
        """A metadata value of the file's architecture (`llama.block_count` as `field("block_count")`)."""
        return self.metadata.get(f"{self.architecture}.{key}", default)


class _Cursor:
    """Sequential little-endian reads of a header, each checked against the end of the file."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle, self.path = handle, path

    def read(self, count: int) -> bytes:
        data = self.handle.read(count)
        if len(data) != count:
            raise DistilleryError("not a valid GGUF file: the header ends early (truncated)", self.path,
                                  "copy or download the file again")  # fmt: skip
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        data = self.read(self.unpack("<Q"))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="replace")  # a vocabulary may hold byte tokens

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("<I"), self.unpack("<Q")
            return [self.value(item_kind) for _ in range(count)]
        raise DistilleryError(f"not a valid GGUF file: unknown metadata type {kind}", self.path)


def _read_header(cursor: _Cursor) -> tuple[int, dict[str, Any], list[tuple[str, list[int], int, int]], int]:
    magic = cursor.read(4)
    if magic != _MAGIC:
        raise DistilleryError(f"not a GGUF file (it starts with {magic!r}, not {_MAGIC!r})", cursor.path)
    version = cursor.unpack("<I")
    if version not in _VERSIONS:
        raise DistilleryError(f"GGUF version {version} is not supported (only {_VERSIONS})", cursor.path)
    tensor_count, metadata_count = cursor.unpack("<Q"), cursor.unpack("<Q")
    metadata = {}
    for _ in range(metadata_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.unpack("<I"))
    infos = []
    for _ in range(tensor_count):
        name = cursor.string()
        dims = [cursor.unpack("<Q") for _ in range(cursor.unpack("<I"))]
        infos.append((name, dims, cursor.unpack("<I"), cursor.unpack("<Q")))
    return version, metadata, infos, cursor.handle.tell()


def _gguf_constants(path: Path):
    """The `gguf` package's constants module, or one line saying how to install it."""
    try:
        from gguf import constants
    except ModuleNotFoundError:
        raise DistilleryError(
            "reading a GGUF file needs the gguf package", path, hint="pip install 'distillery[gguf]'"
        ) from None
    return constants


def _stored_bytes(ggml_type: int, dims: list[int], name: str, path: Path) -> tuple[str, int]:
    """(the type's name, the tensor's bytes in the file)."""
    constants = _gguf_constants(path)

    try:
        quantization = constants.GGMLQuantizationType(ggml_type)
    except ValueError:
        raise DistilleryError(f"tensor {name!r} has unknown ggml type {ggml_type}", path) from None
    block_size, block_bytes = constants.GGML_QUANT_SIZES[quantization]
    if dims and dims[0] % block_size:
        raise DistilleryError(f"tensor {name!r}: rows of {dims[0]} are no whole {quantization.name} blocks", path)
    return quantization.name, math.prod(dims) // block_size * block_bytes


def _load(path: Path, offset: int, nbytes: int, ggml_type: int, shape: tuple[int, ...]) -> torch.Tensor:
    """One tensor, read with a plain read (no mmap, as `safetensors_file.py` does) and dequantized if it is
    stored in blocks."""
    buffer = bytearray(nbytes)
    with open(path, "rb") as handle:
        handle.seek(offset)
        handle.readinto(buffer)
    if ggml_type in _PLAIN:
        return torch.frombuffer(buffer, dtype=torch.uint8).view(_PLAIN[ggml_type]).reshape(shape)
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    rows = np.frombuffer(buffer, dtype=np.uint8).reshape(math.prod(shape[:-1]), -1)  # each row whole blocks
    return torch.from_numpy(dequantize(rows, GGMLQuantizationType(ggml_type)).reshape(shape))
