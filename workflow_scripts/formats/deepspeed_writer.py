"""Write a DeepSpeed ZeRO (stage 2 or 3) checkpoint of given parameters, as DeepSpeed's engine saves one.

The files and fields are those `engine.save_checkpoint` writes into `global_stepN/` (layout: formats/deepspeed.py)
and that DeepSpeed's own `zero_to_fp32.py` and `formats/deepspeed.py` read back:

- per rank R, `zero_pp_rank_R_mp_rank_00_optim_states.pt`: `{"optimizer_state_dict": {"zero_stage",
  "partition_count", "fp32_flat_groups" (stage 3) or "single_partition_of_fp32_groups" (stage 2), ...}}`, the
  rank's fp32 master partition as one flat group;
- stage 3: per rank, `zero_pp_rank_R_mp_rank_00_model_states.pt` whose `module` holds empty placeholders;
  stage 2: one `mp_rank_00_model_states.pt` whose `module` holds the whole weights (views of the flat group,
  as the live engine's parameters are); both with `param_shapes`, `buffer_names`, `shared_params` (a tied
  tensor -> the one that holds its data), `frozen_param_shapes` and the step counters.

Partitioning is DeepSpeed's: stage 3 splits every parameter over the ranks, ceil(numel / world_size) values
each, the last share zero-padded, laid end to end in parameter order; stage 2 lays the parameters end to end,
pads the group to a multiple of 2 x world_size and gives each rank an equal slice. Flat groups are filled one
parameter at a time in memory-mapped spool files that `torch.save` then copies, so the process holds one
parameter, never the model. The files use only plain containers, ints and `torch.Size`: no DeepSpeed class is
pickled, so they load with `torch.load(weights_only=True)` where DeepSpeed is not installed.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..choices import ZERO_STAGES
from .safetensors_file import TensorSpec

# The DeepSpeed release whose files these mirror, checked against its zero_to_fp32.py.
DS_VERSION = "0.19.8"


def optim_file(rank: int) -> str:
    return f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


def zero3_model_file(rank: int) -> str:
    return f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"


ZERO2_MODEL_FILE = "mp_rank_00_model_states.pt"


def zero3_share(numel: int, world_size: int) -> int:
    """Values of one parameter on each rank under ZeRO-3 (DeepSpeed's `zero3_partitioned_param_info`)."""
    return math.ceil(numel / world_size)


def zero2_group_size(specs: Sequence[TensorSpec], world_size: int) -> int:
    """The flat group's length under ZeRO-2: every parameter, padded to a multiple of 2 x world_size."""
    align = 2 * world_size
    return align * math.ceil(sum(math.prod(spec.shape) for spec in specs) / align)


@contextlib.contextmanager
def _spool(path: Path, numel: int) -> Iterator[torch.Tensor]:
    """A zero-filled flat fp32 tensor backed by a file: its pages are the page cache's, not this process's."""
    array = np.memmap(path, dtype=np.float32, mode="w+", shape=(max(numel, 1),))
    try:
        yield torch.from_numpy(array)[:numel]
    finally:
        del array
        path.unlink(missing_ok=True)


def write_zero_checkpoint(
    tag_folder: Path,
    specs: Sequence[TensorSpec],
    produce: Callable[[TensorSpec], torch.Tensor],
    zero_stage: int,
    world_size: int,
    shared: dict[str, str],
    step: int = 0,
    progress: Callable[[TensorSpec], None] | None = None,
) -> list[Path]:
    """Write `specs` (the trained parameters, in the model's order) as a ZeRO checkpoint into `tag_folder`.

    `shared` maps a tied tensor's name to the parameter that holds its data (it is not a parameter itself).
    Returns the files written.
    """
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"ZeRO stage {zero_stage} is not one of {ZERO_STAGES}")
    tag_folder.mkdir(parents=True, exist_ok=True)
    common = _model_state_fields(specs, shared, world_size, step)
    if zero_stage == 3:
        return _write_zero3(tag_folder, specs, produce, world_size, common, progress)
    return _write_zero2(tag_folder, specs, produce, world_size, common, progress)


def _model_state_fields(specs: Sequence[TensorSpec], shared: dict[str, str], world_size: int, step: int) -> dict:
    return {
        "buffer_names": [],
        "param_shapes": [OrderedDict((spec.name, torch.Size(spec.shape)) for spec in specs)],
        "frozen_param_shapes": None,
        "frozen_param_fragments": None,
        "shared_params": dict(shared),
        "lr_scheduler": None,
        "global_steps": step,
        "global_samples": 0,
        "skipped_steps": 0,
        "dp_world_size": world_size,
        "mp_world_size": 1,
        "ds_version": DS_VERSION,
    }


def _optimizer_state(zero_stage: int, world_size: int, partition: torch.Tensor, padding: int) -> dict:
    groups_key = "fp32_flat_groups" if zero_stage == 3 else "single_partition_of_fp32_groups"
    base_key = "optimizer_state_dict" if zero_stage == 3 else "base_optimizer_state"
    return {
        "optimizer_state_dict": {
            "zero_stage": zero_stage,
            "partition_count": world_size if zero_stage == 3 else [world_size],
            groups_key: [partition],
            base_key: {"state": {}, "param_groups": [{"params": [0]}]},
            "loss_scaler": None,
            "dynamic_loss_scale": False,
            "overflow": False,
            **({"group_paddings": [padding]} if zero_stage == 2 else {}),
        },
        "ds_version": DS_VERSION,
    }


def _fp32(spec: TensorSpec, produce: Callable[[TensorSpec], torch.Tensor]) -> torch.Tensor:
    tensor = produce(spec)
    if tuple(tensor.shape) != spec.shape:
        raise ValueError(f"{spec.name}: produced {list(tensor.shape)}, planned {list(spec.shape)}")
    return tensor.to(torch.float32).reshape(-1)


def _write_zero3(tag_folder, specs, produce, world_size, common, progress) -> list[Path]:
    per_rank = sum(zero3_share(math.prod(spec.shape), world_size) for spec in specs)
    written = []
    with contextlib.ExitStack() as stack:
        spools = [_spool(tag_folder / f".spool-{rank}", per_rank) for rank in range(world_size)]
        partitions = [stack.enter_context(spool) for spool in spools]
        offset = 0
        for spec in specs:
            flat = _fp32(spec, produce)
            share = zero3_share(flat.numel(), world_size)
            for rank, partition in enumerate(partitions):
                piece = flat[rank * share : (rank + 1) * share]
                partition[offset : offset + piece.numel()] = piece
            offset += share
            if progress:
                progress(spec)
        placeholders = {spec.name: torch.empty(0, dtype=spec.dtype) for spec in specs}
        placeholders.update({alias: torch.empty(0, dtype=torch.float32) for alias in common["shared_params"]})
        for rank, partition in enumerate(partitions):
            written.append(tag_folder / optim_file(rank))
            torch.save(_optimizer_state(3, world_size, partition, 0), written[-1])
            written.append(tag_folder / zero3_model_file(rank))
            torch.save({"module": placeholders, **common}, written[-1])
    return written


def _write_zero2(tag_folder, specs, produce, world_size, common, progress) -> list[Path]:
    group = zero2_group_size(specs, world_size)
    share = group // world_size
    written = []
    with _spool(tag_folder / ".spool-group", group) as flat_group:
        module, offset = {}, 0
        for spec in specs:
            flat = _fp32(spec, produce)
            flat_group[offset : offset + flat.numel()] = flat
            module[spec.name] = flat_group[offset : offset + flat.numel()].view(spec.shape)
            offset += flat.numel()
            if progress:
                progress(spec)
        module.update({alias: module[origin] for alias, origin in common["shared_params"].items()})
        written.append(tag_folder / ZERO2_MODEL_FILE)
        torch.save({"module": module, **common}, written[-1])
        for rank in range(world_size):
            with _spool(tag_folder / f".spool-{rank}", share) as partition:
                partition.copy_(flat_group[rank * share : (rank + 1) * share])
                written.append(tag_folder / optim_file(rank))
                # DeepSpeed records the group's padding on the rank whose slice ends with it.
                padding = group - offset if rank == world_size - 1 else 0
                torch.save(_optimizer_state(2, world_size, partition, padding), written[-1])
    return written
