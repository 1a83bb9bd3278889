"""Batching: dynamic padding, and batch samplers whose order is a pure function of (seed, epoch).

Every sampler here returns a whole epoch's batches as a list of index lists. That makes three things
easy and exact: resuming mid-epoch (rebuild the list, skip the batches already done), sharding across
distributed ranks (each rank takes every ``world_size``-th batch), and testing (a list can be inspected).

* :class:`RandomBatches` -- shuffled rows, fixed batch size.
* :class:`LengthGroupedBatches` -- shuffled "mega-batches" sorted by length and cut into batches of
  similar length, so little compute is spent on padding; the batch order is shuffled again. Given the
  labels, the sort is stratified: each batch takes the same length quantile of every class, so batches keep
  the class mix of the data (a plain length sort makes batches class-homogeneous wherever length and class
  correlate, and that costs accuracy on small data: docs/benchmarks.md, "Length grouping and accuracy").
* :class:`TokenBudgetBatches` -- like length grouping, but each batch is filled up to a token budget
  (rows x longest row), so short texts travel in big batches and long ones in small batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def make_collate(pad_token_id: int, pad_to_multiple_of: int | None = None):
    """Build a collate function that pads a list of dataset items to the batch's longest row.

    Args:
        pad_token_id: id written into padded positions (the attention mask hides them).
        pad_to_multiple_of: round the padded length up to a multiple of this (8 under mixed precision,
            where tensor cores and AMX tiles work in blocks of 8).

    Returns:
        ``collate(items) -> {"input_ids": [B, T] long, "attention_mask": [B, T] long, "labels": [B] or [B, L]}``,
        with any other per-row field of the items stacked the same way.
    """

    def collate(items: Sequence[dict]) -> dict[str, torch.Tensor]:
        rows = [torch.as_tensor(item["input_ids"], dtype=torch.long) for item in items]
        lengths = torch.tensor([len(row) for row in rows])
        width = int(lengths.max())
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
        batch = {
            "input_ids": input_ids,
            "attention_mask": (torch.arange(width)[None, :] < lengths[:, None]).long(),
        }
        for name in items[0].keys() - {"input_ids"}:  # labels, and any per-row columns of the dataset
            batch[name] = torch.stack([torch.as_tensor(item[name]) for item in items])
        return batch

    return collate


def _shard(batches: list[list[int]], rank: int, world_size: int, even: bool) -> list[list[int]]:
    """Every ``world_size``-th batch for this rank.

    For training (``even=True``) every rank must run the same number of steps, or DDP would wait forever
    for the rank that finished early: the list is wrapped around until it divides evenly (cycling, so even
    fewer batches than ranks give every rank one).

    Batch ``k`` of rank ``r`` is batch ``k * world_size + r`` of the epoch, so with equal-size batches the
    ranks' ``k``-th batches together are exactly one ``world_size``-times-larger batch of a single process.
    """
    if world_size == 1:
        return batches
    if even and batches and len(batches) % world_size:
        missing = world_size - len(batches) % world_size
        batches = batches + [batches[i % len(batches)] for i in range(missing)]
    return batches[rank::world_size]


class RandomBatches:
    """Shuffled (or sequential) rows in batches of ``batch_size``."""

    def __init__(self, num_rows: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        self.num_rows, self.batch_size, self.seed, self.shuffle = num_rows, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.num_rows, generator=_generator(self.seed, epoch)).tolist()
        else:
            order = list(range(self.num_rows))
        batches = [order[i : i + self.batch_size] for i in range(0, self.num_rows, self.batch_size)]
        return _shard(batches, self.rank, self.world_size, even=self.shuffle)


class LengthGroupedBatches:
    """Batches of rows with similar length, in a shuffled order.

    Rows are shuffled, cut into mega-batches of ``batch_size * group_factor`` rows, each mega-batch is
    sorted by length and cut into batches. The longest batch goes first so an out-of-memory error shows
    up on step one rather than hours in.

    Args:
        lengths: token count of every row.
        batch_size: rows per batch.
        seed: with the epoch, fixes the order.
        group_factor: batches per mega-batch.
        strata: one class id per row (see :func:`length_strata`); when given, each mega-batch is sorted by a
            row's length *rank within its class* rather than by its length, so every batch holds the j-th length
            quantile of each class: batches keep the class mix and most of the padding saving.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_factor: int = 50,
                 rank: int = 0, world_size: int = 1, strata: Sequence[int] | None = None):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.group_factor = batch_size, seed, group_factor
        self.rank, self.world_size = rank, world_size
        self.strata = None if strata is None else np.asarray(strata)
        if self.strata is not None and len(self.strata) != len(self.lengths):
            raise ValueError(f"strata: {len(self.strata)} values for {len(self.lengths)} rows")

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        generator = _generator(self.seed, epoch)
        order = torch.randperm(len(self.lengths), generator=generator).numpy()
        pools = _sorted_megabatches(order, self.lengths, self.batch_size * self.group_factor, self.strata)
        batches = [chunk[i : i + self.batch_size].tolist() for chunk in pools
                   for i in range(0, len(chunk), self.batch_size)]
        return _shard(_shuffle_longest_first(batches, self.lengths, generator), self.rank, self.world_size, True)


def length_strata(labels: np.ndarray | None) -> np.ndarray | None:
    """The class that stratifies length grouping, per row: the label id, or for multi-hot rows ``[N, C]`` the
    row's rarest label (-1 for a row without labels). None for unlabelled data (plain length sort)."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    positive = labels > 0.5
    counts = positive.sum(0)
    rarity = np.where(positive, counts[None, :], np.iinfo(np.int64).max)
    return np.where(positive.any(1), rarity.argmin(1), -1)


class TokenBudgetBatches:
    """Length-grouped batches filled up to ``max_tokens`` padded tokens (rows x longest row) each.

    Args:
        lengths: token count of every row.
        max_tokens: padded-token budget of one batch; a single row longer than this gets a batch alone.
        max_rows: upper bound on rows per batch (keeps very short texts from making giant batches).
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int = 0, max_rows: int | None = None,
                 group_factor: int = 50, rank: int = 0, world_size: int = 1):
        self.lengths = np.asarray(lengths)
        self.max_tokens, self.max_rows, self.seed = max_tokens, max_rows, seed
        self.group_factor, self.rank, self.world_size = group_factor, rank, world_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        generator = _generator(self.seed, epoch)
        order = torch.randperm(len(self.lengths), generator=generator).numpy()
        mega_rows = max(1, self.max_tokens // max(1, int(np.median(self.lengths)))) * self.group_factor
        batches: list[list[int]] = []
        for chunk in _sorted_megabatches(order, self.lengths, mega_rows):
            current: list[int] = []
            for index in chunk.tolist():  # sorted longest first, so the first row sets the batch width
                width = int(self.lengths[current[0]]) if current else int(self.lengths[index])
                too_many = self.max_rows is not None and len(current) >= self.max_rows
                if current and ((len(current) + 1) * width > self.max_tokens or too_many):
                    batches.append(current)
                    current = []
                current.append(index)
            if current:
                batches.append(current)
        return _shard(_shuffle_longest_first(batches, self.lengths, generator), self.rank, self.world_size, True)


def training_batches(lengths: Sequence[int], batch_size: int, seed: int, max_tokens: int | None = None,
                     group_by_length: bool = True, rank: int = 0, world_size: int = 1,
                     strata: Sequence[int] | None = None):
    """The training sampler a recipe asks for: token-budget batches when ``max_tokens`` is set, else length-grouped
    (stratified by ``strata`` when given) or plain random batches of ``batch_size`` rows. Shared by fine-tuning and
    MLM pretraining."""
    if max_tokens is not None:
        return TokenBudgetBatches(lengths, max_tokens, seed, rank=rank, world_size=world_size)
    if group_by_length:
        return LengthGroupedBatches(lengths, batch_size, seed, rank=rank, world_size=world_size, strata=strata)
    return RandomBatches(len(lengths), batch_size, seed, rank=rank, world_size=world_size)


def count_optimizer_steps(batches_per_epoch: int, grad_accum: int, epochs: float, max_steps: int | None) -> int:
    """Optimizer steps of a run: ``max_steps`` when set, else ``epochs`` passes of accumulation windows."""
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(epochs * math.ceil(batches_per_epoch / grad_accum)))


def sequential_shard(num_rows: int, batch_size: int, rank: int = 0, world_size: int = 1,
                     lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Evaluation batches: each rank gets exactly its own rows (no padding rows, so no row counts twice).

    With ``lengths`` the rows are sorted by length first, which makes evaluation batches nearly pad-free;
    callers that need input order put results back by index.
    """
    rows = np.arange(rank, num_rows, world_size)
    if lengths is not None:
        rows = rows[np.argsort(-np.asarray(lengths)[rows], kind="stable")]
    return [rows[i : i + batch_size].tolist() for i in range(0, len(rows), batch_size)]


def _generator(seed: int, epoch: int) -> torch.Generator:
    # One independent stream per (seed, epoch): the order of epoch e never depends on what ran before it.
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _sorted_megabatches(order: np.ndarray, lengths: np.ndarray, size: int, strata: np.ndarray | None = None):
    """Consecutive chunks of ``order``, each sorted longest first; with ``strata``, by the length quantile of each
    row within its stratum, so consecutive rows (one batch) come from every stratum in proportion."""
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        if strata is None:
            yield chunk[np.argsort(-lengths[chunk], kind="stable")]
            continue
        keys = strata[chunk]
        by_stratum = np.lexsort((-lengths[chunk], keys))  # stratum by stratum, longest first within each
        sorted_keys = keys[by_stratum]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, len(chunk)])
        rank_in_stratum = np.arange(len(chunk)) - np.repeat(starts, sizes)
        quantile = np.empty(len(chunk))
        quantile[by_stratum] = (rank_in_stratum + 0.5) / np.repeat(sizes, sizes)
        yield chunk[np.argsort(quantile, kind="stable")]  # ties keep the shuffled order


def _shuffle_longest_first(batches: list[list[int]], lengths: np.ndarray, generator: torch.Generator):
    if not batches:
        return batches
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    cost = [len(b) * int(lengths[b].max()) for b in batches]
    first = int(np.argmax(cost))
    batches[0], batches[first] = batches[first], batches[0]
    return batches
