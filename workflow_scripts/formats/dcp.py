"""TorchTitan checkpoints: `torch.distributed.checkpoint` (DCP) folders, or one `torch.save`d `.pt` state dict.

A DCP folder (https://pytorch.org/docs/stable/distributed.checkpoint.html) holds `.metadata`, a pickled
`torch.distributed.checkpoint.metadata.Metadata` naming every key with its dtype, global shape and the chunks
each rank wrote, and `__{rank}_{n}.distcp` files whose records are `torch.save`d tensor chunks. A TorchTitan
step folder (`checkpoint/step-N/`) may also hold optimizer, scheduler, dataloader and train-state keys beside
the model's; only model tensors are offered here.

Reading is lazy: the metadata gives names, dtypes and shapes without touching the data, and `load(name)` reads
one tensor through DCP's own planner (chunks of sharded tensors are assembled by it, only their bytes are read)
into a freshly allocated tensor, so a conversion holds one tensor at a time, never a `dcp_to_torch_save` copy of
the model. `.metadata` is unpickled with an allow-list of DCP's metadata classes (torch's reader would unpickle
anything); the tensor records are read by DCP with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import pickle
import warnings
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch

from ..errors import DistilleryError, first_line
from .reader import SourceTensor
from .torch_bin import load_torch_file

METADATA_FILE = ".metadata"
# Keys of a TorchTitan training checkpoint that are not model weights.
_NON_MODEL_PREFIXES = ("optimizer.", "lr_scheduler", "dataloader", "train_state", "rng_state")


class _MetadataUnpickler(pickle.Unpickler):
    """Rebuilds DCP's `.metadata` and nothing else: DCP's own dataclasses, torch sizes, dtypes and layouts."""

    _MODULES = {"torch.distributed.checkpoint.metadata"}
    _NAMES = {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PureWindowsPath"),
    }

    def __init__(self, handle, path: Path) -> None:
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str):
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype | torch.layout):
            return getattr(torch, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.memory_format):
            return getattr(torch, name)
        if module in self._MODULES or (module, name) in self._NAMES:
            if module == "collections":
                return OrderedDict
            if module == "pathlib":
                return getattr(pathlib, name)
            return super().find_class(module, name)
        raise DistilleryError(
            f"holds {module}.{name}, which is not part of DCP metadata; distillery does not unpickle it",
            self.path,
            "is this a checkpoint written by torch.distributed.checkpoint?",
        )


def read_metadata(folder: Path):
    """DCP's `Metadata` of `folder`, unpickled through the allow-list."""
    path = folder / METADATA_FILE
    try:
        with open(path, "rb") as handle:
            return _MetadataUnpickler(handle, path).load()
    except FileNotFoundError:
        raise DistilleryError(
            "has no .metadata file, so it is not a torch.distributed.checkpoint folder", folder
        ) from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as exc:
        raise DistilleryError(f"cannot be read ({first_line(exc)})", path, "the checkpoint may be truncated") from None


def _safe_reader(folder: Path, metadata):
    """torch's FileSystemReader, handed `metadata` as read through the allow-list (never its own pickle.load)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(str(folder))


def is_dcp_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / METADATA_FILE).is_file()


def is_titan_checkpoint(path: Path) -> bool:
    """A DCP folder or a `.pt` file: the inputs `titan-to-hf` reads (names are checked when it reads them)."""
    path = Path(path)
    return is_dcp_folder(path) or (path.is_file() and path.suffix in (".pt", ".pth"))


class TitanCheckpoint:
    """The model tensors of a TorchTitan checkpoint, by the names TorchTitan gave them (`reader.py`'s protocol)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._state: dict[str, torch.Tensor] | None = None
        self._metadata = None
        self._prefix = ""
        if is_dcp_folder(self.path):
            self.layout = "dcp"
            all_tensors = self._dcp_tensors()
        elif self.path.is_file():
            self.layout = "torch_save"
            all_tensors = self._torch_save_tensors()
        elif self.path.is_dir():
            raise DistilleryError(
                "has no .metadata file: not a torch.distributed.checkpoint folder",
                self.path,
                "pass the step folder (e.g. checkpoint/step-1000) or a .pt file",
            )
        else:
            raise DistilleryError("does not exist", self.path, "check --input")
        self.tensors = self._model_tensors(all_tensors)

    @property
    def weight_files(self) -> list[Path]:
        return sorted(self.path.glob("*.distcp")) if self.layout == "dcp" else [self.path]

    def _tensor(self, name: str, dtype: torch.dtype, shape) -> SourceTensor:
        return SourceTensor(name, dtype, tuple(shape), self.path, partial(self._load, name))

    def _dcp_tensors(self) -> dict[str, SourceTensor]:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        metadata = self._metadata = read_metadata(self.path)
        return {
            name: self._tensor(name, entry.properties.dtype, entry.size)
            for name, entry in metadata.state_dict_metadata.items()
            if isinstance(entry, TensorStorageMetadata)
        }

    def _torch_save_tensors(self) -> dict[str, SourceTensor]:
        state = load_torch_file(self.path, "TorchTitan checkpoint", refusal_hint="save only the model's state dict")
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # {"model": state_dict, ...} as some training scripts save it
        if not isinstance(state, dict):
            raise DistilleryError(f"holds a {type(state).__name__}, not a state dict", self.path)
        self._state = {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}
        return {name: self._tensor(name, t.dtype, t.shape) for name, t in self._state.items()}

    def _model_tensors(self, tensors: dict[str, SourceTensor]) -> dict[str, SourceTensor]:
        model = {name: t for name, t in tensors.items() if not name.startswith(_NON_MODEL_PREFIXES)}
        # Older TorchTitan checkpoints nest the model under "model." ("model.tok_embeddings.weight").
        if model and all(name.startswith("model.") for name in model) and "model.embed_tokens.weight" not in model:
            self._prefix = "model."
            model = {
                name[len("model.") :]: self._tensor(name[len("model.") :], t.dtype, t.shape)
                for name, t in model.items()
            }
        if not model:
            raise DistilleryError(
                "holds no model tensors (only optimizer or training state)",
                self.path,
                "point --input at a checkpoint saved with the model's weights",
            )
        return model

    def _load(self, name: str) -> torch.Tensor:
        """Read one tensor (whole, in its stored dtype) and nothing else."""
        spec = self.tensors[name]
        if self._state is not None:
            return self._state[self._prefix + name]
        import torch.distributed.checkpoint as dcp

        target = {self._prefix + name: torch.empty(spec.shape, dtype=spec.dtype)}
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # DCP warns that it runs without a process group, which is what no_dist asks for.
            warnings.simplefilter("ignore")
            try:
                dcp.load(target, storage_reader=_safe_reader(self.path, self._metadata), no_dist=True)
            except DistilleryError:
                raise
            except Exception as exc:  # noqa: BLE001 - DCP wraps I/O errors in its own CheckpointException
                raise DistilleryError(
                    f"cannot read tensor {name!r} ({first_line(exc)})",
                    self.path,
                    "a .distcp file may be missing or truncated",
                ) from None
        return target[self._prefix + name]
