"""Input strategies: how a text becomes model inputs, in training and at prediction alike.

:class:`Truncation` (the default) reads the first ``max_length`` tokens of a text; :class:`SlidingWindows`
(``--long-texts windows``) reads all of it as overlapping windows and lets the model combine them (see
:mod:`textclf.data.windows`). A strategy owns the dataset it tokenizes into, the collate function, the extra model
inputs of a batch, the logits of raw texts through any prediction backend, and what a model folder records about
it. The Trainer, the Predictor and export ask the strategy, so a windowed model reads texts the same way wherever
it runs, and none of them branches on how texts are read.

A new strategy (say, head+tail truncation) is one more class with these methods and a line in
:func:`input_strategy`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError
from .aggregation import aggregate_window_logits
from .collate import make_collate, sequential_shard
from .labels import LabelMap
from .readers import Split, TextClassificationDataset, bounded_texts, offsets
from .windows import WindowedTextDataset, WindowSpec, describe_windows, encode_windows, make_window_collate


class Truncation:
    """Each text is its first ``max_length`` tokens (special tokens included); longer texts are flagged truncated."""

    spec = None  # what textclf.json stores under "windows": nothing, for truncation

    def __init__(self, max_length: int):
        self.max_length = max_length

    def dataset(self, split: Split, tokenizer: Any, label_map: LabelMap | None) -> TextClassificationDataset:
        return TextClassificationDataset.from_split(split, tokenizer, self.max_length, label_map)

    def describe(self, dataset: TextClassificationDataset, name: str) -> str | None:
        """A line for the training log about how the split was read (None: nothing worth saying)."""
        if not dataset.num_truncated:
            return None
        share = dataset.num_truncated / len(dataset)
        # Above one text in ten, truncation is likely to cost accuracy: point at the remedy.
        hint = (f"; {share:.0%} of the texts lose their end: consider --long-texts windows "
                "(see docs/long-texts.md)") if share > 0.1 else ""
        return (f"{name}: {dataset.num_truncated} of {len(dataset)} texts are longer than "
                f"max_length={self.max_length} tokens and were truncated{hint}")

    def collate(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        return make_collate(pad_token_id, pad_to_multiple_of)

    def to_dict(self) -> dict | None:
        """What ``textclf.json`` records under ``"windows"`` (None: texts are truncated at the training length)."""
        return None if self.spec is None else self.spec.to_dict()

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's inputs besides ``input_ids`` and ``attention_mask``."""
        return {}

    def configure(self, model) -> None:
        """Prepare a fresh model for this way of reading (before it moves to its device)."""

    def check_backend(self, backend: Any) -> None:
        """Refuse a prediction backend that cannot read texts this way."""

    def check_exportable(self, source: Any) -> None:
        """Refuse to export model ``source`` when the exported graph cannot read texts this way."""

    def logits(self, backend: Any, tokenizer: Any, texts: list[str], batch_size: int,
               num_labels: int) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``[N, C]`` of raw texts through a prediction backend, and which texts were truncated ``[N]``."""
        texts, _ = bounded_texts(texts, self.max_length)  # a huge text costs no more than max_length tokens
        encoded = tokenizer(texts, truncation=True, max_length=self.max_length, padding=False,
                            return_attention_mask=False, return_token_type_ids=False, return_overflowing_tokens=False)
        ids = encoded["input_ids"]
        lengths = np.asarray([len(row) for row in ids])
        # A text is truncated when it filled max_length exactly and re-tokenizing without the limit is longer.
        full = lengths >= self.max_length
        truncated = np.zeros(len(texts), dtype=bool)
        if full.any():
            candidates = [texts[i] for i in np.flatnonzero(full)]
            long_lengths = [len(r) for r in tokenizer(candidates, truncation=False)["input_ids"]]
            truncated[np.flatnonzero(full)] = np.asarray(long_lengths) > self.max_length
        collate = self.collate(tokenizer.pad_token_id or 0, backend.pad_to_multiple_of)
        out = np.empty((len(texts), num_labels), dtype=np.float32)
        for rows in sequential_shard(len(texts), batch_size, lengths=lengths):
            batch = collate([{"input_ids": ids[i]} for i in rows])
            out[rows] = backend(batch["input_ids"], batch["attention_mask"])
        return out, truncated


class SlidingWindows(Truncation):
    """Each text is read whole as windows of ``spec.max_length`` tokens; the model combines a text's windows.

    Texts needing more than ``spec.max_windows`` windows keep the first ones and are flagged truncated.
    """

    def __init__(self, spec: WindowSpec):
        super().__init__(spec.max_length)
        self.spec = spec

    def dataset(self, split: Split, tokenizer: Any, label_map: LabelMap | None) -> WindowedTextDataset:
        return WindowedTextDataset.from_split(split, tokenizer, self.spec, label_map)

    def describe(self, dataset: WindowedTextDataset, name: str) -> str:
        return describe_windows(dataset, name)

    def collate(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        return make_window_collate(pad_token_id, pad_to_multiple_of)

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"num_windows": batch["num_windows"]}  # [N]: a text's windows are consecutive rows of input_ids

    def configure(self, model) -> None:
        model.configure_windows(self.spec.aggregation)  # "attention" adds the window scorer

    def check_backend(self, backend: Any) -> None:
        """Attention over windows is part of the PyTorch model: a backend that scores windows only cannot do it."""
        if self.spec.aggregation == "attention" and not backend.aggregates_windows:
            raise ModelLoadError(
                "this model aggregates windows with attention, whose scoring layer is part of the PyTorch model; "
                f"the {getattr(backend, 'name', type(backend).__name__)} backend runs windows only. Load the "
                "training bundle (OUTPUT/best) with the torch backend, or train with --window-aggregation mean or "
                "max to export")

    def check_exportable(self, source: Any) -> None:
        if self.spec.aggregation == "attention":
            # The exported graph maps one window to logits; attention needs the scores of all a text's windows.
            raise ConfigError(f"{source} combines its sliding windows with attention (train.window_aggregation), "
                              "which the exported per-window graph cannot do; serve the PyTorch bundle instead, or "
                              "train with --window-aggregation mean or max to export")

    def logits(self, backend, tokenizer, texts, batch_size, num_labels) -> tuple[np.ndarray, np.ndarray]:
        """A backend that aggregates windows (the PyTorch model) combines them itself, with any aggregation; other
        backends (ONNX, exported modules) score windows, combined here with the same mean or max.
        ``batch_size`` counts texts; a batch holds all windows of its texts."""
        flat, window_lengths, num_windows, needed = encode_windows(tokenizer, texts, self.spec)
        starts, first = offsets(window_lengths), offsets(num_windows)
        cost = np.add.reduceat(window_lengths, first[:-1]) if len(texts) else np.zeros(0, dtype=np.int64)
        collate = make_collate(tokenizer.pad_token_id or 0, backend.pad_to_multiple_of)
        out = np.empty((len(texts), num_labels), dtype=np.float32)
        for rows in sequential_shard(len(texts), batch_size, lengths=cost):
            windows = [flat[starts[w]:starts[w + 1]] for i in rows for w in range(first[i], first[i + 1])]
            batch = collate([{"input_ids": window} for window in windows])
            counts = torch.as_tensor(num_windows[rows])
            if backend.aggregates_windows:
                out[rows] = backend(batch["input_ids"], batch["attention_mask"], num_windows=counts)
            else:
                window_out = torch.from_numpy(backend(batch["input_ids"], batch["attention_mask"]))
                out[rows] = aggregate_window_logits(window_out, counts, self.spec.aggregation).numpy()
        return out, needed > num_windows


class WholeTexts:
    """The backend reads raw texts itself (a TF-IDF model cuts its own n-grams): no tokenizer, nothing truncated.

    Only a prediction backend with ``read(texts) -> logits`` can read texts this way; it is never trained by the
    Trainer, so only the prediction half of a strategy is here."""

    spec = None
    max_length = 0  # no token limit: a text is read whole

    def collate(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        return None  # nothing to pad: batches are lists of texts

    def to_dict(self) -> dict | None:
        return None

    def check_exportable(self, source: Any) -> None:
        """A backend that reads whole texts exports itself (its own check)."""

    def check_backend(self, backend: Any) -> None:
        if not callable(getattr(backend, "read", None)):
            raise ModelLoadError(f"the {getattr(backend, 'name', type(backend).__name__)} backend reads token ids, "
                                 "not raw texts; only a backend with read(texts) can be given whole texts")

    def logits(self, backend: Any, tokenizer: Any, texts: list[str], batch_size: int,
               num_labels: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(texts), num_labels), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            out[start:start + batch_size] = backend.read(texts[start:start + batch_size])
        return out, np.zeros(len(texts), dtype=bool)


def input_strategy_for(windows: WindowSpec | None, max_length: int) -> Truncation:
    """Sliding windows when a :class:`~textclf.data.windows.WindowSpec` is given (its length wins), else truncation
    at ``max_length``."""
    return SlidingWindows(windows) if windows is not None else Truncation(max_length)


def input_strategy(config) -> Truncation:
    """The strategy of a :class:`~textclf.config.TrainConfig` (``long_texts``, ``max_length``, windows)."""
    return input_strategy_for(WindowSpec.from_config(config), config.max_length)
