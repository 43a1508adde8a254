"""Shared fixtures: real tiny checkpoints built locally, and a way to run the CLI as a user would."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import smollm2  # reads the user's $DISTILLERY_CACHE_DIR before own_cache_folder replaces it

from workflow_scripts.architectures.tiny import TinyModelSpec, build_tiny_model
from workflow_scripts.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def own_cache_folder(tmp_path_factory):
    """Keep distillery's on-disk cache (expected weights of architectures) out of the user's home."""
    os.environ["DISTILLERY_CACHE_DIR"] = str(tmp_path_factory.mktemp("distillery-cache"))


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """Run `distillery ARGS...` in-process and capture what it prints."""

    def run(*args: str | Path) -> CliResult:
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exc:  # argparse exits on usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def tiny_model_store(tmp_path_factory):
    """Builds each (architecture, layout, dtype) once per session; tests get their own copy."""
    store = tmp_path_factory.mktemp("tiny-models")
    built: dict[tuple, Path] = {}

    def get(architecture: str = "llama", layout: str = "safetensors", dtype: str = "float32", **sizes) -> Path:
        key = (architecture, layout, dtype, tuple(sorted(sizes.items())))
        if key not in built:
            folder = store / "-".join(str(part) for part in key[:3]) / str(len(built))
            build_tiny_model(folder, TinyModelSpec(architecture=architecture, **sizes), layout, seed=7, dtype=dtype)
            built[key] = folder
        return built[key]

    return get


@pytest.fixture
def tiny_model(tiny_model_store, tmp_path):
    """A fresh copy of a tiny model folder that the test may damage."""

    def make(architecture: str = "llama", layout: str = "safetensors", dtype: str = "float32", **sizes) -> Path:
        source = tiny_model_store(architecture, layout, dtype, **sizes)
        destination = tmp_path / f"{architecture}-{layout}-{dtype}"
        shutil.copytree(source, destination)
        return destination

    return make


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer (a byte-level BPE, as Llama 3's), read from its GGUF file."""
    return smollm2.smollm2_tokenizer()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shared_between_workers(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this run sees (each worker's own base folder is one level down)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def deepspeed_run(tmp_path_factory, tiny_model_store):
    """A real HF Trainer + DeepSpeed run (2 ranks, gloo, on the CPU) per (stage, architecture), made once per test
    run: the workers share it (a minute of two ranks each), so tests copy it before they damage it."""
    pytest.importorskip("deepspeed")
    from filelock import FileLock

    shared = shared_between_workers(tmp_path_factory) / "deepspeed-runs"
    shared.mkdir(exist_ok=True)

    def get(stage: int, architecture: str = "llama") -> Path:
        output = shared / f"zero{stage}-{architecture}" / "run"
        with FileLock(str(shared / f"zero{stage}-{architecture}.lock")):
            if not (output.parent / "done").exists():
                shutil.rmtree(output.parent, ignore_errors=True)
                output.parent.mkdir()
                train_with_deepspeed(tiny_model_store(architecture, "safetensors"), stage, output)
                (output.parent / "done").touch()
        return output

    return get


def train_with_deepspeed(base: Path, stage: int, output: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        str(REPO / "tests/helpers/train_with_deepspeed.py"), str(base), str(stage), str(output),
    ]  # fmt: skip
    environment = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Its own process group, killed whole on a timeout: killing the launcher alone would leave both ranks running.
    launcher = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, start_new_session=True
    )
    try:
        _, stderr = launcher.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        _, stderr = launcher.communicate()
        raise AssertionError(f"DeepSpeed training did not end within 900 s:\n{stderr[-4000:]}") from None
    assert launcher.returncode == 0, stderr[-4000:]


def pytest_collection_modifyitems(items):
    """SLURM tests first, then the files that take minutes (the longest first, by their `long(seconds=)`), the
    other integration tests, the unit tests (each in file order): the two workers take whole files as they get
    free, so the longest start first and the short ones fill in at the end."""
    order = {"slurm": 0, "long": 1, "integration": 2}

    def rank(item) -> tuple[int, float]:
        group = min((order[m.name] for m in item.iter_markers() if m.name in order), default=3)
        long = item.get_closest_marker("long")
        return group, -(long.kwargs.get("seconds", 0) if long else 0)

    items.sort(key=rank)
