"""The workflow with its files in a bucket: a real S3 server (moto's server mode) and Snakemake's S3 storage plugin.

Outputs go to the bucket with `--default-storage-provider s3 --default-storage-prefix s3://...`; sources are read
from `s3://` paths in the config. GCS works through the same plugin interface (README, "Remote storage").
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
BUCKET = "distillery-test"
pytestmark = [pytest.mark.integration, pytest.mark.long(seconds=140)]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A local S3 server for this module's tests, started and stopped here, with one empty bucket."""
    pytest.importorskip("snakemake_storage_plugin_s3")
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in failure reports
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    try:
        client(boto3, endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def client(boto3, endpoint: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )


@pytest.fixture
def bucket(s3_endpoint):
    import boto3

    return client(boto3, s3_endpoint)


def keys(bucket, prefix: str) -> set[str]:
    pages = bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"][len(prefix) :] for page in pages for item in page.get("Contents", [])}


def snakemake(workdir: Path, configfile: Path, endpoint: str, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(configfile), "--cores", "2",
        "--storage-s3-endpoint-url", endpoint, "--storage-s3-access-key", "test", "--storage-s3-secret-key", "test",
        *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def write_config(tmp_path: Path, change) -> Path:
    config = yaml.safe_load((REPO / "config/examples/tiny-models.yaml").read_text())
    change(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_model_kd_dataset_and_icm_labels_are_written_to_the_bucket(s3_endpoint, bucket, tmp_path):
    prefix = f"s3://{BUCKET}/default-run"
    storage = ("--default-storage-provider", "s3", "--default-storage-prefix", prefix)
    workdir = tmp_path / "run"

    def teacher_model_only(config):
        # The default config less its second model and the plan checks (tests/test_workflow.py runs those): the
        # model its KD and ICM jobs use, built, converted and verified in the bucket.
        config["tiny_models"] = {"tiny-llama-src": config["tiny_models"]["tiny-llama-src"]}
        config["models"] = {"tiny-llama": config["models"]["tiny-llama"]}
        config["verify"]["parallel_sizes"] = []
        # Fewer, larger jobs than the default's, as on a real run (each job fetches and uploads its files).
        config["kd"]["tiny-web-kd"]["chunk_rows"] = 64
        config["icm"]["jobs"]["tiny-claims"]["iterations"] = 10

    configfile = write_config(tmp_path, teacher_model_only)
    result = snakemake(workdir, configfile, s3_endpoint, *storage)
    assert result.returncode == 0, result.stderr[-4000:]

    stored = keys(bucket, "default-run/")
    # The model folder is uploaded file by file, with its report beside it.
    assert {f"results/models/tiny-llama/hf/{name}" for name in ("config.json", "model.safetensors")} <= stored
    body = bucket.get_object(Bucket=BUCKET, Key="default-run/results/models/tiny-llama/verification.json")["Body"]
    report = json.loads(body.read())
    assert report["passed"], report["failed_checks"]
    assert "work/sources/tiny-llama-src/config.json" in stored
    # KD: the chunks, the dataset and its summary; the records name the workflow's paths, not the job's copies.
    assert {"results/kd/tiny-web-kd/manifest.json", "results/kd/tiny-web-kd/summary.json"} <= stored
    chunks = {key for key in stored if key.startswith("results/kd/tiny-web-kd/chunks/") and key.endswith(".jsonl")}
    manifest = json.loads(
        bucket.get_object(Bucket=BUCKET, Key="default-run/results/kd/tiny-web-kd/manifest.json")["Body"].read()
    )
    assert len(chunks) == len(manifest["chunks"])
    dataset = bucket.get_object(Bucket=BUCKET, Key="default-run/results/kd/tiny-web-kd/dataset.jsonl")["Body"].read()
    records = [json.loads(line) for line in dataset.decode().splitlines()]
    assert records and {record["model"] for record in records} == {"results/models/tiny-llama/hf"}
    assert {record["source_file"].split("/part-")[0] for record in records} == {"work/datasets/tiny-web"}
    # ICM: the label set and its report.
    assert {"results/icm/tiny-claims/labels.jsonl", "results/icm/tiny-claims/report.json"} <= stored
    # The figures of `snakemake --report`, which fetches them from the bucket.
    assert {
        "results/report/models/tiny-llama/verification.html",
        "results/report/icm/tiny-claims/objective.svg",
    } <= stored
    # Nothing is left in the working directory but Snakemake's own state and the logs.
    assert not (workdir / "results").exists()

    again = snakemake(workdir, configfile, s3_endpoint, *storage, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]


def test_source_model_is_read_from_an_s3_path(s3_endpoint, bucket, tiny_model, tmp_path):
    source = tiny_model("qwen3", "safetensors_sharded")
    for path in sorted(source.rglob("*")):
        if path.is_file():
            bucket.upload_file(str(path), BUCKET, f"sources/tiny-qwen3/{path.relative_to(source)}")

    def from_bucket(config):
        config["tiny_models"] = {}
        config["verify"]["parallel_sizes"] = []
        config["models"] = {"m": {"source": {"format": "hf", "path": f"s3://{BUCKET}/sources/tiny-qwen3"}}}
        config["kd"], config["tiny_datasets"] = {}, {}  # the default KD and ICM jobs use the default models
        config.pop("icm", None)

    workdir = tmp_path / "run"
    result = snakemake(workdir, write_config(tmp_path, from_bucket), s3_endpoint, "--printshellcmds")
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((workdir / "results/models/m/verification.json").read_text())
    assert report["passed"], report["failed_checks"]
    # The numeric reference was the source in the bucket, fetched by the storage plugin.
    assert next(c for c in report["checks"] if c["name"] == "numerics")["status"] == "pass"
    # The conversion read the plugin's local copy of the bucket's folder.
    assert f"--input .snakemake/storage/s3/{BUCKET}/sources/tiny-qwen3 " in result.stdout + result.stderr
