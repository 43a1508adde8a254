"""Planning at scale in a bucket: `snakemake -n` on a KD job of 10,000 chunks, half of them written, with
`--default-storage-provider s3` against a local S3 server (moto's server mode, as tests/test_remote_storage.py).

What it counts: the requests the dry run sends to the server, by kind (an object's HEAD, the bucket's HEAD, a
listing, a GET), and the seconds it takes. The S3 storage plugin answers "does this file exist" from an inventory
(one listing of a prefix) where it has one and with requests per file where not; this shows which.
The workload is dry_run_scale.py's (a tiny local teacher, 10 local parquet files, the manifest and teacher record
made by the real jobs, here uploaded by Snakemake to the bucket); the chunk files are uploaded by this script.
The anchor, in the same run and bucket: dry_run_scale.py's leanest Snakefile, its 10,000 chunk files in the bucket.

    python benchmarks/dry_run_storage.py                  # 10,000 chunks
    python benchmarks/dry_run_storage.py --chunks 2000    # quicker
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import socket
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUCKET = "distillery-bench"
PREFIX = "run"
REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d+)')
COLOUR = re.compile(r"\x1b\[[\d;]*m")  # werkzeug colours the lines of answers other than 200


class RequestCounter(logging.Handler):
    """Counts the requests the S3 server logs (werkzeug writes one line per request), by kind."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.kinds: Counter[str] = Counter()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = REQUEST.search(COLOUR.sub("", record.getMessage()))
        if match:
            self.kinds[request_kind(match["method"], match["path"])] += 1
            self.lines.append(match.group(0))


def request_kind(method: str, path: str) -> str:
    bucket_only = path.split("?")[0].strip("/") == BUCKET
    if method == "GET" and ("list-type" in path or "prefix=" in path):
        return "list objects"
    if method == "HEAD":
        return "head bucket" if bucket_only else "head object"
    return f"{method.lower()} {'bucket' if bucket_only else 'object'}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                        region_name="us-east-1")  # fmt: skip


def storage_flags(endpoint: str) -> list[str]:
    return ["--default-storage-provider", "s3", "--default-storage-prefix", f"s3://{BUCKET}/{PREFIX}",
            "--storage-s3-endpoint-url", endpoint, "--storage-s3-access-key", "test",
            "--storage-s3-secret-key", "test"]  # fmt: skip


def upload_half(client, chunk_files: list[str]) -> set[str]:
    """Every other chunk's two files, as finished jobs would have stored them (after the manifest: newer)."""
    written = set(chunk_files[::2])
    keys = [name for chunk in sorted(written) for name in (chunk, chunk.replace(".jsonl", ".stats.json"))]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=b"{}\n"), keys))
    return written


def timed_dry_run(counter: RequestCounter, workdir: Path, snakefile: Path, args: list[str]) -> dict:
    from dry_run_scale import snakemake

    counter.kinds.clear()
    counter.lines.clear()
    start = time.perf_counter()
    result = snakemake(workdir, snakefile, "-n", *args)
    seconds = round(time.perf_counter() - start, 2)
    # What the run did, to read beside the numbers.
    (workdir / "dry-run.txt").write_text(result.stdout)
    (workdir / "requests.txt").write_text("\n".join(counter.lines) + "\n")
    return {"seconds": seconds, "requests": dict(counter.kinds), "all_requests": sum(counter.kinds.values()),
            "planned": planned_in_bucket(result.stdout)}  # fmt: skip


def planned_in_bucket(dry_run_output: str) -> list[str]:
    """The chunk files a dry run plans, as paths below the storage prefix."""
    from dry_run_scale import planned_chunks

    return [path.removeprefix(f"s3://{BUCKET}/{PREFIX}/") for path in planned_chunks(dry_run_output)]


def add_model(configfile: Path) -> None:
    """A tiny model of the workflow's own, as most configs have (the dry run plans its jobs too)."""
    import yaml

    config = yaml.safe_load(configfile.read_text())
    config["tiny_models"] = {"tiny-src": {"architecture": "llama", "layout": "safetensors"}}
    config["models"] = {"tiny": {"source": {"format": "hf", "path": "work/sources/tiny-src"}}}
    config["verify"] = {"parallel_sizes": []}
    configfile.write_text(yaml.safe_dump(config))


def main() -> None:
    sys.path.insert(0, str(HERE))
    from dry_run_scale import ANCHOR, distillery_config, snakemake
    from harness import new_record, save_result
    from moto.server import ThreadedMotoServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--parts", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--with-model", action="store_true",
                        help="a model of the workflow in the config too (a tiny one, planned, not built)")  # fmt: skip
    parser.add_argument("--snakefile", type=Path, default=REPO / "Snakefile",
                        help="another checkout's, to compare (its package first on PYTHONPATH)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=HERE / "work" / "dry_run_storage")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()

    counter = RequestCounter()
    logging.getLogger("werkzeug").addHandler(counter)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    logging.getLogger("werkzeug").propagate = False
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    try:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        shutil.rmtree(args.work, ignore_errors=True)
        workdir = args.work / "distillery"
        workdir.mkdir(parents=True)
        configfile = distillery_config(workdir, args.chunks, args.parts)
        if args.with_model:
            add_model(configfile)
        flags = ["--configfile", str(configfile), *storage_flags(endpoint)]
        snakefile = args.snakefile.resolve()
        snakemake(workdir, snakefile, "results/kd/bench/teacher.json", "results/kd/bench/manifest.json", *flags)
        every = planned_in_bucket(snakemake(workdir, snakefile, "-n", *flags).stdout)
        written = upload_half(client, every)
        missing = sorted(set(every) - written)
        measured = {"distillery": [timed_dry_run(counter, workdir, snakefile, flags) for _ in range(args.repeats)]}

        # The anchor reads the chunk list at parse time from a local copy of the manifest.
        anchor_dir = args.work / "anchor"
        (anchor_dir / "results/kd/bench").mkdir(parents=True)
        client.download_file(BUCKET, f"{PREFIX}/results/kd/bench/manifest.json",
                             str(anchor_dir / "results/kd/bench/manifest.json"))  # fmt: skip
        anchor = args.work / "Snakefile.anchor"
        anchor.write_text(ANCHOR)
        anchor_flags = storage_flags(endpoint)
        measured["anchor"] = [timed_dry_run(counter, anchor_dir, anchor, anchor_flags) for _ in range(args.repeats)]
    finally:
        server.stop()

    record = new_record("dry_run_storage", snakefile=str(args.snakefile), with_model=args.with_model,
                        chunks=len(every), chunks_done=len(written), results={})  # fmt: skip
    print(f"{len(every)} chunks, {len(written)} in the bucket; snakemake -n with the S3 storage plugin:")
    print("| workflow | lists exactly the missing chunks | seconds | requests | by kind |")
    print("|---|---|---|---|---|")
    for name, runs in measured.items():
        exact = all(sorted(run.pop("planned")) == missing for run in runs)
        record["results"][name] = {"runs": runs, "lists_exactly_the_missing_chunks": exact}
        for run in runs:
            kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(run["requests"].items()))
            print(f"| {name} | {exact} | {run['seconds']} | {run['all_requests']} | {kinds} |")
    save_result(args.results_dir, "dry_run_storage", record)
    if not all(result["lists_exactly_the_missing_chunks"] for result in record["results"].values()):
        raise SystemExit("a dry run did not list exactly the missing chunks")


if __name__ == "__main__":
    main()
