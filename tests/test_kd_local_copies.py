"""How a job on copies (a storage plugin's, a scratch disk's) finds the files its manifest names, and back."""

from __future__ import annotations

import pytest

from workflow_scripts.engines.base import EngineSettings
from workflow_scripts.errors import DistilleryError
from workflow_scripts.kd.local_copies import LocalCopies, dataset_root
from workflow_scripts.kd.settings import KdJob, PromptSettings


def job(dataset: str, model: str = "results/models/m/hf", tokenizer: str | None = None) -> KdJob:
    engine = EngineSettings(kind="transformers", model_path=model, tokenizer_path=tokenizer)
    return KdJob(name="j", model=model, dataset=dataset, prompt=PromptSettings(mode="prefix"), engine=engine)


@pytest.mark.parametrize(
    ("dataset", "root"),
    [
        ("work/datasets/web", "work/datasets/web"),
        ("work/datasets/web/", "work/datasets/web"),
        ("work/datasets/web/*.parquet", "work/datasets/web"),
        ("work/datasets/web/part-000.parquet", "work/datasets/web"),
    ],
)
def test_the_dataset_folder_is_read_from_the_setting_alone(dataset, root):
    assert dataset_root(dataset) == root


def test_files_move_between_the_named_folder_and_its_copy():
    copies = LocalCopies(dataset=".snakemake/storage/s3/b/p/work/datasets/web")
    kd = job("work/datasets/web/*.parquet")
    local = copies.local_file(kd, "work/datasets/web/en/part-000.parquet")
    assert local == ".snakemake/storage/s3/b/p/work/datasets/web/en/part-000.parquet"
    assert copies.named_file(kd, local) == "work/datasets/web/en/part-000.parquet"
    assert copies.local_dataset(kd) == ".snakemake/storage/s3/b/p/work/datasets/web/*.parquet"


def test_a_file_outside_the_copied_folder_is_named():
    copies = LocalCopies(dataset="/scratch/web")
    with pytest.raises(DistilleryError, match="is not in work/datasets/web"):
        copies.local_file(job("work/datasets/web"), "elsewhere/part-000.parquet")


def test_the_engine_reads_the_local_model_and_a_tokenizer_inside_it_moves_along():
    copies = LocalCopies(model="/scratch/m")
    inside = copies.job_reading_copies(job("d", tokenizer="results/models/m/hf/tokenizer"))
    assert (inside.engine.model_path, inside.engine.tokenizer_path) == ("/scratch/m", "/scratch/m/tokenizer")
    assert inside.model == "results/models/m/hf"  # what the records say
    elsewhere = copies.job_reading_copies(job("d", tokenizer="/tokenizers/llama"))
    assert elsewhere.engine.tokenizer_path == "/tokenizers/llama"


def test_without_copies_every_path_is_its_own():
    kd = job("work/datasets/web")
    assert LocalCopies().job_reading_copies(kd) is kd
    assert LocalCopies().local_file(kd, "work/datasets/web/a.parquet") == "work/datasets/web/a.parquet"
