"""Write a torch.distributed.checkpoint (DCP) folder, as TorchTitan's checkpointer does, one tensor at a time.

The folder is what `dcp.save` writes from one process: `.metadata` and `__0_0.distcp` (format: formats/dcp.py).
`dcp.save` plans from the state dict it is given and reads each tensor's data only when it writes it
(`SavePlanner.resolve_data`); handing it meta tensors of the right dtype and shape and producing each real tensor
in `resolve_data` keeps one tensor in memory at a time, where `dcp.save(model.state_dict())` would hold them all.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .safetensors_file import TensorSpec


def write_dcp(
    folder: Path,
    specs: Sequence[TensorSpec],
    produce: Callable[[TensorSpec], torch.Tensor],
    progress: Callable[[TensorSpec], None] | None = None,
) -> None:
    """Save the tensors `specs` declare into `folder`, asking `produce` for each when DCP writes it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    by_name = {spec.name: spec for spec in specs}

    class ProducingPlanner(DefaultSavePlanner):
        def resolve_data(self, write_item):
            spec = by_name[write_item.index.fqn]
            tensor = produce(spec)
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise ValueError(f"{spec.name}: produced {tensor.dtype} {list(tensor.shape)}, planned {spec}")
            if progress:
                progress(spec)
            return tensor

    stand_ins = {spec.name: torch.empty(spec.shape, dtype=spec.dtype, device="meta") for spec in specs}
    folder.mkdir(parents=True, exist_ok=True)
    # One thread: the serial loader resolves each tensor just before writing it.
    writer = dcp.FileSystemWriter(str(folder), thread_count=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # DCP warns that it runs without a process group, which is what no_dist asks for.
        warnings.simplefilter("ignore")
        dcp.save(stand_ins, storage_writer=writer, planner=ProducingPlanner(), no_dist=True)
