"""Class-balanced and class-weighted training batches, drawn as a pure function of (seed, epoch).

``TrainConfig.sampler = "balanced"`` draws each epoch's rows with replacement, row ``i`` with probability
proportional to ``1 / count(class of i)``, so every class is drawn about equally often; ``"weighted"`` uses
``1 / sqrt(count)``, a milder correction that keeps more of the natural distribution. For multi-label rows the
rarest of a row's labels sets its weight. An epoch has as many draws as the training set has rows.

Like the samplers in :mod:`textclf.data.collate`, :class:`WeightedBatches` returns a whole epoch as a list of index
lists, computed from ``(seed, epoch)`` alone, so a resumed run rebuilds the same epoch and skips the batches it
already ran, and ranks shard the same list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .collate import (
    _generator,
    _shard,
    _shuffle_longest_first,
    _sorted_megabatches,
    length_strata,
    training_batches,
)


def row_weights(labels: np.ndarray, num_labels: int, kind: str) -> np.ndarray:
    """Sampling weight of every training row (unnormalised).

    Args:
        labels: class ids ``[N]``, or multi-hot ``[N, C]`` for multi-label data.
        num_labels: ``C``.
        kind: ``"balanced"`` (``1 / count``) or ``"weighted"`` (``1 / sqrt(count)``).
    """
    if kind not in ("balanced", "weighted"):
        raise ConfigError(f"train.sampler: expected 'balanced' or 'weighted', got {kind!r}")
    labels = np.asarray(labels)
    power = 1.0 if kind == "balanced" else 0.5
    if labels.ndim == 2:  # multi-label: the rarest label of each row sets its weight
        counts = labels.sum(0).astype(np.float64)
        per_label = np.divide(1.0, counts ** power, out=np.zeros(num_labels), where=counts > 0)
        weights = (labels > 0.5).astype(np.float64) * per_label[None, :]
        weights = weights.max(1)
        # rows without any label still get drawn, as often as the most common label's rows
        return np.where(weights > 0, weights, per_label[counts > 0].min() if (counts > 0).any() else 1.0)
    counts = np.bincount(labels.astype(np.int64), minlength=num_labels).astype(np.float64)
    return 1.0 / counts[labels.astype(np.int64)] ** power


class WeightedBatches:
    """Batches of rows drawn with replacement in proportion to ``weights``.

    Args:
        weights: one non-negative weight per row (see :func:`row_weights`).
        batch_size: rows per batch.
        seed: with the epoch, fixes the draw.
        lengths: token counts per row; when given, the drawn rows are length-grouped as in
            :class:`~textclf.data.collate.LengthGroupedBatches` (less padding).
        strata: class id per row (:func:`~textclf.data.collate.length_strata`); length grouping then keeps each batch's
            class mix (as in :class:`~textclf.data.collate.LengthGroupedBatches`).
    """

    def __init__(self, weights: Sequence[float], batch_size: int, seed: int = 0, lengths: Sequence[int] | None = None,
                 group_factor: int = 50, rank: int = 0, world_size: int = 1, strata: Sequence[int] | None = None):
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if len(self.weights) == 0 or not bool((self.weights >= 0).all()) or float(self.weights.sum()) <= 0:
            raise ConfigError("train.sampler: the sampling weights must be non-negative and not all zero")
        self.batch_size, self.seed, self.group_factor = batch_size, seed, group_factor
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.rank, self.world_size = rank, world_size
        self.strata = None if strata is None else np.asarray(strata)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        generator = _generator(self.seed, epoch)
        order = torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).numpy()
        if self.lengths is None:
            batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        else:
            batches = [chunk[i : i + self.batch_size].tolist()
                       for chunk in _sorted_megabatches(order, self.lengths, self.batch_size * self.group_factor,
                                                        self.strata)
                       for i in range(0, len(chunk), self.batch_size)]
            batches = _shuffle_longest_first(batches, self.lengths, generator)
        return _shard(batches, self.rank, self.world_size, True)


def training_sampler(labels: np.ndarray, lengths: np.ndarray, num_labels: int, config, rank: int = 0,
                     world_size: int = 1, stratify: bool = True):
    """The batches of a fine-tuning epoch for a :class:`~textclf.config.TrainConfig`: random, length-grouped or
    token-budget batches (``train.sampler = "random"``), or class-balanced / class-weighted draws.

    Length grouping is stratified by class when ``stratify``: every batch keeps the class mix (docs/benchmarks.md).
    """
    strata = length_strata(labels) if stratify else None
    if config.sampler != "random":
        weights = row_weights(labels, num_labels, config.sampler)
        return WeightedBatches(weights, config.batch_size, config.seed, lengths if config.group_by_length else None,
                               rank=rank, world_size=world_size, strata=strata)
    return training_batches(lengths, config.batch_size, config.seed, config.max_tokens, config.group_by_length, rank,
                            world_size, strata)
