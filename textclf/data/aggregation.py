"""Combining the outputs of a text's windows into one output per text: the maths shared by the model
(:class:`~textclf.model.classifier.TextClassifier` aggregates its own windows) and the input strategy
(:mod:`textclf.data.windows` aggregates the window logits of exported backends the same way).

Rows are the texts' windows in order: ``num_windows[0]`` rows of text 0, then text 1's, ...
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def _window_index(num_windows: torch.Tensor, total: int) -> torch.Tensor:
    """``[N]`` windows per text -> ``[W]`` text of each window; ``output_size`` spares a device sync."""
    texts = torch.arange(len(num_windows), device=num_windows.device)
    return torch.repeat_interleave(texts, num_windows.to(texts.device), output_size=total)


def aggregate_window_logits(logits: torch.Tensor, num_windows: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """``[W, C]`` window logits -> ``[N, C]`` text logits (``how``: ``"mean"`` or ``"max"``), in float32.

    Rows are the texts' windows in order (``num_windows[0]`` rows of text 0, then text 1's...).
    """
    values = logits.float()
    index = _window_index(num_windows, len(values))
    if how == "mean":
        sums = values.new_zeros(len(num_windows), values.shape[1]).index_add_(0, index, values)
        return sums / num_windows.to(values.device, values.dtype).clamp(min=1).unsqueeze(1)
    if how == "max":
        out = values.new_full((len(num_windows), values.shape[1]), -math.inf)
        return out.scatter_reduce(0, index.unsqueeze(1).expand_as(values), values, "amax", include_self=True)
    raise ConfigError(f"train.window_aggregation: {how!r} does not combine logits; expected 'mean' or 'max'")


def attention_over_windows(pooled: torch.Tensor, scores: torch.Tensor, num_windows: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores`` ``[W]`` over each text's windows, then the weighted sum of ``pooled`` ``[W, H]``.

    Returns ``[N, H]`` in float32; a text with one window gets exactly its window's vector.
    """
    scores, values = scores.float(), pooled.float()
    n, index = len(num_windows), _window_index(num_windows, len(values))
    top = scores.new_full((n,), -math.inf).scatter_reduce(0, index, scores, "amax", include_self=True)
    weights = torch.exp(scores - top[index])  # shifted by each text's max: no overflow
    weights = weights / weights.new_zeros(n).index_add_(0, index, weights)[index]
    return values.new_zeros(n, values.shape[1]).index_add_(0, index, weights.unsqueeze(1) * values)
