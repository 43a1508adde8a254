"""A full disk or a read-only folder: one line naming the path and the cause, and nothing half-written.

The tests run as root, which ignores file modes, so the disk is simulated: the lowest OS call that writes or
creates (`os.write`, `os.open`, `Path.mkdir`) raises what the kernel would.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest


def assert_one_line(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def nothing_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def model(tiny_model) -> Path:
    """A tiny model, built before the disk is made to fail (ask for it first)."""
    return tiny_model("llama")


@pytest.fixture
def full_disk(monkeypatch):
    """Every os.write fails as on a full disk."""

    def write(descriptor, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)


@pytest.fixture
def read_only(monkeypatch, tmp_path) -> Path:
    """A folder in which nothing can be created (os.open and Path.mkdir fail as for a read-only folder)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    real_open, real_mkdir = os.open, Path.mkdir

    def refuse(path) -> None:
        if Path(path).is_relative_to(folder) and Path(path) != folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(self, *args, **kwargs):
        refuse(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    return folder


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # copied file to file, and cast through a buffer
def test_consolidate_on_a_full_disk(dtype, model, run_cli, tmp_path, full_disk):
    result = run_cli("consolidate", "--input", model, "--output", tmp_path / "out", "--dtype", dtype)
    assert_one_line(result, f"{tmp_path / 'out'}: No space left on device (errno 28); free space and rerun")
    assert nothing_left(tmp_path) == ["llama-safetensors-float32"]


def test_make_tiny_model_on_a_full_disk(run_cli, tmp_path, full_disk):
    result = run_cli("make-tiny-model", "--output", tmp_path / "tiny")
    assert_one_line(result, f"{tmp_path / 'tiny'}: No space left on device (errno 28)", "free space")
    assert nothing_left(tmp_path) == []


def test_consolidate_into_a_read_only_folder(model, run_cli, read_only):
    result = run_cli("consolidate", "--input", model, "--output", read_only / "out")
    assert_one_line(result, f"{read_only / 'out'}: Permission denied (errno 13)", "make it writable")
    assert nothing_left(read_only) == []


def test_make_tiny_dataset_in_a_read_only_folder(run_cli, read_only):
    result = run_cli("make-tiny-dataset", "--output", read_only / "data")
    assert_one_line(result, f"{read_only / 'data'}: Permission denied (errno 13)", "make it writable")
    assert nothing_left(read_only) == []


def test_verify_report_into_a_read_only_folder(model, run_cli, read_only):
    result = run_cli("verify", model, "--report", read_only / "report.json")
    assert_one_line(result, f"{read_only / 'report.json'}: Permission denied (errno 13)", "make it writable")
    assert nothing_left(read_only) == []


def test_verify_report_leaves_no_json_when_its_markdown_cannot_be_written(model, run_cli, tmp_path, read_only):
    report = tmp_path / "report.json"
    result = run_cli("verify", model, "--report", report, "--markdown", read_only / "report.md")
    assert_one_line(result, f"{read_only / 'report.md'}: Permission denied (errno 13)")
    assert not report.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
