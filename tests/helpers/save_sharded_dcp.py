"""Save a state dict as an FSDP-style sharded DCP checkpoint: each tensor a DTensor split over the ranks.

Run under `torch.distributed.run --nproc_per_node N` (gloo, CPU):  save_sharded_dcp.py STATE.pt OUTPUT_FOLDER
Every rank writes its own rows of every tensor (Shard(0)), as TorchTitan's FSDP training does, so the checkpoint's
metadata lists several chunks per tensor and `__{rank}_0.distcp` files.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor


def main(state_path: str, output: str) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    state = torch.load(state_path, weights_only=True)
    sharded = {name: distribute_tensor(tensor, mesh, [Shard(0)]) for name, tensor in state.items()}
    dcp.save(sharded, checkpoint_id=output)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
