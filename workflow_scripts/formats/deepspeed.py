"""DeepSpeed ZeRO checkpoints (stages 1, 2 and 3, any data-parallel world size) as a lazy source of fp32 tensors.

Layout, as DeepSpeed and HF Trainer write it:
  run/checkpoint-N/                     HF Trainer's per-step folder (config.json, trainer_state.json, ...)
    latest                              text: the tag of the newest DeepSpeed checkpoint, e.g. global_stepN
    global_stepN/
      mp_rank_00_model_states.pt                    ZeRO 1/2: module (low-precision), param_shapes, buffers
      zero_pp_rank_R_mp_rank_00_model_states.pt     ZeRO 3: one per rank, partitioned frozen params
      [bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt  one per rank: the rank's fp32 master partition(s)

The fp32 master weights are rebuilt the way DeepSpeed's own `zero_to_fp32.py` does (same values, bit for bit):
ZeRO 1/2 concatenate the ranks' partitions of each parameter group and cut the parameters out in
`param_shapes` order (with `param_alignment_paddings` where recorded); ZeRO 3 partitions every parameter
across ranks (ceil(numel / world_size) each, padded) in `param_shapes` order over the ranks' flat groups.
Beyond zero_to_fp32, frozen parameters that a ZeRO-1 checkpoint does not list are taken from its module state.
Files are memory-mapped only to read their structure: where each parameter's pieces lie in the rank files is
worked out from the zip records, so a parameter that keeps its dtype is copied file to file by the kernel, and
one that changes dtype is cast through a small buffer. Where the records cannot be located, each parameter is
copied out of the mapping and the pages it touched are released at once. Either way memory stays near the
largest parameter, not the checkpoint.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DistilleryError, require_folder
from .deepspeed_pickle import load_deepspeed_file
from .deepspeed_steps import list_step_folders, step_of
from .reader import SourceTensor
from .safetensors_file import ByteRange, dtype_itemsize
from .torch_zip import file_offset_finder

_OPTIM_RANK = re.compile(r"zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")
_MODEL_RANK = re.compile(r"zero_pp_rank_(\d+)_mp_rank_00_model_states\.pt$")


def _release_pages(tensor: torch.Tensor) -> None:
    """Drop the pages of a memory-mapped tensor from this process once it has been copied out."""
    if sys.platform != "linux" or tensor.numel() == 0:
        return
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    aligned = start - start % page
    # MADV_DONTNEED (4) on a private, clean file mapping: the pages are re-read from the file if touched again.
    _libc().madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(end - aligned), 4)


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _LIBC


@dataclass(frozen=True)
class CheckpointLocation:
    step_folder: Path  # the folder with `latest` (an HF Trainer checkpoint-N), or the tag folder itself
    tag_folder: Path  # global_stepN: where the *_states.pt files are
    tag: str

    @property
    def step(self) -> int | None:
        return step_of(self.tag_folder) or step_of(self.step_folder)


def locate_checkpoint(path: str | Path, tag: str | None = None, checkpoint_dir: str | Path | None = None):
    """Resolve a run folder, a checkpoint-N folder or a global_stepN folder to one DeepSpeed checkpoint."""
    folder = require_folder(checkpoint_dir or path, "check --input / --checkpoint-dir")
    if checkpoint_dir is None and not _has_states(folder) and not (folder / "latest").is_file():
        steps = list_step_folders(folder)
        if not steps:
            raise DistilleryError(
                "holds no DeepSpeed checkpoint (no checkpoint-N folders, no 'latest' file, no *_states.pt files)",
                folder,
                "point --input at a training run or one of its checkpoint-N folders",
            )
        folder = steps[-1]
    if _has_states(folder):
        return CheckpointLocation(folder, folder, folder.name)
    if tag is None:
        latest = folder / "latest"
        if not latest.is_file():
            tags = sorted(p.name for p in folder.glob("global_step*") if p.is_dir())
            raise DistilleryError(
                "has no 'latest' file to say which checkpoint to use",
                folder,
                f"pass --tag (found: {', '.join(tags) or 'none'})",
            )
        tag = latest.read_text().strip()
        if not (folder / tag).is_dir():
            raise DistilleryError(
                f"names {tag!r}, which does not exist in {folder}",
                latest,
                "the checkpoint was not saved completely: pass --tag with one that exists",
            )
    elif not (folder / tag).is_dir():
        raise DistilleryError(f"has no checkpoint tag {tag!r}", folder, "check --tag")
    return CheckpointLocation(folder, folder / tag, tag)


def _has_states(folder: Path) -> bool:
    return any(folder.glob("*_model_states.pt"))


@dataclass
class DeepSpeedCheckpoint:
    """The fp32 tensors of a ZeRO checkpoint, each rebuilt only when loaded."""

    location: CheckpointLocation
    zero_stage: int
    world_size: int
    ds_version: str | None
    tensors: dict[str, SourceTensor]
    shared: dict[str, str]  # tensor -> tensor it shares storage with (DeepSpeed's shared_params)
    weight_files: list[Path] = field(default_factory=list)
    layout: str = "deepspeed"

    @property
    def total_bytes(self) -> int:
        return sum(dtype_itemsize(t.dtype) * math.prod(t.shape) for t in self.tensors.values())


def _rank_files(folder: Path, pattern: re.Pattern) -> list[Path]:
    files = {int(m.group(1)): p for p in folder.iterdir() if (m := pattern.search(p.name))}
    return [files[rank] for rank in sorted(files)] if files else []


def open_deepspeed_checkpoint(location: CheckpointLocation, trust_pickle: bool = False) -> DeepSpeedCheckpoint:
    folder = location.tag_folder
    optim_files, optim_states, flat_groups = _read_optimizer_states(folder, trust_pickle)
    first = optim_states[0]
    if "zero_stage" not in first:
        raise DistilleryError("is not a ZeRO optimizer state (no zero_stage)", optim_files[0])
    zero_stage = int(first["zero_stage"])
    world_size = _world_size(first["partition_count"])
    _check_all_ranks(folder, optim_files, world_size)
    model_files, model_states = _read_model_states(folder, zero_stage, world_size, trust_pickle)
    optims = dict(zip(optim_files, optim_states, strict=True))
    _check_one_save(folder, optims, flat_groups, dict(zip(model_files, model_states, strict=True)))
    state = model_states[0]
    tensors = _module_tensors(model_states, model_files[0], zero_stage)
    if zero_stage <= 2:
        paddings = first.get("param_alignment_paddings")
        _add_zero2_params(tensors, state["param_shapes"], flat_groups, paddings, world_size, optim_files[0])
    else:
        _add_zero3_params(tensors, state["param_shapes"], flat_groups, world_size, optim_files[0])
    _add_untrained_params(tensors, state, model_files[0])
    shared = {alias: source for alias, source in (state.get("shared_params") or {}).items() if source in tensors}
    for alias, source in shared.items():
        original = tensors[source]
        tensors[alias] = SourceTensor(alias, original.dtype, original.shape, original.file, original.loader)
    return DeepSpeedCheckpoint(
        location=location,
        zero_stage=zero_stage,
        world_size=world_size,
        ds_version=state.get("ds_version"),
        tensors=tensors,
        shared=shared,
        weight_files=[*model_files, *optim_files],
    )


def _read_optimizer_states(folder: Path, trust_pickle: bool):
    """(optimizer files by rank, their optimizer states, each rank's fp32 partitions)."""
    optim_files = _rank_files(folder, _OPTIM_RANK)
    if not optim_files:
        raise DistilleryError(
            "has no *_optim_states.pt files, so there are no fp32 master weights to rebuild",
            folder,
            "was the checkpoint saved with its optimizer state (save_only_model=False)?",
        )
    optim_states, flat_groups = [], []
    group_key = None
    for path in optim_files:
        loaded = load_deepspeed_file(path, trust_pickle)
        optim = loaded["optimizer_state_dict"]
        group_key = group_key or (
            "single_partition_of_fp32_groups" if int(optim.get("zero_stage", 3)) <= 2 else "fp32_flat_groups"
        )
        offset_of = file_offset_finder(path, loaded)
        flat_groups.append(
            [_Partition(group, path, offset_of(group) if offset_of else None) for group in optim.get(group_key, [])]
        )
        optim_states.append(optim)
    return optim_files, optim_states, flat_groups


def _check_all_ranks(folder: Path, optim_files: list[Path], world_size: int) -> None:
    ranks = {int(_OPTIM_RANK.search(p.name).group(1)) for p in optim_files}
    missing = sorted(set(range(world_size)) - ranks)
    if missing or len(optim_files) != world_size:
        raise DistilleryError(
            f"the checkpoint was saved by {world_size} ranks but {len(optim_files)} optimizer files are here"
            + (f" (missing rank {', '.join(map(str, missing))})" if missing else ""),
            folder,
            "copy the missing zero_pp_rank_*_optim_states.pt files; a partial checkpoint cannot be rebuilt",
        )


def _read_model_states(folder: Path, zero_stage: int, world_size: int, trust_pickle: bool):
    """(model state files, their contents): one file below ZeRO-3, one per rank with it."""
    if zero_stage <= 2:
        model_files = [folder / "mp_rank_00_model_states.pt"]
    else:
        model_files = _rank_files(folder, _MODEL_RANK)
        if len(model_files) != world_size:
            raise DistilleryError(
                f"ZeRO-3 needs {world_size} zero_pp_rank_*_model_states.pt files, found {len(model_files)}",
                folder,
                "copy the missing model state files",
            )
    for path in model_files:
        if not path.is_file():
            raise DistilleryError("is missing", path, "copy it from the training run")
    model_states = [load_deepspeed_file(path, trust_pickle) for path in model_files]
    if "buffer_names" not in model_states[0] or "param_shapes" not in model_states[0]:
        raise DistilleryError("is not a DeepSpeed model state file", model_files[0])
    return model_files, model_states


def _module_tensors(model_states: list[dict], anchor: Path, zero_stage: int) -> dict[str, SourceTensor]:
    """Buffers and frozen parameters, which the model states hold (the trained ones are in the optimizer's)."""
    tensors: dict[str, SourceTensor] = {}
    state = model_states[0]
    for name, value in state["module"].items():
        if name in state["buffer_names"]:
            # zero_to_fp32 restores buffers to fp32 where they were saved in half precision.
            buffer = value.float() if value.is_floating_point() else value.clone()
            tensors[name] = SourceTensor(name, buffer.dtype, tuple(buffer.shape), anchor, lambda b=buffer: b)
    frozen_shapes = state.get("frozen_param_shapes") or {}
    for name, shape in frozen_shapes.items():
        fragments = [s["frozen_param_fragments"][name] for s in model_states]
        tensors[name] = SourceTensor(
            name,
            fragments[0].dtype,
            tuple(shape),
            anchor,
            lambda f=fragments, s=tuple(shape): _gather_frozen(f, s, zero_stage),
        )
    return tensors


def _add_untrained_params(tensors: dict[str, SourceTensor], state: dict, anchor: Path) -> None:
    """ZeRO-1 checkpoints record no frozen_param_shapes, so zero_to_fp32 drops frozen parameters; the module
    state still holds them (never updated, so exact in the training dtype). ZeRO-3 keeps only placeholders."""
    for name, value in state["module"].items():
        if name not in tensors and value.numel() > 0 and name not in (state.get("shared_params") or {}):
            tensors[name] = SourceTensor(name, value.dtype, tuple(value.shape), anchor, lambda v=value: v.clone())


def _optimizer_step(optim: dict) -> int | None:
    """The step count the optimizer's own state records (Adam's `step`), or None for one that keeps none."""
    base = optim.get("base_optimizer_state") or optim.get("optimizer_state_dict") or {}
    state = base.get("state") if isinstance(base, dict) else None
    steps = [entry["step"] for entry in (state or {}).values() if isinstance(entry, dict) and "step" in entry]
    return max(int(step) for step in steps) if steps else None


def _check_one_save(folder: Path, optims: dict[Path, dict], flat_groups, models: dict[Path, dict]) -> None:
    """Refuse rank files of one tag that come from different saves (e.g. one rank's file copied from an earlier
    step): they agree on the step, the world size and the partition sizes, and with the model states."""

    def mixed(what: str, values: dict[Path, object]) -> DistilleryError:
        listed = ", ".join(f"{path.name}: {value}" for path, value in values.items())
        return DistilleryError(
            f"the rank files come from different saves ({what}: {listed})",
            folder,
            "copy every *_states.pt file of one save together; a mixed checkpoint cannot be rebuilt",
        )

    checks = {
        "world size": {p: _world_size(o["partition_count"]) for p, o in optims.items()}
        | {p: m["dp_world_size"] for p, m in models.items() if m.get("dp_world_size") is not None},
        "partition sizes": {
            p: tuple(g.tensor.numel() for g in groups) for p, groups in zip(optims, flat_groups, strict=True)
        },
        "training step": {p: m.get("global_steps", 0) - m.get("skipped_steps", 0) for p, m in models.items()}
        | {p: step for p, o in optims.items() if (step := _optimizer_step(o)) is not None},
    }
    for what, values in checks.items():
        if len(set(values.values())) > 1:
            raise mixed(what, values)


def _world_size(partition_count) -> int:
    return max(partition_count) if isinstance(partition_count, list | tuple) else int(partition_count)


def _gather_frozen(fragments: list[torch.Tensor], shape: tuple[int, ...], zero_stage: int) -> torch.Tensor:
    numel = math.prod(shape)
    if zero_stage <= 2:
        return fragments[0].clone().view(shape)
    return torch.cat([f.reshape(-1) for f in fragments])[:numel].clone().view(shape)


@dataclass(frozen=True)
class _Partition:
    """One rank's flat fp32 group: the mapped tensor, and where its bytes are in its file (when known)."""

    tensor: torch.Tensor
    path: Path
    file_offset: int | None


def _pieces(partitions: list[_Partition], start: int, count: int) -> list[tuple[_Partition, int, int]]:
    """(partition, first element, number of elements) covering [start, start + count) of the partitions laid
    end to end."""
    pieces, position, filled = [], 0, 0
    for partition in partitions:
        end = position + partition.tensor.numel()
        if filled < count and end > start + filled:
            begin = start + filled - position
            take = min(count - filled, partition.tensor.numel() - begin)
            pieces.append((partition, begin, take))
            filled += take
        position = end
    if filled != count:
        raise ValueError("parameter runs past the end of its partition")
    return pieces


def _byte_ranges(pieces: list[tuple[_Partition, int, int]]) -> tuple[ByteRange, ...]:
    if any(partition.file_offset is None for partition, _, _ in pieces):
        return ()
    return tuple(
        ByteRange(p.path, p.file_offset + begin * p.tensor.element_size(), take * p.tensor.element_size())
        for p, begin, take in pieces
    )


def _load_pieces(pieces: list[tuple[_Partition, int, int]], shape: tuple[int, ...]) -> torch.Tensor:
    out = torch.empty(sum(take for _, _, take in pieces), dtype=pieces[0][0].tensor.dtype)
    filled = 0
    for partition, begin, take in pieces:
        piece = partition.tensor.reshape(-1)[begin : begin + take]
        out[filled : filled + take].copy_(piece)
        _release_pages(piece)
        filled += take
    return out.view(shape)


def _source(name: str, pieces, shape: tuple[int, ...], anchor: Path) -> SourceTensor:
    return SourceTensor(
        name,
        pieces[0][0].tensor.dtype,
        shape,
        anchor,
        lambda: _load_pieces(pieces, shape),
        _byte_ranges(pieces),
    )


def _add_zero2_params(tensors, param_shapes, flat_groups, paddings, world_size, anchor: Path) -> None:
    """Stage 1/2: group i is the concatenation over ranks of each rank's partition i."""
    for group_index, shapes in enumerate(param_shapes):
        partitions = [rank_groups[group_index] for rank_groups in flat_groups]
        available = sum(p.tensor.numel() for p in partitions)
        offset = 0
        group_paddings = paddings[group_index] if paddings is not None else None
        for param_index, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            tensors[name] = _source(name, _pieces(partitions, offset, numel), tuple(shape), anchor)
            offset += numel
            if group_paddings is not None:
                offset += group_paddings[param_index]
        align = 2 * world_size
        if align * math.ceil(offset / align) != align * math.ceil(available / align):
            raise DistilleryError(
                f"parameter group {group_index} holds {available} values but its parameters need {offset}",
                anchor.parent,
                "the model and optimizer files come from different saves",
            )


def _add_zero3_params(tensors, param_shapes, flat_groups, world_size, anchor: Path) -> None:
    """Stage 3: every parameter is split over the ranks, ceil(numel / world_size) elements each, the last
    rank's share padded; each rank's groups are laid end to end."""
    shapes = {name: shape for group in param_shapes for name, shape in group.items()}
    available = sum(p.tensor.numel() for p in flat_groups[0]) * world_size
    offset = 0
    for name, shape in shapes.items():
        numel = math.prod(shape)
        per_rank = math.ceil(numel / world_size)
        pieces = []
        for rank, groups in enumerate(flat_groups):
            wanted = min(per_rank, numel - rank * per_rank)
            if wanted > 0:
                pieces += _pieces(groups, offset, wanted)
        tensors[name] = _source(name, pieces, tuple(shape), anchor)
        offset += per_rank
    if offset * world_size != available:
        raise DistilleryError(
            f"the ranks hold {available} values but the parameters need {offset * world_size}",
            anchor.parent,
            "the model and optimizer files come from different saves",
        )


def largest_parameter_bytes(path: Path) -> int:
    """Bytes of the largest parameter in fp32, from the model states' `param_shapes` (no tensor data read)."""
    location = locate_checkpoint(path)
    model_files = sorted(location.tag_folder.glob("*model_states.pt"))
    if not model_files:
        raise DistilleryError("has no *_model_states.pt file", location.tag_folder)
    state = load_deepspeed_file(model_files[0])
    shapes = [shape for group in state.get("param_shapes", []) for shape in group.values()]
    shapes += list((state.get("frozen_param_shapes") or {}).values())
    return 4 * max((math.prod(shape) for shape in shapes), default=0)
