"""Tests for textclf.data.collate: dynamic padding, the batch samplers and rank sharding, checked by counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textclf.data.collate import (
    LengthGroupedBatches,
    RandomBatches,
    TokenBudgetBatches,
    length_strata,
    make_collate,
    sequential_shard,
)

PAD = 0


def _items(lengths, labels=None):
    items = []
    for i, n in enumerate(lengths):
        item = {"input_ids": torch.arange(1, n + 1) + 100 * i}  # no id is the pad id
        if labels is not None:
            item["labels"] = labels[i]
        items.append(item)
    return items


# ---- collate -------------------------------------------------------------------------------------------------


def test_pads_to_the_longest_row_of_the_batch():
    collate = make_collate(PAD)
    lengths = [3, 7, 5]
    batch = collate(_items(lengths, labels=[torch.tensor(2), torch.tensor(0), torch.tensor(1)]))
    assert batch["input_ids"].shape == (3, 7)
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    for i, n in enumerate(lengths):
        assert torch.equal(batch["input_ids"][i, :n], torch.arange(1, n + 1) + 100 * i)
        assert (batch["input_ids"][i, n:] == PAD).all()
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (7 - n)
    assert batch["labels"].tolist() == [2, 0, 1]
    assert batch["labels"].dtype == torch.long


def test_pad_id_is_written_into_padding():
    batch = make_collate(pad_token_id=99)(_items([1, 4]))
    assert batch["input_ids"][0].tolist() == [1, 99, 99, 99]
    assert "labels" not in batch  # unlabelled items make unlabelled batches


@pytest.mark.parametrize(("lengths", "width"), [([3, 7, 5], 8), ([8, 2], 8), ([9], 16), ([1, 1], 8), ([17, 3], 24)])
def test_pad_to_multiple_of_8(lengths, width):
    batch = make_collate(PAD, pad_to_multiple_of=8)(_items(lengths))
    assert batch["input_ids"].shape == (len(lengths), width)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["attention_mask"].shape == (len(lengths), width)


def test_multi_hot_labels_are_stacked():
    labels = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])]
    batch = make_collate(PAD)(_items([2, 3, 1], labels=labels))
    assert batch["labels"].shape == (3, 3)
    assert batch["labels"].dtype == torch.float32
    assert torch.equal(batch["labels"], torch.stack(labels))


def test_collate_of_real_dataset_items(tiny_data, tiny_model_dir):
    from textclf.data.readers import TextClassificationDataset
    from textclf.model.classifier import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    dataset = TextClassificationDataset.from_split(tiny_data.dev, tokenizer, 32, tiny_data.label_map)
    rows = [0, 5, 9, 17]
    batch = make_collate(tokenizer.pad_token_id)([dataset[i] for i in rows])
    assert batch["input_ids"].shape[1] == max(dataset.lengths[rows])
    assert batch["attention_mask"].sum(1).tolist() == [int(dataset.lengths[i]) for i in rows]
    assert batch["labels"].tolist() == [tiny_data.label_map.encode(tiny_data.dev.labels[i]) for i in rows]
    # Re-tokenizing each text alone gives the unpadded part of its row.
    for j, i in enumerate(rows):
        alone = tokenizer(tiny_data.dev.texts[i], truncation=True, max_length=32)["input_ids"]
        assert batch["input_ids"][j, : len(alone)].tolist() == alone


# ---- samplers --------------------------------------------------------------------------------------------------

N = 1003  # not a multiple of any batch size used here
LENGTHS = np.random.default_rng(0).integers(4, 200, size=N)
# Classes that correlate with length, as in TREC (descriptions are long questions, abbreviations short): class 0 is
# mostly long, class 2 mostly short, class 1 is 10% of the rows.
CLASSES = np.where(LENGTHS > 120, 0, 2)
CLASSES[np.random.default_rng(1).random(N) < 0.1] = 1


def _samplers(**shard):
    return {
        "random": RandomBatches(N, 16, seed=3, **shard),
        "length": LengthGroupedBatches(LENGTHS, 16, seed=3, group_factor=8, **shard),
        "stratified": LengthGroupedBatches(LENGTHS, 16, seed=3, group_factor=8, strata=CLASSES, **shard),
        "budget": TokenBudgetBatches(LENGTHS, max_tokens=2048, seed=3, group_factor=8, **shard),
    }


def _padded_tokens(batches, lengths) -> int:
    return sum(len(b) * int(lengths[b].max()) - int(lengths[b].sum()) for b in batches)


@pytest.mark.parametrize("kind", ["random", "length", "stratified", "budget"])
def test_every_row_exactly_once_per_epoch(kind):
    sampler = _samplers()[kind]
    for epoch in (0, 1, 5):
        rows = [i for batch in sampler.epoch_batches(epoch) for i in batch]
        assert sorted(rows) == list(range(N))


@pytest.mark.parametrize("kind", ["random", "length", "stratified", "budget"])
def test_order_is_a_function_of_seed_and_epoch(kind):
    first, again = _samplers()[kind], _samplers()[kind]
    assert first.epoch_batches(2) == again.epoch_batches(2)
    # Asking for epochs out of order changes nothing (no hidden state between epochs).
    again.epoch_batches(7)
    assert first.epoch_batches(1) == again.epoch_batches(1)
    assert first.epoch_batches(0) != first.epoch_batches(1)
    other_seed = {"random": RandomBatches(N, 16, seed=4), "length": LengthGroupedBatches(LENGTHS, 16, seed=4,
                  group_factor=8), "budget": TokenBudgetBatches(LENGTHS, 2048, seed=4, group_factor=8),
                  "stratified": LengthGroupedBatches(LENGTHS, 16, seed=4, group_factor=8, strata=CLASSES)}[kind]
    assert other_seed.epoch_batches(0) != first.epoch_batches(0)


def test_random_batches_sizes_and_no_shuffle():
    batches = RandomBatches(N, 16, seed=0).epoch_batches(0)
    assert [len(b) for b in batches] == [16] * (N // 16) + [N % 16]
    assert RandomBatches(10, 4, shuffle=False).epoch_batches(3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_length_grouping_reduces_padding():
    random_pad = _padded_tokens(RandomBatches(N, 16, seed=3).epoch_batches(0), LENGTHS)
    grouped_batches = LengthGroupedBatches(LENGTHS, 16, seed=3, group_factor=8).epoch_batches(0)
    grouped_pad = _padded_tokens(grouped_batches, LENGTHS)
    # Uniform lengths in [4, 200): random batches of 16 pad ~85 tokens a row; 16 neighbours in a sorted group of 128
    # span ~24 tokens, so ~12 a row.
    assert grouped_pad < 0.25 * random_pad
    assert all(len(b) <= 16 for b in grouped_batches)
    # The most expensive batch comes first, so an out-of-memory error shows up on step one.
    cost = [len(b) * int(LENGTHS[b].max()) for b in grouped_batches]
    assert cost[0] == max(cost)


def _majority_share(batches, classes) -> float:
    return float(np.mean([np.bincount(classes[b]).max() / len(b) for b in batches]))


def test_stratified_grouping_keeps_the_class_mix_and_most_of_the_padding_saving():
    plain = LengthGroupedBatches(LENGTHS, 16, seed=3, group_factor=8).epoch_batches(0)
    stratified = LengthGroupedBatches(LENGTHS, 16, seed=3, group_factor=8, strata=CLASSES).epoch_batches(0)
    shuffled = RandomBatches(N, 16, seed=3).epoch_batches(0)
    # A plain length sort makes batches of one class here (length decides the class); stratified batches are as
    # mixed as shuffled ones (majority class ~0.5 of a batch, as in the data).
    assert _majority_share(plain, CLASSES) > 0.85
    assert _majority_share(stratified, CLASSES) <= _majority_share(shuffled, CLASSES) + 0.02
    # Each full batch of a mega-batch holds every class in proportion: class 0 (~40% of rows) 5-8 rows of 16.
    full = [b for b in stratified if len(b) == 16]
    assert np.median([np.sum(CLASSES[b] == 0) for b in full]) in (6, 7)
    # Padding stays below shuffled batches: lengths within a class still go together. Here length decides the class,
    # the worst case (a batch spans the j-th quantile of long and of short rows: 0.70x the shuffled padding); on
    # real data sets stratified batches pad 1.03-1.16x the real tokens against 1.01-1.05x for a plain sort.
    assert _padded_tokens(stratified, LENGTHS) < 0.75 * _padded_tokens(shuffled, LENGTHS)
    cost = [len(b) * int(LENGTHS[b].max()) for b in stratified]
    assert cost[0] == max(cost)


def test_stratified_grouping_with_one_class_is_the_plain_length_sort():
    plain = LengthGroupedBatches(LENGTHS, 16, seed=3, group_factor=8).epoch_batches(1)
    one_class = LengthGroupedBatches(LENGTHS, 16, seed=3, group_factor=8, strata=np.zeros(N, int)).epoch_batches(1)
    assert [sorted(LENGTHS[b].tolist()) for b in one_class] == [sorted(LENGTHS[b].tolist()) for b in plain]


def test_length_strata_of_single_and_multi_label_rows():
    assert length_strata(None) is None
    assert length_strata(np.array([2, 0, 1])).tolist() == [2, 0, 1]
    multi_hot = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1]], dtype=np.float32)
    # label 0 has 3 rows, 1 and 2 one each: a row goes with its rarest label; a row without labels is -1
    assert length_strata(multi_hot).tolist() == [1, 0, -1, 2]
    with pytest.raises(ValueError, match="strata"):
        LengthGroupedBatches(LENGTHS, 16, strata=CLASSES[:10])


def test_length_grouping_still_shuffles_batches():
    batches = LengthGroupedBatches(LENGTHS, 16, seed=3, group_factor=8).epoch_batches(0)
    widths = [int(LENGTHS[b].max()) for b in batches]
    assert widths[1:] != sorted(widths[1:], reverse=True)  # not simply longest to shortest


@pytest.mark.parametrize("max_rows", [None, 12])
def test_token_budget_respected(max_rows):
    budget = 2048
    lengths = LENGTHS.copy()
    lengths[[5, 77]] = [3000, 2500]  # rows longer than the whole budget
    sampler = TokenBudgetBatches(lengths, max_tokens=budget, seed=1, max_rows=max_rows, group_factor=4)
    batches = sampler.epoch_batches(0)
    assert sorted(i for b in batches for i in b) == list(range(N))
    for batch in batches:
        padded = len(batch) * int(lengths[batch].max())
        assert padded <= budget or len(batch) == 1, (batch, padded)
        if max_rows is not None:
            assert len(batch) <= max_rows
    assert [5] in batches and [77] in batches  # oversize rows travel alone
    # Short rows travel in bigger batches than long rows (medians: the last batch cut from a megabatch may be small).
    short = [len(b) for b in batches if lengths[b].max() < 100]
    long = [len(b) for b in batches if 175 < lengths[b].max() <= budget]
    if max_rows is None:
        assert np.median(short) > 1.5 * np.median(long)
        assert max(short) > 16  # the budget fills with many short rows
    else:
        assert max(short) == max_rows


def test_token_budget_batches_are_reasonably_full():
    budget = 2048
    batches = TokenBudgetBatches(LENGTHS, max_tokens=budget, seed=1, group_factor=8).epoch_batches(0)
    used = sum(len(b) * int(LENGTHS[b].max()) for b in batches)
    # Sorted megabatches are cut when the next row would exceed the budget: on average well over half full.
    assert used / (len(batches) * budget) > 0.7


# ---- rank sharding -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "length", "budget"])
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_sharding_covers_all_batches_with_equal_counts(kind, world_size):
    full = _samplers()[kind].epoch_batches(1)
    per_rank = [_samplers(rank=r, world_size=world_size)[kind].epoch_batches(1) for r in range(world_size)]
    counts = [len(b) for b in per_rank]
    assert len(set(counts)) == 1, counts  # DDP needs the same number of steps on every rank
    assert counts[0] == -(-len(full) // world_size)
    union = {tuple(b) for shard in per_rank for b in shard}
    assert union == {tuple(b) for b in full}
    rows = {i for shard in per_rank for b in shard for i in b}
    assert rows == set(range(N))
    # Wrapping around to even out the counts repeats only as many batches as needed.
    assert sum(counts) - len(full) < world_size


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_sequential_shard_covers_every_row_once(world_size, with_lengths):
    n = 53
    lengths = np.random.default_rng(1).integers(1, 50, size=n) if with_lengths else None
    shards = [sequential_shard(n, 8, rank, world_size, lengths) for rank in range(world_size)]
    rows = [i for shard in shards for batch in shard for i in batch]
    assert sorted(rows) == list(range(n))  # exactly once: no padding rows, nothing counted twice
    for shard in shards:
        assert all(0 < len(b) <= 8 for b in shard)
        if with_lengths:
            flat = [i for b in shard for i in b]
            assert [lengths[i] for i in flat] == sorted((lengths[i] for i in flat), reverse=True)


def test_sequential_shard_without_lengths_keeps_order():
    assert sequential_shard(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert sequential_shard(7, 3, rank=1, world_size=2) == [[1, 3, 5]]
