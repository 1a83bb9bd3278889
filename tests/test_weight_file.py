"""Tests for textclf.model.weight_file: reading safetensors files straight into existing tensors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from textclf.model.weight_file import WeightFileError, read_entries, read_into


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"w32": torch.randn(5, 7, generator=generator), "w16": torch.randn(3, 4, generator=generator).half(),
            "wbf": torch.randn(6, generator=generator).bfloat16(), "ids": torch.arange(9).view(3, 3),
            "flags": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}


def test_every_entry_reads_back_exactly_as_safetensors_reads_it(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_tensors(), str(path))
    entries = read_entries(path)
    targets = {name: torch.full(entry.shape, 7, dtype=entry.dtype) for name, entry in entries.items()}
    read_into(path, entries, targets)
    for name, expected in load_file(str(path)).items():
        assert targets[name].dtype == expected.dtype and torch.equal(targets[name], expected), name


def test_a_target_of_another_dtype_gets_the_entry_cast(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.tensor([1.5, -2.25, 3.0])}, str(path))
    target = torch.zeros(3, dtype=torch.bfloat16)
    read_into(path, read_entries(path), {"w": target})
    assert torch.equal(target, torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16))


def test_truncated_and_damaged_files_are_named_as_such(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_tensors(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    with pytest.raises(WeightFileError, match="truncated"):
        read_entries(path)
    path.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(WeightFileError, match="cannot read its header"):
        read_entries(path)
