"""Optimizer and learning-rate schedule.

* :func:`parameter_groups` splits parameters into "decay" and "no decay" (biases and LayerNorm weights
  are never decayed: decaying a normalisation gain towards 0 only hurts).
* :func:`lr_factor` is a pure function of the optimizer step, so the schedule is trivially resumable
  and testable: linear warmup from 0, then linear or cosine decay to 0 (or constant).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights of linear/embedding layers decay, biases and norm weights do not."""
    decay, no_decay = [], []
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, norm_types) or "norm" in type(module).__name__.lower():
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith("bias") or id(param) in no_decay_ids or param.ndim < 2:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_adamw(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`, with the fused kernel: one pass over all parameters per step.

    On CPU the default per-parameter loop costs a large share of a small model's step (MiniLM's 12M-entry
    word embedding is updated every step); the fused kernel exists for CPU and CUDA alike.
    """
    groups = [g for g in parameter_groups(model, weight_decay) if g["params"]]
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "linear") -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Warmup goes linearly from 0 at step 0 to 1 at ``warmup_steps``; then "linear" decays to 0 at
    ``total_steps``, "cosine" follows half a cosine to 0, and "constant" stays at 1.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, schedule: str
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over :func:`lr_factor`, stepped once per optimizer step."""
    warmup_steps = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, schedule)
    )
