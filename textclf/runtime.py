"""Where and how tensors run: device, precision, seeding, and the distributed process group.

Everything precision-related that the training loop needs is resolved here once, into a :class:`Runtime`,
so the loop itself stays a handful of visible lines (autocast context, ``GradScaler(enabled=fp16)``).
The distributed fields are read from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); a plain ``python`` run is a world of one and never touches ``torch.distributed``.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import hashlib
import math
import os
import random
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """The resolved device, precision and process topology of one run."""

    device: torch.device
    # "fp32", "bf16" or "fp16": what autocast computes in (weights always stay fp32).
    precision: str
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """The mixed-precision context for forward passes (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling is needed only for fp16, whose range is too small for small gradients."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @property
    def pad_to_multiple_of(self) -> int | None:
        """Tensor cores work on multiples of 8: pad GPU batches to that under mixed precision.

        Not on CPU: there a step's time follows the padded token count (MiniLM, batch 32, bf16: 95 ms at 13
        tokens against 105 ms at 16), so padding to a multiple of 8 only adds work.
        """
        return 8 if self.amp_dtype is not None and self.device.type == "cuda" else None


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 autocast is really faster."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:  # not Linux: be conservative
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# bf16 must beat fp32 matmuls by this factor to be chosen: autocast's casts and the fp32 optimizer take back part of
# the gain, so a training step gains less than its matmuls do (AMD EPYC with AVX512-BF16: 4.5x on matmuls).
BF16_MIN_SPEEDUP = 1.5


@lru_cache(maxsize=1)
def cpu_bf16_pays_off() -> bool:
    """True when bf16 autocast will make this CPU faster, measured once per process.

    The cpuinfo flag is not enough: an Intel Xeon (model 207) whose hypervisor shows AVX512-BF16 but not AMX ran
    bf16 matmuls at 160 GFLOP/s against 276 in fp32, and a MiniLM training step 35% slower in bf16. So where
    the flag is present, time one encoder-sized product in both (0.17 s on that Xeon) and take bf16 only where it wins.
    """
    return cpu_supports_bf16() and bf16_matmul_speedup() >= BF16_MIN_SPEEDUP


def bf16_matmul_speedup(reps: int = 5) -> float:
    """fp32 time over bf16 time for a [1024, 384] x [384, 1536] product (a feed-forward layer of a small encoder),
    the best of ``reps`` interleaved runs each, so a moment of contention does not decide."""
    import time

    generator = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(1024, 384, generator=generator), torch.randn(384, 1536, generator=generator)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    best = {torch.float32: math.inf, torch.bfloat16: math.inf}
    torch.mm(a32, b32), torch.mm(a16, b16)  # first calls pick and build the kernels
    for _ in range(reps):
        for dtype, (a, b) in ((torch.float32, (a32, b32)), (torch.bfloat16, (a16, b16))):
            start = time.perf_counter()
            torch.mm(a, b)
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """Turn "auto" / "cpu" / "cuda" / "cuda:N" into a device, with a clear error for a missing GPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: CUDA was asked for but no GPU is visible; use --device cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """Resolve "auto" and refuse combinations the hardware cannot run."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_bf16_pays_off() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; use bf16 (or auto) on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: this GPU has no bf16 support; use fp16 (or auto)")
    if precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        # It runs, but emulated: bf16 matmuls measured 400x slower than fp32 on an AVX2-only CPU.
        warnings.warn("precision bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX in /proc/cpuinfo) is "
                      "emulated and far slower than fp32; use precision auto or fp32 here", RuntimeWarning,
                      stacklevel=2)
    return precision


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as set by torchrun; (0, 1, 0) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Resolve device and precision, and join the process group when launched by torchrun.

    Under torchrun (``WORLD_SIZE`` > 1) each process takes the GPU of its ``LOCAL_RANK`` and joins the default
    process group: NCCL on CUDA, gloo on CPU. The group is destroyed when the process exits. A world of one
    calls no ``torch.distributed`` function at all.
    """
    rank, world_size, local_rank = distributed_env()
    if world_size > 1 and re.fullmatch(r"cuda:\d+", device):
        raise ConfigError(f"train.device: {device!r} would put every process of this torchrun job on one GPU; use "
                          "--device cuda (or auto): each process takes the GPU numbered by its LOCAL_RANK")
    resolved_device = resolve_device(device, local_rank)
    if world_size > 1 and resolved_device.type == "cuda" and local_rank >= torch.cuda.device_count():
        raise ConfigError(f"torchrun started process LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} "
                          "GPU(s) are visible; use --nproc-per-node <= the number of GPUs of each node")
    if world_size > 1 and not torch.distributed.is_initialized():
        if resolved_device.type == "cuda":
            torch.cuda.set_device(resolved_device)
            torch.distributed.init_process_group(backend="nccl", device_id=resolved_device)
        else:
            torch.distributed.init_process_group(backend="gloo")
        atexit.register(_destroy_process_group)
    chosen = resolve_precision(precision, resolved_device)
    if world_size > 1:
        # auto on a CPU is timed per process: ranks sharing the cores could measure differently, so rank 0 decides
        box = [chosen]
        torch.distributed.broadcast_object_list(box, src=0)
        chosen = box[0]
    return Runtime(resolved_device, chosen, rank, world_size, local_rank)


def _destroy_process_group() -> None:
    # Registered by setup_runtime only when it created the group (a user's own group is theirs to destroy).
    if torch.distributed.is_initialized():
        gc.collect()  # drop what still holds the group (a DDP wrapper in a reference cycle) while Python is alive
        torch.distributed.destroy_process_group()


# ---- collectives the trainer needs beyond DDP's gradient all-reduce (all no-ops in a world of one) ---------------


def on_main_process(runtime: Runtime, fn, *args):
    """Run ``fn(*args)`` on rank 0 only; every rank returns its result, or raises its exception.

    For decisions that read and change the file system (may the output folder be used? which checkpoint is
    resumed?): ranks deciding on their own would race with rank 0's writes, and could disagree.
    """
    if not runtime.distributed:
        return fn(*args)
    box: list = [None]
    error = None
    if runtime.is_main:
        try:
            box[0] = (fn(*args), None)
        except Exception as exc:  # handed to the other ranks, so none of them waits for a rank that gave up
            error = exc
            box[0] = (None, exc if _picklable(exc) else RuntimeError(f"rank 0 failed: {type(exc).__name__}: {exc}"))
    torch.distributed.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    result, remote_error = box[0]
    if remote_error is not None:
        raise remote_error
    return result


def _picklable(obj) -> bool:
    import pickle

    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True


def gather_to_main(runtime: Runtime, obj) -> list | None:
    """Every rank's ``obj`` (picklable), as a list indexed by rank, on rank 0; ``None`` on the other ranks."""
    if not runtime.distributed:
        return [obj]
    gathered = [None] * runtime.world_size if runtime.is_main else None
    torch.distributed.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_module(runtime: Runtime, module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``module``, in place."""
    if not runtime.distributed:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:  # each shared tensor once
            torch.distributed.broadcast(tensor, src=0)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) so the same seed gives the same weights on CPU.

    ``rank`` > 0 gives a distributed process its own streams (its own dropout masks), derived from
    ``(seed, rank)``; rank 0 uses ``seed`` itself, exactly as a single process does.
    """
    if rank:
        seed = int.from_bytes(hashlib.sha256(f"textclf:{seed}:{rank}".encode()).digest()[:4], "little")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG state a training step can touch, for exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
