"""Prediction over sliding windows: a long text's windows scored by any backend and combined into one prediction.

A PyTorch :class:`~textclf.model.classifier.TextClassifier` combines a text's windows itself (mean, max or attention);
an exported backend (ONNX, TorchScript) scores windows only, and :func:`windowed_logits` combines them here with
the same mean or max (:mod:`textclf.model.aggregation`), so every backend predicts what the trained model predicts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.collate import sequential_shard
from ..data.windows import WindowSpec, encode_windows
from ..errors import ModelLoadError
from ..model.aggregation import aggregate_window_logits
from ..model.classifier import TextClassifier


def check_backend(backend: Any, spec: WindowSpec) -> None:
    """Refuse a backend that cannot aggregate ``spec``'s way: attention needs the PyTorch model itself."""
    if spec.aggregation == "attention" and not _aggregates_natively(backend):
        raise ModelLoadError(
            "this model aggregates windows with attention, whose scoring layer is part of the PyTorch model; "
            f"the {getattr(backend, 'name', type(backend).__name__)} backend runs windows only. Load the training "
            "bundle (OUTPUT/best) with the torch backend, or train with --window-aggregation mean or max to export"
        )


def _aggregates_natively(backend: Any) -> bool:
    return isinstance(getattr(backend, "module", None), TextClassifier)


def windowed_logits(backend: Any, collate, tokenizer: Any, spec: WindowSpec, texts: list[str], batch_size: int,
                    num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Text logits ``[N, C]`` and truncated flags ``[N]`` of a :class:`~textclf.deploy.predict.Predictor`'s backend.

    A PyTorch :class:`~textclf.model.classifier.TextClassifier` aggregates the windows itself (all three aggregations);
    other backends (ONNX, exported modules) return window logits, combined here with the same mean or max.
    ``batch_size`` counts texts; a batch holds all windows of its texts.
    """
    flat, window_lengths, num_windows, needed = encode_windows(tokenizer, texts, spec)
    offsets = np.zeros(len(window_lengths) + 1, dtype=np.int64)
    np.cumsum(window_lengths, out=offsets[1:])
    first = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(num_windows, out=first[1:])
    cost = np.add.reduceat(window_lengths, first[:-1]) if len(texts) else np.zeros(0, dtype=np.int64)
    native = _aggregates_natively(backend)
    out = np.empty((len(texts), num_labels), dtype=np.float32)
    for rows in sequential_shard(len(texts), batch_size, lengths=cost):
        windows = [flat[offsets[w]:offsets[w + 1]] for i in rows for w in range(first[i], first[i + 1])]
        batch = collate([{"input_ids": window} for window in windows])
        counts = torch.as_tensor(num_windows[rows])
        if native:
            out[rows] = backend(batch["input_ids"], batch["attention_mask"], num_windows=counts)
        else:
            window_out = torch.from_numpy(backend(batch["input_ids"], batch["attention_mask"]))
            out[rows] = aggregate_window_logits(window_out, counts, spec.aggregation).numpy()
    return out, needed > num_windows
