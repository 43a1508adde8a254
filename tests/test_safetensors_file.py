"""Our streaming safetensors reader and writer agree with the reference `safetensors` library byte for byte."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from workflow_scripts.errors import DistilleryError
from workflow_scripts.formats.safetensors_file import SafetensorsWriter, TensorSpec, read_header


def sample_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 5, generator=generator),
        "b.weight": torch.randn(4, generator=generator).to(torch.bfloat16),
        "c.bias": torch.randn(2, 2, generator=generator).to(torch.float16),
        "d.index": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "e.mask": torch.tensor([True, False, True]),
        "f.empty": torch.zeros(0, 4),
    }


def test_written_file_loads_with_the_safetensors_library(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "out.safetensors"
    writer = SafetensorsWriter(path, [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()])
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    writer.close()
    loaded = load_file(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)


def test_reader_reads_files_of_the_safetensors_library(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "ref.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    for name, tensor in tensors.items():
        assert torch.equal(header.tensors[name].load(), tensor)


def test_tensor_bytes_copied_from_another_file_need_no_loading(tmp_path):
    tensors = sample_tensors()
    save_file(tensors, tmp_path / "ref.safetensors")
    source = read_header(tmp_path / "ref.safetensors").tensors
    path = tmp_path / "copy.safetensors"
    writer = SafetensorsWriter(path, [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()])
    for name in tensors:
        writer.write(name, source[name].byte_ranges[0])
    writer.close()
    loaded = load_file(path)
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)


def test_writer_refuses_a_tensor_out_of_declared_order(tmp_path):
    writer = SafetensorsWriter(tmp_path / "x.safetensors", [TensorSpec("x", torch.float32, (2,))])
    with pytest.raises(ValueError, match="expected x"):
        writer.write("y", torch.ones(2))
    writer.abort()


def test_truncated_file_is_reported_with_its_name(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(sample_tensors(), path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DistilleryError, match=r"model\.safetensors: file is truncated"):
        read_header(path)


def test_header_that_is_not_json_is_reported(tmp_path):
    path = tmp_path / "model.safetensors"
    garbage = b"{not json at all"
    path.write_bytes(struct.pack("<Q", len(garbage)) + garbage)
    with pytest.raises(DistilleryError, match="header is not JSON"):
        read_header(path)


def test_header_length_beyond_the_file_is_reported(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(DistilleryError, match="does not fit"):
        read_header(path)


def test_overlapping_tensors_are_reported(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    encoded = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(12))
    with pytest.raises(DistilleryError, match="overlap or hole"):
        read_header(path)


def test_shape_that_disagrees_with_offsets_is_reported(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    encoded = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(8))
    with pytest.raises(DistilleryError, match="needs 12"):
        read_header(path)
