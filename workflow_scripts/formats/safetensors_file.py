"""Streaming reader and writer of the safetensors format.

Format (https://huggingface.co/docs/safetensors): 8 bytes little-endian header length N, N bytes of JSON
mapping each tensor name to `dtype`, `shape` and `data_offsets` [begin, end) into the byte buffer that
follows, plus an optional `__metadata__` of strings. The buffer is contiguous with no holes.

The reader parses and checks the header itself, so that a truncated file or a corrupt header is reported with
its file name before any tensor is read, and reads one tensor at a time with plain reads rather than mmap, so
that the pages of tensors already written do not count against the process's memory. A tensor copied without
change goes from file to file inside the kernel (`copy_file_range`), never through the process at all.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..errors import DistilleryError
from .reader import SourceTensor
from .tensor_values import cast_checked, refuse_non_finite

MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


def dtype_itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class ByteRange:
    """A tensor's raw bytes inside a file, for copying without loading."""

    path: Path
    offset: int
    nbytes: int


@dataclass(frozen=True)
class ConvertedRange:
    """A tensor's raw bytes in `source_dtype` (in one or more pieces), to be written cast to the declared dtype."""

    sources: tuple[ByteRange, ...]
    source_dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return sum(source.nbytes for source in self.sources)


@dataclass(frozen=True)
class TensorPieces:
    """A tensor given as consecutive pieces of its row-major data (e.g. row blocks), written as they come, so
    the whole tensor never has to be in memory at once."""

    pieces: Iterable[torch.Tensor]


_CHUNK_BYTES = 32 << 20


def read_tensor(name: str, dtype: torch.dtype, shape: tuple[int, ...], where: ByteRange) -> torch.Tensor:
    """One tensor's bytes, read with a plain read (no mmap), as the header placed them."""
    if where.nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    buffer = bytearray(where.nbytes)
    with open(where.path, "rb") as handle:
        handle.seek(where.offset)
        read = handle.readinto(buffer)
    if read != where.nbytes:
        raise DistilleryError(
            f"tensor {name!r} ends past the end of the file (truncated)", where.path, "copy or download the file again"
        )
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).reshape(shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, SourceTensor]  # each with its one byte range in the file
    metadata: dict[str, str]


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and check a safetensors header; raise DistilleryError naming the file for anything wrong."""
    path = Path(path)
    file_size = path.stat().st_size

    def corrupt(what: str) -> DistilleryError:
        return DistilleryError(f"not a valid safetensors file: {what}", path, "re-export or re-download this file")

    if file_size < 8:
        raise corrupt(f"only {file_size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
            raise corrupt(f"header length {header_len} does not fit in a file of {file_size} bytes")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"header is not JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors: dict[str, SourceTensor] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        try:
            dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"entry {name!r} lacks dtype, shape or data_offsets") from None
        if dtype_name not in DTYPES:
            raise corrupt(f"tensor {name!r} has unknown dtype {dtype_name!r}")
        dtype = DTYPES[dtype_name]
        if not all(isinstance(dim, int) and dim >= 0 for dim in shape):
            raise corrupt(f"tensor {name!r} has an invalid shape {shape}")
        expected = math.prod(shape) * dtype_itemsize(dtype)
        if not (isinstance(begin, int) and isinstance(end, int)) or end - begin != expected or begin < 0:
            raise corrupt(
                f"tensor {name!r} spans bytes [{begin}, {end}) but its shape {shape} of {dtype_name} needs {expected}"
            )
        spans.append((begin, end, name))
        shape, where = tuple(shape), ByteRange(path, data_start + begin, expected)
        tensors[name] = SourceTensor(
            name, dtype, shape, path, partial(read_tensor, name, dtype, shape, where), (where,)
        )

    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise corrupt(f"tensor {name!r} starts at byte {begin}, expected {position} (overlap or hole)")
        position = end
    if data_start + position > file_size:
        raise DistilleryError(
            f"file is truncated: its header promises {data_start + position} bytes, it has {file_size}",
            path,
            "copy or download the file again",
        )
    if data_start + position < file_size:
        raise corrupt(f"{file_size - data_start - position} trailing bytes after the last tensor")
    return SafetensorsHeader(path=path, tensors=tensors, metadata=dict(metadata))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_itemsize(self.dtype)


class SafetensorsWriter:
    """Writes a safetensors file whose tensors are declared up front and then given one at a time.

    Declaring the specs first lets the header be written before any data, so no tensor has to wait in memory
    for the others. A tensor is given either as a tensor or as the `ByteRange` of identical bytes elsewhere.
    """

    def __init__(
        self,
        path: str | Path,
        specs: Iterable[TensorSpec],
        metadata: dict[str, str] | None = None,
        allow_overflow: bool = False,
    ) -> None:
        self.path = Path(path)
        self.allow_overflow = allow_overflow
        self._specs = list(specs)
        self._next = 0
        self._buffers: tuple | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safetensors-writer")
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        for spec in self._specs:
            header[spec.name] = {
                "dtype": DTYPE_NAMES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        # The reference implementation pads the header with spaces to a multiple of 8 bytes.
        encoded += b" " * (-len(encoded) % 8)
        # Unbuffered, so kernel-side copies and our own writes land in order.
        self._handle = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed by close() or abort()
        self._write_all(struct.pack("<Q", len(encoded)) + encoded)

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.write(self._handle.fileno(), view)
            view = view[written:]

    def _copy_range(self, source: ByteRange) -> None:
        with open(source.path, "rb", buffering=0) as handle:
            offset, remaining = source.offset, source.nbytes
            while remaining:
                try:
                    copied = os.copy_file_range(handle.fileno(), self._handle.fileno(), remaining, offset)
                except OSError:  # not supported between these file systems: copy through a small buffer
                    handle.seek(offset)
                    copied = os.write(self._handle.fileno(), handle.read(min(remaining, 64 << 20)))
                if copied == 0:
                    raise DistilleryError("ends before the tensor it should hold (truncated)", source.path)
                offset += copied
                remaining -= copied

    def _copy_converted(self, converted: ConvertedRange, dtype: torch.dtype, name: str) -> None:
        """Cast chunk by chunk through reused buffers, so memory does not grow with the tensor.

        Writing chunk i overlaps reading and casting chunk i+1 (all three release the GIL), with two output
        buffers taking turns.
        """
        source_size = dtype_itemsize(converted.source_dtype)
        chunk_items = max(1, _CHUNK_BYTES // source_size)
        key = (converted.source_dtype, dtype)
        if self._buffers is None or self._buffers[0] != key:
            self._buffers = (
                key,
                torch.empty(chunk_items, dtype=converted.source_dtype),
                [torch.empty(chunk_items, dtype=dtype), torch.empty(chunk_items, dtype=dtype)],
            )
        _, inbound, outbound = self._buffers
        raw_in = memoryview(inbound.view(torch.uint8).numpy())
        writes: list[Future | None] = [None, None]
        turn = 0
        for source in converted.sources:
            with open(source.path, "rb", buffering=0) as handle:
                handle.seek(source.offset)
                total_items, done = source.nbytes // source_size, 0
                while done < total_items:
                    count = min(chunk_items, total_items - done)
                    _read_exactly(handle, raw_in[: count * source_size], source.path)
                    if writes[turn] is not None:
                        writes[turn].result()  # this buffer's previous write must be out before it is reused
                    outbound[turn][:count].copy_(cast_checked(inbound[:count], dtype, name, self.allow_overflow))
                    refuse_non_finite(outbound[turn][:count], name)
                    chunk = outbound[turn][:count].view(torch.uint8).numpy()
                    writes[turn] = self._executor.submit(self._write_all, chunk)
                    done += count
                    turn = 1 - turn
        for write in writes:
            if write is not None:
                write.result()

    def write(
        self, name: str, tensor: torch.Tensor | ByteRange | list[ByteRange] | ConvertedRange | TensorPieces
    ) -> None:
        spec = self._specs[self._next]
        if isinstance(tensor, ByteRange):
            tensor = [tensor]
        if isinstance(tensor, TensorPieces):
            written = 0
            for piece in tensor.pieces:
                if name != spec.name or piece.dtype != spec.dtype:
                    raise ValueError(f"expected pieces of {spec.name} {spec.dtype}, got {name} {piece.dtype}")
                data = piece.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
                self._write_all(data)
                written += len(data)
            if written != spec.nbytes:
                raise ValueError(f"{spec.name}: pieces hold {written} bytes, the tensor {spec.nbytes}")
        elif isinstance(tensor, ConvertedRange):
            expected = spec.nbytes // dtype_itemsize(spec.dtype) * dtype_itemsize(tensor.source_dtype)
            if name != spec.name or tensor.nbytes != expected:
                raise ValueError(f"expected {spec.name} of {expected} source bytes, got {name}")
            self._copy_converted(tensor, spec.dtype, name)
        elif isinstance(tensor, list):
            nbytes = sum(piece.nbytes for piece in tensor)
            if name != spec.name or nbytes != spec.nbytes:
                raise ValueError(f"expected {spec.name} of {spec.nbytes} bytes, got {name} of {nbytes}")
            for piece in tensor:
                self._copy_range(piece)
        else:
            if name != spec.name or tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise ValueError(
                    f"expected {spec.name} {spec.dtype} {spec.shape}, got {name} {tensor.dtype} {tuple(tensor.shape)}"
                )
            if spec.nbytes:
                self._write_all(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        self._next += 1

    def close(self) -> None:
        """Close the file; all declared tensors must have been written."""
        self._executor.shutdown()
        self._handle.close()
        if self._next != len(self._specs):
            missing = self._specs[self._next].name
            raise ValueError(f"{self.path}: closed before tensor {missing!r} was written")

    def abort(self) -> None:
        self._executor.shutdown(cancel_futures=True)
        self._handle.close()


def _read_exactly(handle, view: memoryview, path: Path) -> None:
    read = 0
    while read < len(view):
        got = handle.readinto(view[read:])
        if not got:
            raise DistilleryError("ends before the tensor it should hold (truncated)", path)
        read += got
