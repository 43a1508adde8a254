"""Where one job finds the KD job's model and dataset when they are not at the paths the job names.

A manifest names the model and the parquet files by the paths of the job's settings (`results/models/m/hf`,
`work/datasets/web/part-0.parquet`), and those paths go into every record. A job that runs on a copy (Snakemake's
storage plugins put each input under `.snakemake/storage/...`; a cluster job may stage to scratch disk) passes
`--local-model` and `--local-dataset`: it reads from the copies and still writes the job's paths.
`--local-dataset` is a copy of the dataset's folder: the folder itself, the folder of a glob's files (`data/web`
for `data/web/*.parquet`) or of a single file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from ..errors import DistilleryError
from .settings import KdJob
from .sources import glob_root


def dataset_root(dataset: str) -> str:
    """The folder a dataset's files are in (their part names are relative to it), from the setting alone."""
    root = glob_root(dataset)
    if root is not None:
        return root
    return os.path.dirname(dataset) if dataset.endswith(".parquet") else dataset.rstrip("/")


@dataclass(frozen=True)
class LocalCopies:
    model: str | None = None
    dataset: str | None = None  # a copy of dataset_root(job.dataset)

    def job_reading_copies(self, job: KdJob) -> KdJob:
        """The job with its engine pointed at the local model (a tokenizer inside the model folder moves with it)."""
        if not self.model:
            return job
        engine = job.engine
        tokenizer = engine.tokenizer_path and (
            _moved(engine.tokenizer_path, engine.model_path, self.model) or engine.tokenizer_path
        )
        return replace(job, engine=replace(engine, model_path=self.model, tokenizer_path=tokenizer))

    def local_dataset(self, job: KdJob) -> str:
        """What to list for the job's dataset here: its setting, moved into the copy."""
        if not self.dataset:
            return job.dataset
        return _moved(job.dataset, dataset_root(job.dataset), self.dataset)

    def local_file(self, job: KdJob, file: str) -> str:
        """Where this job reads `file`, one of the job's parquet files as the manifest names it."""
        if not self.dataset:
            return file
        moved = _moved(file, dataset_root(job.dataset), self.dataset)
        if moved is None:
            raise DistilleryError(
                f"is not in {dataset_root(job.dataset)}, the folder that --local-dataset is a copy of", file
            )
        return moved

    def named_file(self, job: KdJob, local_file: str) -> str:
        """The job's name for a file found in the local copy: what the manifest and the records say."""
        if not self.dataset:
            return local_file
        return _moved(local_file, self.dataset, dataset_root(job.dataset)) or local_file


IN_PLACE = LocalCopies()  # no copies: every path is read where the job names it


def _moved(path: str, root: str, new_root: str) -> str | None:
    """`path` below `root`, named below `new_root` instead; None when it is not below `root`."""
    root = os.path.normpath(root)
    path = os.path.normpath(path)
    if path == root:
        return new_root
    if root == ".":
        return os.path.join(new_root, path)
    if path.startswith(root + os.sep):
        return os.path.join(new_root, path[len(root) + 1 :])
    return None
