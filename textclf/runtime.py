"""Where and how tensors run: device, precision, seeding, and the distributed process group.

Everything precision-related that the training loop needs is resolved here once, into a :class:`Runtime`,
so the loop itself stays a handful of visible lines (autocast context, ``GradScaler(enabled=fp16)``).
The distributed fields are read from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); a plain ``python`` run is a world of one.
"""

from __future__ import annotations

import contextlib
import os
import random
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
        """Tensor cores (and AMX tiles) work on multiples of 8; pad batches to that under mixed precision."""
        return 8 if self.amp_dtype is not None else None


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 autocast is really faster."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:  # not Linux: be conservative
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
        return "bf16" if cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; use bf16 (or auto) on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: this GPU has no bf16 support; use fp16 (or auto)")
    return precision


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as set by torchrun; (0, 1, 0) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Resolve device and precision, and join the process group when launched by torchrun."""
    rank, world_size, local_rank = distributed_env()
    resolved_device = resolve_device(device, local_rank)
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if resolved_device.type == "cuda" else "gloo"
        if resolved_device.type == "cuda":
            torch.cuda.set_device(resolved_device)
        torch.distributed.init_process_group(backend=backend)
    return Runtime(resolved_device, resolve_precision(precision, resolved_device), rank, world_size, local_rank)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so the same seed gives the same weights on CPU."""
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
