"""MaxText Orbax checkpoints: their parameter tree, read one array at a time, and param-only copies of them.

Layout (orbax-checkpoint's PyTree format, as MaxText saves it with one checkpointable named `items`):

    checkpoints/N/_CHECKPOINT_METADATA   JSON: the handler that wrote each checkpointable
    checkpoints/N/items/_METADATA        JSON: "tree_metadata" maps every leaf's key path, written
                                         "('params', 'params', 'decoder', ...)", to its value type;
                                         "use_ocdbt" / "use_zarr3" say how the arrays are stored
    checkpoints/N/items/manifest.ocdbt   with OCDBT (MaxText's default): one key-value database, `d/` and
                                         `ocdbt.process_*/` hold its data files; without it, one folder per array
Each array is a zarr (v3, or v2 in older checkpoints) array named by its dotted key path, e.g.
`params.params.decoder.layers.mlp.wi_0.kernel`.

Trees: a full training state is `{params: {params: TREE}, opt_state: [...], step}`; a param-only (decode)
checkpoint, as MaxText's `generate_param_only_checkpoint` and its HF→MaxText converters write it, is
`{params: {params: TREE}, step: 0}`. MaxText 0.2's NNX decode checkpoints hold the bare TREE with each leaf
under a `value` key; they are read too.

Arrays are read with tensorstore (which reads `gs://` itself), metadata files through fsspec (gcsfs for
`gs://`). Nothing is unpickled, and the optimizer state is never read.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import DistilleryError
from .maxtext_writer import PARAMS_PREFIX, ParamOnlyWriter, zstd_metadata
from .reader import SourceTensor

FULL_STATE = "full_state"
PARAM_ONLY = "param_only"
_STEP = re.compile(r"^\d+$")


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def _filesystem(path: str):
    import fsspec

    return fsspec.core.url_to_fs(path)


def _join(path: str, *parts: str) -> str:
    return "/".join([str(path).rstrip("/"), *parts])


def _exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    fs, inner = _filesystem(path)
    return fs.exists(inner)


def _read_text(path: str) -> str:
    if not is_remote(path):
        return Path(path).read_text()
    fs, inner = _filesystem(path)
    with fs.open(inner, "r") as handle:
        return handle.read()


def _list_folders(path: str) -> list[str]:
    if not is_remote(path):
        return sorted(entry.name for entry in os.scandir(path) if entry.is_dir()) if os.path.isdir(path) else []
    fs, inner = _filesystem(path)
    try:
        return sorted(entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(inner, detail=True)
                      if entry["type"] == "directory")  # fmt: skip
    except FileNotFoundError:
        return []


def locate_items(path: str | Path) -> str:
    """The `items` folder of a checkpoint given as `.../N/items`, `.../N`, or a checkpoint folder (its newest N)."""
    path = str(path).rstrip("/") or "/"
    if not is_remote(path):
        path = os.path.abspath(path)
    if not _exists(path):
        raise DistilleryError("does not exist", path, "check the checkpoint path")
    if _exists(_join(path, "_METADATA")):
        return path
    if _exists(_join(path, "items", "_METADATA")):
        return _join(path, "items")
    steps = sorted((int(name) for name in _list_folders(path) if _STEP.match(name)), reverse=True)
    for step in steps:
        if _exists(_join(path, str(step), "items", "_METADATA")):
            return _join(path, str(step), "items")
    raise DistilleryError(
        "has no Orbax metadata (no _METADATA here, in items/ or in a numbered step folder)",
        path,
        "pass a MaxText checkpoint's items folder, e.g. gs://bucket/run/checkpoints/1000/items",
    )


@dataclass(frozen=True)
class OrbaxLeaf:
    keys: tuple[str, ...]
    value_type: str  # "jax.Array", "np.ndarray", "scalar"; "None" or "Dict" for an empty node (optax's EmptyState, {})
    skip_deserialize: bool = False

    @property
    def holds_data(self) -> bool:
        return not self.skip_deserialize and self.value_type not in ("None", "Dict", "List", "Tuple")


class OrbaxTree:
    """The leaves of one Orbax PyTree checkpoint and a reader for its arrays."""

    def __init__(self, items: str) -> None:
        self.items = items
        metadata_path = _join(items, "_METADATA")
        try:
            self.metadata = json.loads(_read_text(metadata_path))
            tree = self.metadata["tree_metadata"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DistilleryError(
                f"is not Orbax PyTree metadata ({exc.__class__.__name__}: {exc})",
                metadata_path,
                "the checkpoint was not written completely; use another step",
            ) from None
        self.use_ocdbt = bool(self.metadata.get("use_ocdbt", True))
        self.use_zarr3 = bool(self.metadata.get("use_zarr3", False))
        self.leaves: dict[tuple[str, ...], OrbaxLeaf] = {}
        for written, entry in tree.items():
            keys = tuple(str(k["key"]) for k in entry.get("key_metadata", [])) or tuple(ast.literal_eval(written))
            value = entry.get("value_metadata", {})
            self.leaves[keys] = OrbaxLeaf(
                keys, value.get("value_type", "jax.Array"), value.get("skip_deserialize", False)
            )

    def _kvstore_base(self) -> str:
        return _join(self.items, "") if is_remote(self.items) else "file://" + _join(self.items, "")

    def array_spec(self, keys: tuple[str, ...]) -> dict:
        name = ".".join(keys)
        if self.use_ocdbt:
            kvstore = {"driver": "ocdbt", "base": self._kvstore_base(), "path": name + "/"}
        else:
            kvstore = _join(self._kvstore_base(), name, "")
        return {"driver": "zarr3" if self.use_zarr3 else "zarr", "kvstore": kvstore}

    def open(self, keys: tuple[str, ...], context=None):
        """The array as a lazy tensorstore: metadata is read, data only when it is read."""
        import tensorstore as ts

        try:
            return ts.open(self.array_spec(keys), open=True, read=True, context=context).result()
        except ValueError as exc:  # tensorstore reports a missing or corrupt array as ValueError
            raise DistilleryError(
                f"cannot open array {'.'.join(keys)} ({str(exc).splitlines()[0]})",
                self.items,
                "the checkpoint is incomplete or damaged; use another step",
            ) from None

    def read(self, keys: tuple[str, ...], context=None):
        """The whole array as a numpy array (bfloat16 as ml_dtypes.bfloat16)."""
        return self.open(keys, context).read().result()


@dataclass(frozen=True)
class MaxTextParam:
    name: str  # dotted path inside the model tree, e.g. "decoder.layers.mlp.wi_0.kernel"
    keys: tuple[str, ...]  # the leaf's key path in the stored tree


class MaxTextCheckpoint:
    """A MaxText checkpoint's model parameters, by name; arrays are read one at a time on request."""

    def __init__(self, path: str | Path) -> None:
        self.items = locate_items(path)
        self.tree = OrbaxTree(self.items)
        keys = self.tree.leaves
        # A decode state keeps an empty `opt_state` ({}, stored as an empty node); a training state holds arrays.
        optimizer = [k for k, leaf in keys.items() if k[0] == "opt_state" and leaf.holds_data]
        self.kind = FULL_STATE if optimizer else PARAM_ONLY
        self.params: dict[str, MaxTextParam] = {}
        if any(k[:2] == PARAMS_PREFIX for k in keys):
            self.layout = "linen"
            for leaf_keys in keys:
                if leaf_keys[:2] == PARAMS_PREFIX:
                    name = ".".join(leaf_keys[2:])
                    self.params[name] = MaxTextParam(name, leaf_keys)
        elif any(k and k[-1] == "value" and k[0] in ("decoder", "token_embedder") for k in keys):
            self.layout = "nnx"  # MaxText 0.2 NNX decode checkpoints: bare tree, leaves wrapped in {"value": ...}
            for leaf_keys in keys:
                if leaf_keys[-1] == "value" and self.tree.leaves[leaf_keys].holds_data:
                    name = ".".join(leaf_keys[:-1])
                    self.params[name] = MaxTextParam(name, leaf_keys)
        else:
            top = sorted({k[0] for k in keys if k})
            raise DistilleryError(
                f"holds no MaxText model parameters (top-level keys: {', '.join(top) or 'none'})",
                self.items,
                "pass a MaxText training or param-only checkpoint",
            )
        step_leaf = ("step",) if ("step",) in keys else None
        self.step_keys = step_leaf

    @property
    def step_folder(self) -> str:
        return self.items.rstrip("/").rsplit("/", 1)[0]

    def require(self, kind: str) -> None:
        """Refuse a full training state where a param-only checkpoint is expected, and the other way round."""
        if self.kind == kind:
            return
        if kind == PARAM_ONLY:
            raise DistilleryError(
                "is a full training-state checkpoint (it holds the optimizer state, opt_state), not a param-only one",
                self.items,
                "make a param-only checkpoint first: distillery maxtext-param-only --load-full-state-path "
                f"{self.items} --checkpoint-dir PARAM_ONLY_DIR, then convert PARAM_ONLY_DIR/0/items",
            )
        raise DistilleryError(
            "is already a param-only checkpoint (it holds no optimizer state)",
            self.items,
            "pass it to distillery maxtext-to-hf --orbax-checkpoint directly",
        )

    @functools.cached_property
    def tensors(self) -> dict[str, SourceTensor]:
        """Every parameter with its stored dtype and shape, as `reader.py`'s protocol has them (each array's
        metadata is read here, once; its data only by `load()`)."""
        import torch

        tensors = {}
        for name, param in self.params.items():
            store = self.tree.open(param.keys)
            dtype = getattr(torch, store.dtype.numpy_dtype.name)
            tensors[name] = SourceTensor(name, dtype, tuple(store.shape), Path(self.items), partial(self._load, name))
        return tensors

    @property
    def weight_files(self) -> list[Path]:
        """The files under items/ (a remote checkpoint's are not listed)."""
        return [] if is_remote(self.items) else sorted(p for p in Path(self.items).rglob("*") if p.is_file())

    def read(self, name: str):
        """The whole array as numpy (bfloat16 as ml_dtypes'), for MaxText's own math in JAX."""
        return self.tree.read(self.params[name].keys)

    def _load(self, name: str):
        from .maxtext_arrays import as_torch

        return as_torch(self.read(name))

    def stored_bytes(self) -> int:
        """Bytes of the files under items/ (compressed array data and metadata): what reading it costs."""
        if not is_remote(self.items):
            return sum(p.stat().st_size for p in Path(self.items).rglob("*") if p.is_file())
        fs, inner = _filesystem(self.items)
        return int(fs.du(inner))


def checkpoint_kind(path: str | Path) -> str:
    """FULL_STATE or PARAM_ONLY, from the metadata alone (for planning the workflow)."""
    return MaxTextCheckpoint(path).kind


def looks_like_orbax(path: str | Path) -> bool:
    try:
        locate_items(path)
    except DistilleryError:
        return False
    return True


def write_param_only(
    source: MaxTextCheckpoint, output_step_folder: Path, dtype: str | None, progress=None
) -> list[MaxTextParam]:
    """Write `source`'s parameters as MaxText's param-only layout under `output_step_folder` (a `.../0` folder).

    The layout is formats/maxtext_writer.py's. Arrays go from the source's OCDBT database to the new one chunk by
    chunk inside tensorstore, cast to `dtype` (MaxText casts to bfloat16) on the way, so neither the optimizer
    state nor a whole parameter passes through Python.
    """
    import tensorstore as ts

    writer = ParamOnlyWriter(output_step_folder)
    written = []
    for param in source.params.values():
        stored = source.tree.open(param.keys, writer.context)
        view = stored if dtype is None or stored.dtype.name == dtype else ts.cast(stored, getattr(ts, dtype))
        destination = writer.create(param.name, _zarr3_metadata(stored, view.dtype.name))
        destination.write(view).result()
        written.append(param)
        if progress:
            progress(param)
    writer.finish(source.tree.metadata.get("store_array_data_equal_to_fill_value", True))
    return written


def _zarr3_metadata(stored, data_type: str) -> dict:
    """The source's zarr3 layout (chunks, codecs) with the new data type; a plain zstd layout for zarr2 sources."""
    spec = stored.spec().to_json()
    metadata = spec.get("metadata", {})
    if spec.get("driver") == "zarr3" and "codecs" in metadata:
        keep = {key: metadata[key] for key in ("chunk_grid", "chunk_key_encoding", "codecs") if key in metadata}
        return {**keep, "shape": list(stored.shape), "data_type": data_type}
    return zstd_metadata(list(stored.shape), data_type, list(stored.chunk_layout.read_chunk.shape))
