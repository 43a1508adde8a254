"""A whole KD job in one process, without Snakemake: what the MaxText guide's `run_sequence_kd.sh` does.

The manifest is written once (and kept when a rerun has the same settings), each worker generates its share of
the chunks (chunk i goes to worker i mod N), and whoever finds every chunk done merges the dataset.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DistilleryError
from .chunk import ChunkRunner, chunk_output
from .dataset import build_dataset
from .manifest import Manifest, load_manifest, write_manifest
from .settings import KdJob, job_to_dict
from .status import job_status


def run_standalone_job(
    job: KdJob, output_dir: Path, worker_index: int = 0, num_workers: int = 1, make_dataset: bool = True
) -> None:
    """Manifest (kept if its settings match), this worker's share of the chunks, then the dataset."""
    folder = output_dir / job.name
    manifest = _current_manifest(job, folder / "manifest.json")
    mine = [c for i, c in enumerate(manifest.chunks) if i % num_workers == worker_index]
    todo = [c for c in mine if not chunk_output(manifest, c).exists()]
    print(f"worker {worker_index}/{num_workers}: {len(todo)} of {len(mine)} chunks to generate")
    runner = ChunkRunner(manifest)
    try:
        for chunk in todo:
            stats = runner.run(chunk)
            print(f"✓ chunk {chunk.name}: {stats['generated_rows']} rows, {stats['completion_tokens']} tokens")
    finally:
        runner.close()
    if job_status(manifest)["remaining_chunks"] == 0 and make_dataset:
        extension = "parquet" if job.output_format == "parquet" else "jsonl"
        summary = build_dataset(manifest, folder / f"dataset.{extension}", folder / "summary.json", job.output_format)
        print(f"✓ {folder / f'dataset.{extension}'}: {summary['samples']} samples")


def _current_manifest(job: KdJob, manifest_path: Path) -> Manifest:
    if manifest_path.exists():
        manifest = load_manifest(manifest_path)
        if manifest.settings_hash != job.settings_hash():
            raise DistilleryError(
                "was made with other settings than these",
                manifest_path,
                "use another --job-name, or remove the job folder to start over",
            )
        return manifest
    write_manifest(job, job_to_dict(job), manifest_path)
    return load_manifest(manifest_path)
