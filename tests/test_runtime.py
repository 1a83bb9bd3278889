"""Tests for textclf.runtime: precision resolution and batch padding per device."""

from __future__ import annotations

import pytest
import torch

from textclf import runtime
from textclf.runtime import Runtime, resolve_precision


def test_mixed_precision_pads_to_multiples_of_8_on_gpus_only():
    assert Runtime(torch.device("cuda", 0), "bf16").pad_to_multiple_of == 8
    assert Runtime(torch.device("cuda", 0), "fp32").pad_to_multiple_of is None
    assert Runtime(torch.device("cpu"), "bf16").pad_to_multiple_of is None  # CPU step time follows padded tokens


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="use precision auto or fp32"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_bf16_on_a_cpu_with_native_bf16_is_silent(monkeypatch, recwarn):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
