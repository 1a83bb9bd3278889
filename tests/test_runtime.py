"""Tests for textclf.runtime: precision resolution and batch padding per device."""

from __future__ import annotations

import multiprocessing
import os
import socket

import pytest
import torch

from textclf import runtime
from textclf.runtime import Runtime, resolve_precision


@pytest.fixture(autouse=True)
def _fresh_probe():
    # the CPU's bf16 decision is cached per process: each test decides afresh and leaves no decision behind
    runtime.cpu_bf16_pays_off.cache_clear()
    yield
    runtime.cpu_bf16_pays_off.cache_clear()


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
    monkeypatch.setattr(runtime, "bf16_matmul_speedup", lambda: 4.5)  # an AMD EPYC with AVX512-BF16
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize(("speedup", "chosen"), [(0.58, "fp32"), (1.2, "fp32"), (1.5, "bf16"), (4.5, "bf16")])
def test_auto_takes_bf16_only_where_it_measures_faster(monkeypatch, speedup, chosen):
    # 0.58: an Intel Xeon whose hypervisor shows AVX512-BF16 but not AMX, where bf16 trained 35% slower
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(runtime, "bf16_matmul_speedup", lambda: speedup)
    assert resolve_precision("auto", torch.device("cpu")) == chosen
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for by name: kept


def test_the_probe_is_not_run_without_the_cpu_flag(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(runtime, "bf16_matmul_speedup", lambda: pytest.fail("timed bf16 on a CPU that emulates it"))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_the_matmul_probe_measures_a_ratio():
    speedup = runtime.bf16_matmul_speedup(reps=2)
    assert 0 < speedup < 1000


def _rank_resolves(rank: int, port: int, queue) -> None:
    # rank 0 measures bf16 4.5x faster, rank 1 (sharing the cores) 0.9x: they must still agree
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    runtime.cpu_supports_bf16 = lambda: True
    runtime.bf16_matmul_speedup = lambda: 4.5 if rank == 0 else 0.9
    runtime.cpu_bf16_pays_off.cache_clear()
    queue.put((rank, runtime.setup_runtime("cpu", "auto").precision))
    torch.distributed.destroy_process_group()


def test_ranks_take_rank_0s_precision():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    ranks = [context.Process(target=_rank_resolves, args=(rank, port, queue)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    chosen = dict(queue.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
    assert chosen == {0: "bf16", 1: "bf16"}
