"""Long texts as sliding windows: each text becomes 1..k windows of at most ``max_length`` tokens.

With ``TrainConfig(long_texts="windows")`` a text longer than the encoder's window is not cut: its tokens are read
as overlapping windows, each framed with the tokenizer's special tokens like a normal input (``[CLS] ... [SEP]``),
and the model turns the windows of one text into one prediction (:meth:`TextClassifier.aggregate_windows`):

* ``"mean"`` / ``"max"`` -- the mean or element-wise max of the windows' logits;
* ``"attention"`` -- a learned score per window (one linear layer over the pooled vector, zero-initialised so
  training starts from the plain average), softmax over the text's windows, the weighted average of the pooled
  vectors, then the head.

Layout of a window (``capacity = max_length - special tokens``, ``step = capacity - overlap``)::

    text tokens  t0 t1 ... t(n-1)
    window j     prefix + t[j*step : j*step + capacity] + suffix,   j = 0 .. k-1
    k            1 if n <= capacity else 1 + ceil((n - capacity) / step), capped at max_windows

A text that fits in one window gives exactly the ids plain truncating tokenization gives, so the windowed model's
logits equal the plain model's. Texts needing more than ``max_windows`` windows keep the first ``max_windows``; the
rest is not read and the text counts as truncated.

Batches hold whole texts: samplers index texts, :func:`make_window_collate` flattens their windows into the rows of
``input_ids`` ``[W, T]`` (a text's windows consecutive, texts in batch order) and adds ``num_windows`` ``[N]``;
labels stay per text. The model's plain call ``model(input_ids, attention_mask)`` is one window per text.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .collate import make_collate
from .labels import LabelMap
from .readers import Split, TextClassificationDataset, bounded_texts, offsets

__all__ = [
    "WindowSpec",
    "WindowedTextDataset",
    "encode_windows",
    "make_window_collate",
    "special_framing",
    "window_starts",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowSpec:
    """How texts are cut into windows and how the windows' outputs are combined.

    Attributes:
        max_length: tokens per window, special tokens included.
        overlap: text tokens shared by consecutive windows.
        max_windows: most windows per text (None: no cap).
        aggregation: ``"mean"``, ``"max"`` or ``"attention"``.
    """

    max_length: int
    overlap: int
    max_windows: int | None = None
    aggregation: str = "mean"

    @classmethod
    def from_config(cls, config) -> WindowSpec | None:
        """The spec of a :class:`~textclf.config.TrainConfig`, or None when it truncates long texts."""
        if config.long_texts != "windows":
            return None
        overlap = config.max_length // 4 if config.window_overlap is None else config.window_overlap
        return cls(config.max_length, overlap, config.max_windows, config.window_aggregation)

    def to_dict(self) -> dict[str, Any]:
        """What ``textclf.json`` stores under ``"windows"``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, max_length: int | None = None) -> WindowSpec | None:
        """Read the ``"windows"`` entry of ``textclf.json`` (None: the model truncates); ``max_length`` overrides."""
        if not raw:
            return None
        spec = cls(int(raw["max_length"]), int(raw["overlap"]), raw.get("max_windows"), raw.get("aggregation", "mean"))
        if max_length is not None and max_length != spec.max_length:
            spec = cls(max_length, min(spec.overlap, max_length // 2), spec.max_windows, spec.aggregation)
        return spec


# ==================================================================================================== windows


def special_framing(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one text, e.g. ``([CLS], [SEP])`` for BERT.

    Found by encoding a probe text with and without special tokens (transformers 5 fast tokenizers have no
    ``build_inputs_with_special_tokens``), so it works for BERT, RoBERTa, XLNet-style suffixes and the like.
    """
    common = dict(truncation=False, return_attention_mask=False, return_token_type_ids=False)
    for probe in ("hello world", "a", "\u4e2d\u6587"):
        with_special = list(tokenizer(probe, **common)["input_ids"])
        content = list(tokenizer(probe, add_special_tokens=False, **common)["input_ids"])
        if not content:
            continue
        for start in range(len(with_special) - len(content) + 1):
            if with_special[start:start + len(content)] == content:
                return with_special[:start], with_special[start + len(content):]
    raise ConfigError(f"train.long_texts: cannot tell which special tokens {type(tokenizer).__name__} adds around a "
                      "text, so texts cannot be framed as windows; use long_texts='truncate'")


def window_starts(num_tokens: int, capacity: int, overlap: int) -> list[int]:
    """Start offsets of the windows covering ``num_tokens`` text tokens (always at least one window)."""
    step = capacity - overlap
    if num_tokens <= capacity:
        return [0]
    return [j * step for j in range(1 + math.ceil((num_tokens - capacity) / step))]


def _capacity(spec: WindowSpec, prefix: list[int], suffix: list[int]) -> int:
    specials = len(prefix) + len(suffix)
    capacity = spec.max_length - specials
    if capacity - spec.overlap < 1:
        raise ConfigError(f"train.window_overlap: {spec.overlap} leaves no new tokens per window: a window of "
                          f"max_length={spec.max_length} holds {capacity} text tokens besides {specials} special "
                          f"ones; use an overlap below {capacity}")
    return capacity


def encode_windows(tokenizer: Any, texts: Sequence[str], spec: WindowSpec, batch_size: int = 2048):
    """Tokenize texts once and cut them into framed windows.

    Returns:
        ``(flat, window_lengths, num_windows, needed)``: the windows' ids back to back (``int32``), each window's
        length, each text's number of windows (after ``max_windows``), and the number each text would need.
    """
    prefix, suffix = special_framing(tokenizer)
    capacity = _capacity(spec, prefix, suffix)
    pieces: list[np.ndarray] = []
    window_lengths: list[int] = []
    num_windows = np.zeros(len(texts), dtype=np.int64)
    needed = np.zeros(len(texts), dtype=np.int64)
    head, tail = np.asarray(prefix, dtype=np.int32), np.asarray(suffix, dtype=np.int32)
    common = dict(add_special_tokens=False, truncation=False, padding=False, return_attention_mask=False,
                  return_token_type_ids=False, verbose=False)  # verbose=False: no "longer than the model" warning
    # With max_windows, tokens past the last window are never read: texts are cut to the characters that can hold
    # one token more than the windows (so a cut text still counts as needing more windows than it got).
    bound = None if spec.max_windows is None else spec.max_windows * (capacity - spec.overlap) + capacity + 1
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        if bound is not None:
            batch, _ = bounded_texts(batch, bound)
        for j, ids in enumerate(tokenizer(batch, **common)["input_ids"] if batch else []):
            ids = np.asarray(ids, dtype=np.int32)
            starts = window_starts(len(ids), capacity, spec.overlap)
            needed[start + j] = len(starts)
            if spec.max_windows is not None:
                starts = starts[:spec.max_windows]
            num_windows[start + j] = len(starts)
            for s in starts:
                chunk = ids[s:s + capacity]
                pieces.extend((head, chunk, tail))
                window_lengths.append(len(head) + len(chunk) + len(tail))
    flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return flat, np.asarray(window_lengths, dtype=np.int64), num_windows, needed


class WindowedTextDataset(TextClassificationDataset):
    """Texts tokenized once into sliding windows (see the module docstring); one item per text.

    Args:
        texts: The texts.
        labels: Label names per text (label lists for multi-label), or None.
        tokenizer: A Hugging Face tokenizer.
        spec: Window size, overlap, cap and aggregation.
        label_map: Maps names to ids; built from ``labels`` when None.
        batch_size: Texts per tokenizer call.

    Attributes:
        lengths: ``int64`` tokens per text summed over its windows (what a batch of it costs), for the samplers.
        num_windows: ``int64`` windows per text.
        num_truncated: Texts that needed more than ``spec.max_windows`` windows (their tail was not read).
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[Any] | None, tokenizer: Any, spec: WindowSpec,
                 label_map: LabelMap | None = None, batch_size: int = 2048) -> None:
        self.texts = list(texts)
        self.max_length = spec.max_length
        self.spec = spec
        self._encode_labels(labels, label_map)

        flat, window_lengths, self.num_windows, needed = encode_windows(tokenizer, self.texts, spec, batch_size)
        self.num_truncated = int((needed > self.num_windows).sum())
        window_offsets, first_window = offsets(window_lengths), offsets(self.num_windows)
        self.lengths = np.add.reduceat(window_lengths, first_window[:-1]) if len(window_lengths) else \
            np.zeros(len(self.texts), dtype=np.int64)
        self._window_offsets = window_offsets.tolist()
        self._first_window = first_window.tolist()
        self._input_ids = torch.from_numpy(flat)
        if self.num_truncated:
            logger.info("%d of %d texts need more than max_windows=%s windows; their ends were not read",
                        self.num_truncated, len(self.texts), spec.max_windows)

    @classmethod
    def from_split(cls, split: Split, tokenizer: Any, spec: WindowSpec, label_map: LabelMap | None = None,
                   **kwargs: Any) -> WindowedTextDataset:
        """Build from a :class:`~textclf.data.readers.Split` (labels are encoded with ``label_map``)."""
        return cls(split.texts, split.labels, tokenizer, spec, label_map=label_map, **kwargs)

    @property
    def total_windows(self) -> int:
        return int(self.num_windows.sum())

    def __getitem__(self, i: int) -> dict[str, Any]:
        """``{"windows": [LongTensor [len], ...], "labels": ...}`` (``"labels"`` if labelled)."""
        i = self._row(i)
        offsets = self._window_offsets
        windows = [self._input_ids[offsets[w]:offsets[w + 1]].long()
                   for w in range(self._first_window[i], self._first_window[i + 1])]
        item: dict[str, Any] = {"windows": windows}
        if self._labels is not None:
            item["labels"] = self._labels[i]
        return item


def make_window_collate(pad_token_id: int, pad_to_multiple_of: int | None = None):
    """Like :func:`~textclf.data.collate.make_collate`, for windowed items: their windows become the batch's rows.

    Returns:
        ``collate(items) -> {"input_ids": [W, T], "attention_mask": [W, T], "num_windows": [N], "labels": [N]...}``
        for items of a :class:`WindowedTextDataset`; plain items pass through to ``make_collate`` unchanged.
    """
    base = make_collate(pad_token_id, pad_to_multiple_of)

    def collate(items: Sequence[dict]) -> dict[str, torch.Tensor]:
        if "windows" not in items[0]:
            return base(items)
        batch = base([{"input_ids": window} for item in items for window in item["windows"]])
        batch["num_windows"] = torch.tensor([len(item["windows"]) for item in items], dtype=torch.long)
        if "labels" in items[0]:
            batch["labels"] = torch.stack([torch.as_tensor(item["labels"]) for item in items])
        return batch

    return collate


# ==================================================================================================== aggregation


def describe_windows(dataset: WindowedTextDataset, name: str) -> str:
    """One line for the training log: how many windows the split became and how many texts were cut."""
    counts = dataset.num_windows
    line = (f"{name}: {len(dataset)} texts -> {dataset.total_windows} windows of <= {dataset.max_length} tokens "
            f"(overlap {dataset.spec.overlap}; mean {counts.mean() if len(counts) else 0:.2f}, max "
            f"{counts.max() if len(counts) else 0} per text; aggregation {dataset.spec.aggregation})")
    if dataset.num_truncated:
        line += (f"; {dataset.num_truncated} text(s) needed more than max_windows={dataset.spec.max_windows} "
                 "windows and their ends were not read")
    return line

