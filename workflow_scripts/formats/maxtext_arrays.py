"""MaxText's stored arrays handed out a layer or a block at a time, each storage chunk decoded once.

MaxText shards scanned arrays (`decoder.layers.*`, layers stacked on axis 1) along the embedding axis with all
layers in every chunk (orbax's zarr3 `sharding_indexed` codec, one zstd chunk per shard), so a layer cannot be
decoded without decoding the whole array, and the whole array does not fit the memory budget. A large array is
therefore decoded block by block into a spool file on disk, layer-major, from which each layer is one read; small
arrays are held in memory. While one array's layers are transposed and written, the next array in the
conversion's order is decoded and spooled by a worker thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .maxtext import MaxTextCheckpoint


def as_torch(array: np.ndarray) -> torch.Tensor:
    """A numpy array (bfloat16 ones are ml_dtypes') as a torch tensor of the same dtype, contiguous."""
    array = np.ascontiguousarray(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


# Stored arrays are decoded in blocks of about this many bytes along their first axis, which MaxText shards
# them on, so each storage chunk is decoded once.
BLOCK_BYTES = 32 << 20
# A stored array larger than this is spooled to disk rather than held while its layers are written.
SPOOL_ABOVE_BYTES = 64 << 20


def _decoded_blocks(store, axis0_step_bytes: int):
    """(start row, block) along axis 0, each block a whole number of storage chunks."""
    rows = store.shape[0]
    row_bytes = int(np.prod(store.shape[1:])) * store.dtype.numpy_dtype.itemsize
    chunk_rows = store.chunk_layout.read_chunk.shape[0] or 1
    step = max(1, axis0_step_bytes // max(1, row_bytes * chunk_rows)) * chunk_rows
    starts = list(range(0, rows, step))
    # The next block is being decoded (in tensorstore's threads) while the caller handles this one.
    reading = store[0 : min(rows, step)].read() if starts else None
    for index, start in enumerate(starts):
        block = reading.result()
        if index + 1 < len(starts):
            following = starts[index + 1]
            reading = store[following : min(rows, following + step)].read()
        yield start, block


class SpooledArray:
    """A stored array decoded once, block by block, into a plain file, from which `array[:, start:stop]` (a layer
    of a scanned array, columns of the logits kernel) is read back with positioned reads.

    MaxText shards scanned arrays along the embedding axis with all layers in every chunk, so a layer cannot be
    decoded without decoding the whole array: the spool file holds the decoded array on disk instead of in
    memory. Arrays of 3 or more axes are written layer-major (axis 1 first), so a layer is one read.
    """

    def __init__(self, store, folder: Path, name: str) -> None:
        self.shape = tuple(store.shape)
        self.dtype = store.dtype.numpy_dtype
        self.path = folder / f".spool-{name}"
        self.layer_major = len(self.shape) >= 3
        self._inner = int(np.prod(self.shape[2:])) * self.dtype.itemsize  # bytes of one [i, l] entry
        with open(self.path, "wb", buffering=0) as handle:
            # Sized up front: filling a file of known size is about twice as fast as growing it out of order.
            os.ftruncate(handle.fileno(), int(np.prod(self.shape)) * self.dtype.itemsize)
            for start, block in _decoded_blocks(store, BLOCK_BYTES):
                raw = np.ascontiguousarray(block).view(np.uint8).reshape(block.shape[0], self.shape[1], -1)
                if not self.layer_major:
                    _write_at(handle.fileno(), raw.reshape(-1), start * self.shape[1] * self._inner)
                    continue
                for layer in range(self.shape[1]):
                    piece = np.ascontiguousarray(raw[:, layer]).reshape(-1)
                    _write_at(handle.fileno(), piece, (layer * self.shape[0] + start) * self._inner)
                del block, raw

    def read_axis1(self, start: int, stop: int) -> np.ndarray:
        with open(self.path, "rb", buffering=0) as handle:
            if self.layer_major:
                # Stored as [layer, rows, ...]: one read per layer, then back to [rows, layer, ...].
                part = np.empty((stop - start, self.shape[0], *self.shape[2:]), dtype=self.dtype)
                _read_at(handle.fileno(), part.view(np.uint8).reshape(-1), start * self.shape[0] * self._inner)
                return np.moveaxis(part, 0, 1)
            out = np.empty((self.shape[0], stop - start, *self.shape[2:]), dtype=self.dtype)
            raw = out.view(np.uint8).reshape(self.shape[0], -1)
            for row in range(self.shape[0]):
                _read_at(handle.fileno(), raw[row], (row * self.shape[1] + start) * self._inner)
        return out

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _write_at(descriptor: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(descriptor, view, offset)
        view, offset = view[written:], offset + written


def _read_at(descriptor: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(data)
    while view:
        read = os.preadv(descriptor, [view], offset)
        if read <= 0:
            raise OSError("spool file ends early")
        view, offset = view[read:], offset + read


class StoredArrays:
    """MaxText's stored arrays, each decoded once and handed out a layer or a block at a time: small arrays from
    memory, large ones from a spool file."""

    def __init__(self, checkpoint: MaxTextCheckpoint, spool_folder: Path, order: Sequence[str] = ()) -> None:
        import tensorstore as ts

        self.checkpoint = checkpoint
        self.spool_folder = spool_folder
        # One chunk decoded at a time: measured as fast as two here, with one chunk less in memory.
        self._context = ts.Context({"data_copy_concurrency": {"limit": 1}})
        self._name: str | None = None
        self._held = None  # the current array: a numpy array, or a SpooledArray
        # The arrays handed out by layer or column block, in the order they will be asked for: while one is
        # transposed and written, the next is decoded and spooled by a worker thread (decoding, copying and
        # writing all release the GIL), so the two cores work at once instead of taking turns.
        self._order = list(dict.fromkeys(order))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maxtext-spool")
        self._ahead: tuple[str, Future] | None = None

    def _store(self, name: str):
        return self.checkpoint.tree.open(self.checkpoint.params[name].keys, self._context)

    def _decode(self, name: str):
        store = self._store(name)
        nbytes = int(np.prod(store.shape)) * store.dtype.numpy_dtype.itemsize
        return SpooledArray(store, self.spool_folder, name) if nbytes > SPOOL_ABOVE_BYTES else store.read().result()

    def _current(self, name: str):
        if name != self._name:
            self._release_held()
            ahead = self._ahead
            self._ahead = None
            self._held = ahead[1].result() if ahead and ahead[0] == name else self._decode(name)
            if ahead and ahead[0] != name:
                _discard(ahead[1].result())
            self._name = name
            following = self._order.index(name) + 1 if name in self._order else len(self._order)
            if following < len(self._order):
                upcoming = self._order[following]
                self._ahead = (upcoming, self._worker.submit(self._decode, upcoming))
        return self._held

    def _axis1(self, name: str, start: int, stop: int) -> np.ndarray:
        held = self._current(name)
        return held.read_axis1(start, stop) if isinstance(held, SpooledArray) else held[:, start:stop]

    def layer(self, name: str, layer: int) -> np.ndarray:
        """Layer `layer` of a scanned array (layers on axis 1)."""
        return self._axis1(name, layer, layer + 1)[:, 0]

    def whole(self, name: str) -> np.ndarray:
        return self._store(name).read().result()

    def blocks(self, name: str, axis: int):
        """Consecutive blocks of a 2-D array along `axis` (rows decoded straight from storage)."""
        if axis == 0:
            for _, block in _decoded_blocks(self._store(name), BLOCK_BYTES):
                yield block
            return
        store = self._store(name)
        count, other = store.shape[1], store.shape[0] * store.dtype.numpy_dtype.itemsize
        step = max(1, BLOCK_BYTES // max(1, other))
        for start in range(0, count, step):
            yield self._axis1(name, start, min(count, start + step))

    def _release_held(self) -> None:
        _discard(self._held)
        self._name, self._held = None, None

    def close(self) -> None:
        """Remove the spool files, the one being made ahead included (after its worker has finished)."""
        self._release_held()
        if self._ahead is not None:
            # Closing after a failure: the first error is the one to report, not the worker's.
            with contextlib.suppress(Exception):
                _discard(self._ahead[1].result())
            self._ahead = None
        self._worker.shutdown()


def _discard(held) -> None:
    if isinstance(held, SpooledArray):
        held.remove()
