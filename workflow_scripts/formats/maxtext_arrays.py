"""MaxText's stored arrays handed out a layer or a block at a time, each storage chunk decoded once.

MaxText shards scanned arrays (`decoder.layers.*`, layers stacked on axis 1) along the embedding axis with all
layers in every chunk (orbax's zarr3 `sharding_indexed` codec, one zstd chunk per shard), so a layer cannot be
decoded without decoding the whole array, and the whole array does not fit the memory budget. A large array is
therefore decoded block by block into a spool file on disk, layer-major, from which each layer is mapped back;
small arrays are held in memory. While one array's layers are transposed and written, the next array in the
conversion's order is decoded and spooled by a worker thread; the two spool files take turns, each overwritten by
later arrays (pages already in the page cache are much cheaper to fill than new ones).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
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
SPOOL_FILES = (".spool-0", ".spool-1")  # in the staging folder


class BlockBuffers:
    """Flat buffers that decodings borrow and give back, so arrays decoded one after another reuse one memory.

    A fresh block per decoding would cost a page fault per 4 KB of it (memory from the system comes zeroed,
    page by page), which made page faults a large share of a conversion's system time.
    """

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def borrow(self, nbytes: int) -> np.ndarray:
        with self._lock:
            fitting = [index for index, buffer in enumerate(self._free) if buffer.nbytes >= nbytes]
            if fitting:
                return self._free.pop(min(fitting, key=lambda index: self._free[index].nbytes))
            self._free.clear()  # too small for what comes now: return their memory rather than keep it
        return np.empty(nbytes, dtype=np.uint8)

    def give_back(self, buffer: np.ndarray) -> None:
        with self._lock:
            self._free.append(buffer)


def _decoded_blocks(store, axis0_step_bytes: int, context=None, buffers: BlockBuffers | None = None, ahead=True):
    """(start row, block) along axis 0, each block a whole number of storage chunks.

    Blocks are decoded (by tensorstore, into them) into borrowed buffers. With `ahead`, two take turns, the next
    block being decoded while the caller handles this one, and a block is valid until the one after the next is
    asked for; without, one buffer is enough (a block is valid until the next is asked for).
    """
    buffers = buffers or BlockBuffers()
    rows, dtype = store.shape[0], store.dtype.numpy_dtype
    row_bytes = int(np.prod(store.shape[1:])) * dtype.itemsize
    chunk_rows = store.chunk_layout.read_chunk.shape[0] or 1
    step = max(1, axis0_step_bytes // max(1, row_bytes * chunk_rows)) * chunk_rows
    starts = list(range(0, rows, step))
    borrowed = [buffers.borrow(min(rows, step) * row_bytes) for _ in range(min(2 if ahead else 1, len(starts)))]

    def decode(index: int):
        count = min(rows, starts[index] + step) - starts[index]
        block = borrowed[index % len(borrowed)][: count * row_bytes].view(dtype).reshape(count, *store.shape[1:])
        return ts_array(block, context).write(store[starts[index] : starts[index] + count]), block

    reading = None
    try:
        reading = decode(0) if starts else None
        for index, start in enumerate(starts):
            written, block = reading
            written.result()
            reading = None
            if ahead and index + 1 < len(starts):
                reading = decode(index + 1)
            yield start, block
            if not ahead and index + 1 < len(starts):
                reading = decode(index + 1)
    finally:
        if reading is not None:
            with contextlib.suppress(Exception):
                reading[0].result()  # tensorstore may still be writing into a buffer: not before it is done
        for buffer in borrowed:
            buffers.give_back(buffer)


def ts_array(array: np.ndarray, context=None):
    """A writable tensorstore over `array` itself (no copy), for tensorstore to decode into."""
    import tensorstore as ts

    return ts.array(array, copy=False, write=True, context=context)


class SpooledArray:
    """A stored array decoded once, block by block, into a plain file, from which `array[:, start:stop]` (a layer
    of a scanned array, columns of the logits kernel) is read back with positioned reads.

    MaxText shards scanned arrays along the embedding axis with all layers in every chunk, so a layer cannot be
    decoded without decoding the whole array: the spool file holds the decoded array on disk instead of in
    memory. Arrays of 3 or more axes are written layer-major (axis 1 first), so a layer is one read.
    """

    def __init__(self, store, path: Path, context=None, buffers: BlockBuffers | None = None) -> None:
        self.shape = tuple(store.shape)
        self.dtype = store.dtype.numpy_dtype
        self.path = path
        self.layer_major = len(self.shape) >= 3
        self._inner = int(np.prod(self.shape[2:])) * self.dtype.itemsize  # bytes of one [i, l] entry
        self._buffer: np.ndarray | None = None
        # An earlier array's spool file is overwritten, not truncated: its pages stay in the page cache, and
        # overwriting a cached page is about 9x cheaper here than filling a new one (which the kernel allocates
        # and zeroes first). Sized up front: filling a file of known size is about twice as fast as growing it.
        with open(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), "r+b", buffering=0) as handle:
            os.ftruncate(handle.fileno(), int(np.prod(self.shape)) * self.dtype.itemsize)
            # One block at a time: decoding the next while this one is written saved no time (the other threads
            # keep the cores busy meanwhile) and cost a block of memory.
            for start, block in _decoded_blocks(store, BLOCK_BYTES, context, buffers, ahead=False):
                raw = block.view(np.uint8).reshape(block.shape[0], self.shape[1], -1)
                if not self.layer_major:
                    _write_at(handle.fileno(), raw.reshape(-1), start * self.shape[1] * self._inner)
                    continue
                for layer in range(self.shape[1]):
                    # Each row's entry for this layer is contiguous in the block, and the layer's rows are
                    # contiguous in the file: one gathering write, no copy into a buffer first.
                    rows = [raw[row, layer] for row in range(block.shape[0])]
                    _write_gathered(handle.fileno(), rows, (layer * self.shape[0] + start) * self._inner)

    def _reused(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._buffer is None or self._buffer.shape != shape:
            self._buffer = np.empty(shape, dtype=self.dtype)
        return self._buffer

    def _mapped(self, descriptor: int, offset: int, nbytes: int) -> np.ndarray:
        """Bytes [offset, offset + nbytes) of the spool file, mapped copy-on-write (never written: the arrays
        handed out are writable, as torch wants them); the mapping goes once nothing uses the bytes any more."""
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(descriptor, offset - base + nbytes, access=mmap.ACCESS_COPY, offset=base)
        return np.frombuffer(mapping, dtype=np.uint8, count=nbytes, offset=offset - base)

    def read_axis1(self, start: int, stop: int) -> np.ndarray:
        """`array[:, start:stop]`, valid until the next read from this spool."""
        with open(self.path, "rb", buffering=0) as handle:
            if self.layer_major:
                # Stored as [layer, rows, ...]: the layers are mapped from the page cache (the caller's copy reads
                # them there, with no copy into a buffer first), then seen as [rows, layer, ...].
                nbytes = (stop - start) * self.shape[0] * self._inner
                raw = self._mapped(handle.fileno(), start * self.shape[0] * self._inner, nbytes)
                return np.moveaxis(raw.view(self.dtype).reshape(stop - start, self.shape[0], *self.shape[2:]), 0, 1)
            out = self._reused((self.shape[0], stop - start, *self.shape[2:]))
            raw = out.view(np.uint8).reshape(self.shape[0], -1)
            for row in range(self.shape[0]):
                _read_at(handle.fileno(), raw[row], (row * self.shape[1] + start) * self._inner)
        return out


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


_IOV_MAX = 1024  # Linux's limit on buffers per gathering write


def _write_gathered(descriptor: int, pieces: list[np.ndarray], offset: int) -> None:
    """Write `pieces` one after another at `offset`, as few system calls as the kernel allows."""
    views = [memoryview(piece) for piece in pieces]
    while views:
        written = os.pwritev(descriptor, views[:_IOV_MAX], offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views and written:
            views[0] = views[0][written:]


class StoredArrays:
    """MaxText's stored arrays, each decoded once and handed out a layer or a block at a time: small arrays from
    memory, large ones from a spool file."""

    def __init__(self, checkpoint: MaxTextCheckpoint, spool_folder: Path, order: Sequence[str] = ()) -> None:
        import tensorstore as ts

        self.checkpoint = checkpoint
        self.spool_folder = spool_folder
        # One chunk decoded at a time: measured as fast as two here, with one chunk less in memory.
        self._context = ts.Context({"data_copy_concurrency": {"limit": 1}})
        self._buffers = BlockBuffers()  # shared by the spooling worker and the blocks handed out here
        self._name: str | None = None
        self._held = None  # the current array: a numpy array, or a SpooledArray
        # The arrays handed out by layer or column block, in the order they will be asked for: while one is
        # transposed and written, the next is decoded and spooled by a worker thread (decoding, copying and
        # writing all release the GIL), so the two cores work at once instead of taking turns.
        self._order = list(dict.fromkeys(order))
        # Two spool files taken in turn (the one read from, the one being written), each reused by later arrays.
        self._spool_files = [spool_folder / name for name in SPOOL_FILES]
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maxtext-spool")
        self._ahead: tuple[str, Future] | None = None
        if self._order:  # the first from the start, while whatever comes before it (the embedding) is written
            self._ahead = self._decode_ahead(self._order[0])

    def _store(self, name: str):
        return self.checkpoint.tree.open(self.checkpoint.params[name].keys, self._context)

    def _decode_ahead(self, name: str) -> tuple[str, Future]:
        return name, self._worker.submit(self._decode, name, self._spool_files.pop())

    def _decode(self, name: str, spool_file: Path):
        store = self._store(name)
        nbytes = int(np.prod(store.shape)) * store.dtype.numpy_dtype.itemsize
        if nbytes > SPOOL_ABOVE_BYTES:
            return SpooledArray(store, spool_file, self._context, self._buffers)
        self._spool_files.append(spool_file)  # not needed: free for the next array
        return store.read().result()

    def _current(self, name: str):
        if name != self._name:
            self._release_held()
            ahead, self._ahead = self._ahead, None
            if ahead and ahead[0] != name:
                self._release(ahead[1].result())
                ahead = None
            self._held = ahead[1].result() if ahead else self._decode(name, self._spool_files.pop())
            self._name = name
            following = self._order.index(name) + 1 if name in self._order else len(self._order)
            if following < len(self._order):
                self._ahead = self._decode_ahead(self._order[following])
        return self._held

    def _axis1(self, name: str, start: int, stop: int) -> np.ndarray:
        held = self._current(name)
        return held.read_axis1(start, stop) if isinstance(held, SpooledArray) else held[:, start:stop]

    def layer(self, name: str, layer: int) -> np.ndarray:
        """Layer `layer` of a scanned array (layers on axis 1); a spooled one's is overwritten by the next read."""
        return self._axis1(name, layer, layer + 1)[:, 0]

    def whole(self, name: str) -> np.ndarray:
        return self._store(name).read().result()

    def blocks(self, name: str, axis: int):
        """Consecutive blocks of a 2-D array along `axis` (rows decoded straight from storage), each in a buffer
        that is reused once the caller has moved on: write a block out before asking for the next."""
        if axis == 0:
            # One block at a time: the spooling worker keeps the other core busy meanwhile.
            blocks = _decoded_blocks(self._store(name), BLOCK_BYTES, self._context, self._buffers, ahead=False)
            for _, block in blocks:
                yield block
            return
        store = self._store(name)
        count, other = store.shape[1], store.shape[0] * store.dtype.numpy_dtype.itemsize
        step = max(1, BLOCK_BYTES // max(1, other))
        for start in range(0, count, step):
            yield self._axis1(name, start, min(count, start + step))

    def _release(self, held) -> None:
        if isinstance(held, SpooledArray):
            self._spool_files.append(held.path)

    def _release_held(self) -> None:
        self._release(self._held)
        self._name, self._held = None, None

    def close(self) -> None:
        """Remove the spool files, the one being made ahead included (after its worker has finished)."""
        self._release_held()
        if self._ahead is not None:
            # Closing after a failure: the first error is the one to report, not the worker's.
            with contextlib.suppress(Exception):
                self._release(self._ahead[1].result())
            self._ahead = None
        self._worker.shutdown()
        for name in SPOOL_FILES:
            (self.spool_folder / name).unlink(missing_ok=True)
