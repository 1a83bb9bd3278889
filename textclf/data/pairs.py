"""Pairs of training rows for contrastive few-shot training (``train.recipe = "few-shot"``).

A sentence encoder learns the task's notion of similarity from pairs: two rows with the same label should embed
close together (target cosine 1), two rows with different labels far apart (target 0). A few dozen labelled rows
give thousands of pairs, which is why this works with 8 examples per class (SetFit, Tunstall et al. 2022).

:class:`PairBatches` draws, for every epoch, ``pairs_per_row`` same-label and as many different-label partners for
each training row, so every row anchors pairs, the two kinds are exactly balanced, and the epoch is a pure function of
``(seed, epoch)`` (a resumed run rebuilds the same list and skips what it has done). A batch of ``B`` pairs is one
list of ``2B`` row indices: the ``B`` anchors, then their ``B`` partners in the same order. The ordinary dataset and
collate function serve it, and the loss splits the batch in halves (:mod:`textclf.train.objectives`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .collate import _shard

_STREAM = 0x5E7F17  # keeps the pair draws apart from the other samplers' streams of the same (seed, epoch)


class PairBatches:
    """An epoch's batches of contrastive pairs.

    Args:
        labels: the class id of every training row (single-label data).
        batch_size: pairs per batch (a batch holds twice as many rows).
        pairs_per_row: same-label partners drawn per row and epoch; as many different-label partners are drawn.
        seed: with the epoch, fixes the draw.
        rank, world_size: this process's share under distributed training (every ``world_size``-th batch).
    """

    def __init__(self, labels: Sequence[int], batch_size: int, pairs_per_row: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.labels = np.asarray(labels)
        if self.labels.ndim != 1:
            raise ConfigError("train.recipe: few-shot training pairs rows of one label each; multi-label data is not "
                              "supported (use --recipe fine-tune)")
        classes, counts = np.unique(self.labels, return_counts=True)
        if len(classes) < 2:
            raise ConfigError("train.recipe: few-shot training needs at least 2 classes in the training rows")
        self.batch_size, self.pairs_per_row, self.seed = batch_size, pairs_per_row, seed
        self.rank, self.world_size = rank, world_size
        # Rows grouped by class: class c holds by_class[start[c] : start[c] + count[c]].
        self.by_class = np.argsort(self.labels, kind="stable")
        self.count = np.zeros(int(classes.max()) + 1, dtype=np.int64)
        self.count[classes] = counts
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        self.position = np.empty(len(self.labels), dtype=np.int64)  # where each row sits within its class
        self.position[self.by_class] = np.arange(len(self.labels)) - self.start[self.labels[self.by_class]]

    def epoch_pairs(self, epoch: int) -> np.ndarray:
        """``[P, 2]`` row pairs of the epoch in training order: ``P = 2 x pairs_per_row x rows``, half of them
        same-label."""
        rng = np.random.default_rng([self.seed, epoch, _STREAM])
        rows = np.arange(len(self.labels))
        anchors = np.tile(rows, self.pairs_per_row)
        own_class = self.labels[anchors]
        n = self.count[own_class]
        # A same-label partner other than the row itself: skip 1..n-1 places ahead within its class. The only row of
        # its class is its own partner: a second pass under other dropout masks, the positive pair of SimCSE (Gao et
        # al., 2021), so a class an annotator has labelled once still anchors same-label pairs.
        skip = 1 + (rng.random(len(anchors)) * (n - 1)).astype(np.int64)
        same = self.by_class[self.start[own_class] + (self.position[anchors] + skip) % n]
        # A different-label partner, uniform over the rows of the other classes: index v of the rows outside the
        # anchor's class block.
        v = (rng.random(len(anchors)) * (len(rows) - n)).astype(np.int64)
        other = self.by_class[np.where(v < self.start[own_class], v, v + n)]
        pairs = np.concatenate([np.stack([anchors, same], 1), np.stack([anchors, other], 1)])
        return pairs[rng.permutation(len(pairs))]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches, each ``anchors + partners`` as one list of row indices."""
        pairs = self.epoch_pairs(epoch)
        batches = [pairs[i : i + self.batch_size] for i in range(0, len(pairs), self.batch_size)]
        return _shard([np.concatenate([b[:, 0], b[:, 1]]).tolist() for b in batches], self.rank, self.world_size,
                      True)

