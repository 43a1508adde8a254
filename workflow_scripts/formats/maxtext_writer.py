"""Write MaxText's param-only Orbax layout: `{params: {params: TREE}, step: 0}` in `STEP/items` (OCDBT, zarr3).

The layout formats/maxtext.py describes and reads, as MaxText's `generate_param_only_checkpoint` (Linen) and its
HF→MaxText converters write it and as every MaxText release loads it (`load_parameters_path=.../0/items`):
each array a zarr3 array inside one OCDBT database, named by its dotted key path
(`params.params.decoder.layers.mlp.wi_0.kernel`), `items/_METADATA` listing every leaf, and the commit markers
orbax writes last. Arrays are created here and written by the caller, whole or a slice at a time, through
tensorstore, so a parameter never has to be in memory whole. Nothing here imports torch or tensorstore at the
top: formats/maxtext.py, which the workflow reads while planning, imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path

PARAMS_PREFIX = ("params", "params")
_COMMITTED = "Checkpoint commit was successful.\n"
_PYTREE_HANDLER = "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"


class ParamOnlyWriter:
    """Creates the parameter arrays of one param-only checkpoint step folder, then its metadata (`finish`)."""

    def __init__(self, step_folder: Path) -> None:
        import tensorstore as ts

        self.step_folder = Path(step_folder)
        self.items = self.step_folder / "items"
        self.items.mkdir(parents=True)
        self.context = ts.Context()
        self._base = "file://" + str(self.items.resolve()) + "/"
        self._tree_metadata: dict[str, dict] = {}

    def create(self, name: str, metadata: dict):
        """A new zarr3 array for the parameter `name` (dotted, inside TREE), with zarr3 `metadata`."""
        import tensorstore as ts

        keys = (*PARAMS_PREFIX, *name.split("."))
        array = ts.open(
            {
                "driver": "zarr3",
                "kvstore": {"driver": "ocdbt", "base": self._base, "path": ".".join(keys) + "/"},
                "metadata": metadata,
                # As orbax writes them: a chunk of zeros is stored too, not left to the fill value.
                "store_data_equal_to_fill_value": True,
            },
            create=True,
            context=self.context,
        ).result()
        self._tree_metadata[str(keys)] = _leaf_metadata(keys, "np.ndarray", list(metadata["shape"]))
        return array

    def finish(self, store_array_data_equal_to_fill_value: bool = True) -> None:
        """Write the step (0), `_METADATA`, `_CHECKPOINT_METADATA` and the commit markers."""
        import tensorstore as ts

        step = ts.open(
            {
                "driver": "zarr3",
                "kvstore": {"driver": "ocdbt", "base": self._base, "path": "step/"},
                "metadata": {"shape": [], "data_type": "int64", "codecs": [{"name": "bytes"}]},
                "store_data_equal_to_fill_value": True,
            },
            create=True,
            context=self.context,
        ).result()
        step.write(0).result()
        self._tree_metadata[str(("step",))] = _leaf_metadata(("step",), "scalar")
        metadata = {
            "tree_metadata": self._tree_metadata,
            "use_ocdbt": True,
            "use_zarr3": True,
            "store_array_data_equal_to_fill_value": store_array_data_equal_to_fill_value,
            "custom_metadata": {},
        }
        (self.items / "_METADATA").write_text(json.dumps(metadata))
        (self.items / "commit_success.txt").write_text(_COMMITTED)
        checkpoint_metadata = {
            "item_handlers": {"items": _PYTREE_HANDLER},
            "metrics": {},
            "performance_metrics": {},
            "custom_metadata": {},
        }
        (self.step_folder / "_CHECKPOINT_METADATA").write_text(json.dumps(checkpoint_metadata))
        (self.step_folder / "commit_success.txt").write_text(_COMMITTED)


def _leaf_metadata(keys: tuple[str, ...], value_type: str, write_shape: list[int] | None = None) -> dict:
    value = {"value_type": value_type, "skip_deserialize": False}
    if write_shape is not None:
        value["write_shape"] = write_shape
    return {"key_metadata": [{"key": key, "key_type": 2} for key in keys], "value_metadata": value}


def as_numpy(tensor):
    """A torch tensor as the numpy array tensorstore writes (bfloat16 as ml_dtypes' bfloat16), sharing memory."""
    import ml_dtypes
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def zstd_metadata(shape: list[int], data_type: str, chunk_shape: list[int]) -> dict:
    """A plain zarr3 layout: regular chunks, little-endian bytes, zstd (orbax's default codecs)."""
    return {
        "shape": list(shape),
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk_shape)}},
        "codecs": [
            {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "zstd", "configuration": {"level": 1}},
        ],
    }
