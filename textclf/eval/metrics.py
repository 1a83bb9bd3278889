"""Evaluation metrics from a streaming confusion matrix.

Evaluation never keeps every logit: each batch's predictions are folded into a ``[C, C]`` count matrix
(rows = true label, columns = predicted label), on the device, and every metric is derived from it at the
end. Under distributed evaluation the matrices of all ranks are summed with one all-reduce.

Large label sets: a ``[C, C]`` matrix grows with the square of the classes (3,000 classes made ``metrics.json`` and
``report.txt`` about 200 MB each, and printed a 3,000-column matrix). Above :data:`MAX_MATRIX_CLASSES` classes the
text report lists the most frequent confusions instead of the matrix, and :meth:`EvalReport.to_dict` stores the
matrix sparse (:func:`sparse_confusion`); the dense matrix stays on the report object and is written in full only
when asked for (``to_dict(full_matrix=True)``).
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulates ``[num_classes, num_classes]`` counts of (true, predicted) pairs."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``predictions`` and ``targets`` are ``[B]`` class ids (no host sync)."""
        flat = targets.long() * self.num_classes + predictions.long()
        self.counts += torch.bincount(flat, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        """Sum the counts of every rank (each rank evaluated a disjoint shard of the rows)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.counts)

    def numpy(self) -> np.ndarray:
        return self.counts.cpu().numpy()


@dataclass
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class EvalReport:
    """Metrics of one evaluation; ``to_dict()`` is what lands in ``metrics.json``."""

    accuracy: float
    macro_f1: float
    micro_f1: float
    weighted_f1: float
    loss: float | None
    num_rows: int
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]]
    label_names: list[str]
    extra: dict = field(default_factory=dict)

    def __getitem__(self, key: str):
        """``report["macro_f1"]``: metrics are addressable by the same names ``TrainConfig.metric`` uses."""
        if key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "loss", "num_rows") and key not in self.extra:
            return getattr(self, key)  # the headline scores without building the whole dict (and matrix) each time
        return self.to_dict()[key]

    def to_dict(self, full_matrix: bool = False) -> dict:
        """What lands in ``metrics.json``. The confusion matrix is dense (a list of rows) up to
        :data:`MAX_MATRIX_CLASSES` classes, and sparse above (:func:`sparse_confusion`) unless ``full_matrix``."""
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "micro_f1": self.micro_f1,
            "weighted_f1": self.weighted_f1,
            "loss": self.loss,
            "num_rows": self.num_rows,
            "per_class": {name: vars(scores) for name, scores in self.per_class.items()},
            "confusion_matrix": self.confusion_matrix if full_matrix or not _is_large(self.confusion_matrix)
            else sparse_confusion(self.confusion_matrix),
            "labels": self.label_names,
            **self.extra,
        }

    def headline(self) -> str:
        """One line with the scores that decide between models: accuracy, macro, micro and weighted F1, loss."""
        loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
        return (f"{self.num_rows} rows: accuracy {self.accuracy:.4f}, macro F1 {self.macro_f1:.4f}, micro F1 "
                f"{self.micro_f1:.4f}, weighted F1 {self.weighted_f1:.4f}{loss}")

    def format(self, digits: int = 4) -> str:
        """A text report in scikit-learn's ``classification_report`` layout, plus the confusion matrix (above
        :data:`MAX_MATRIX_CLASSES` classes: the most frequent confusions instead)."""
        width = max([display_width(n) for n in self.label_names] + [len("weighted avg")])
        head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
        lines = [head, ""]
        for name, s in self.per_class.items():
            lines.append(f"{align(name, width)} {s.precision:>9.{digits}f} {s.recall:>9.{digits}f} "
                         f"{s.f1:>9.{digits}f} {s.support:>9}")
        lines.append("")
        lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {self.accuracy:>9.{digits}f} {self.num_rows:>9}")
        scores = list(self.per_class.values())
        for title, weights in (("macro avg", None), ("weighted avg", [s.support for s in scores])):
            p, r, f = (float(np.average([getattr(s, k) for s in scores], weights=weights))
                       if scores and (weights is None or sum(weights)) else 0.0
                       for k in ("precision", "recall", "f1"))
            lines.append(f"{title:>{width}} {p:>9.{digits}f} {r:>9.{digits}f} {f:>9.{digits}f} {self.num_rows:>9}")
        if _is_large(self.confusion_matrix):
            lines += ["", format_top_confusions(self.confusion_matrix, self.label_names)]
        else:
            lines += ["", "confusion matrix (rows: true, columns: predicted)", _format_matrix(self)]
        if self.loss is not None:
            lines.insert(0, f"loss {self.loss:.4f}\n")
        return "\n".join(lines)


def class_scores(true_positive: np.ndarray, predicted: np.ndarray, support: np.ndarray,
                 label_names: list[str]) -> tuple[dict[str, ClassScores], np.ndarray]:
    """Per-class precision, recall and F1 from counts per class (0 where undefined, as scikit-learn reports with
    ``zero_division=0``): the scores by label name, and the F1 vector for the macro and weighted averages."""
    true_positive = np.asarray(true_positive, dtype=float)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    scores = {name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
              for i, name in enumerate(label_names)}
    return scores, f1


def weighted_mean(f1: np.ndarray, support: np.ndarray) -> float:
    """F1 averaged with each class weighted by its support (0 without any support)."""
    return float(np.average(f1, weights=support)) if support.sum() else 0.0


def report_from_confusion(counts: np.ndarray, label_names: list[str], loss: float | None = None) -> EvalReport:
    """Derive every metric from a confusion matrix (rows true, columns predicted).

    Precision/recall/F1 of a class with no predictions or no support is 0, as scikit-learn reports with
    ``zero_division=0``. Micro F1 equals accuracy for single-label classification.
    """
    counts = np.asarray(counts, dtype=np.int64)
    support = counts.sum(axis=1)
    per_class, f1 = class_scores(np.diag(counts), counts.sum(axis=0), support, label_names)
    total = int(counts.sum())
    accuracy = float(np.diag(counts).sum() / total) if total else 0.0
    # single-label: micro F1 (every decision pooled) is the accuracy
    return EvalReport(accuracy=accuracy, macro_f1=float(f1.mean()) if len(f1) else 0.0, micro_f1=accuracy,
                      weighted_f1=weighted_mean(f1, support), loss=loss, num_rows=total, per_class=per_class,
                      confusion_matrix=counts.tolist(), label_names=list(label_names))


def _format_matrix(report: EvalReport) -> str:
    names = report.label_names
    cell = max([len(str(v)) for row in report.confusion_matrix for v in row] + [display_width(n) for n in names])
    lines = [" " * (cell + 1) + " ".join(align(n, cell) for n in names)]
    for name, row in zip(names, report.confusion_matrix):
        lines.append(f"{align(name, cell)} " + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


# Above this many classes a confusion matrix is not printed (a row of 3,000 counts reads as noise) nor stored dense.
MAX_MATRIX_CLASSES = 50
TOP_CONFUSIONS = 30  # confusions listed in the text report instead of the matrix
# Off-diagonal cells kept in a sparse matrix, the largest first: the rest (single stray predictions among thousands of
# classes, up to one per row of the split) would make metrics.json grow with the data again.
MAX_SPARSE_CELLS = 10_000


def _is_large(matrix) -> bool:
    return isinstance(matrix, dict) or len(matrix) > MAX_MATRIX_CLASSES


class InlineList(list):
    """A list :func:`metrics_json` writes on one line (a sparse cell ``[true, predicted, count]``); to ``json`` it is
    an ordinary list."""


def sparse_confusion(counts, max_cells: int = MAX_SPARSE_CELLS) -> dict[str, Any]:
    """A confusion matrix as its nonzero cells: ``{"format": "sparse", "num_classes": C, "cells": [[true,
    predicted, count], ...], "cells_left_out": n, "rows_left_out": r}``.

    Every diagonal cell is kept, and the ``max_cells`` largest off-diagonal ones; the cells are in (true, predicted)
    order. ``cells_left_out`` counts the off-diagonal nonzero cells not kept (0: the matrix is complete) and
    ``rows_left_out`` the rows they held. :func:`dense_confusion` turns it back into rows.
    """
    if isinstance(counts, dict):
        return counts
    counts = np.asarray(counts, dtype=np.int64)
    true, predicted = np.nonzero(counts)
    values = counts[true, predicted]
    off = np.flatnonzero(true != predicted)
    dropped = off[np.argsort(-values[off], kind="stable")[max_cells:]]
    keep = np.setdiff1d(np.arange(len(values)), dropped)  # sorted: (true, predicted) order
    return {"format": "sparse", "num_classes": len(counts),
            "cells": [InlineList(cell) for cell in np.stack([true, predicted, values], 1)[keep].tolist()],
            "cells_left_out": len(dropped), "rows_left_out": int(values[dropped].sum())}


def dense_confusion(matrix) -> np.ndarray:
    """A confusion matrix as a ``[C, C]`` array, from rows (a list or array) or from :func:`sparse_confusion`'s form
    (cells left out count as 0)."""
    if not isinstance(matrix, dict):
        return np.asarray(matrix, dtype=np.int64)
    dense = np.zeros((matrix["num_classes"],) * 2, dtype=np.int64)
    cells = np.asarray(matrix["cells"], dtype=np.int64).reshape(-1, 3)
    dense[cells[:, 0], cells[:, 1]] = cells[:, 2]
    return dense


def top_confusions(matrix, limit: int = TOP_CONFUSIONS) -> list[tuple[int, int, int]]:
    """The ``limit`` largest off-diagonal cells ``(true, predicted, count)`` of a dense or sparse matrix, largest
    first (ties in label order)."""
    if isinstance(matrix, dict):
        cells = [tuple(cell) for cell in matrix["cells"] if cell[0] != cell[1] and cell[2]]
    else:
        counts = np.asarray(matrix, dtype=np.int64)
        true, predicted = np.nonzero(counts)
        cells = [(t, p, counts[t, p]) for t, p in zip(true.tolist(), predicted.tolist()) if t != p]
    cells.sort(key=lambda cell: (-cell[2], cell[0], cell[1]))
    return [(int(t), int(p), int(n)) for t, p, n in cells[:limit]]


def format_top_confusions(matrix, label_names: list[str], limit: int = TOP_CONFUSIONS) -> str:
    """The text report's list of the most frequent confusions, for a matrix too large to print."""
    top = top_confusions(matrix, limit)
    if isinstance(matrix, dict):
        errors = sum(n for t, p, n in matrix["cells"] if t != p) + matrix.get("rows_left_out", 0)
    else:
        counts = np.asarray(matrix, dtype=np.int64)
        errors = int(counts.sum() - np.trace(counts))
    head = (f"top confusions (true -> predicted: count; {len(top)} most frequent, {errors} misclassified rows in all; "
            f"the {len(label_names)}-class matrix is not printed above {MAX_MATRIX_CLASSES} classes)")
    if not top:
        return head + "\n(no confusions)"
    width = max(display_width(label_names[t]) for t, _, _ in top)
    return "\n".join([head] + [f"{align(label_names[t], width)} -> {label_names[p]}: {n}" for t, p, n in top])


def metrics_json(data) -> str:
    """``json.dumps(data, indent=2, ensure_ascii=False)``, except that an :class:`InlineList` takes one line: a
    sparse confusion matrix of 10,000 cells is 10,000 lines, not 50,000."""

    def dump(value, depth: int) -> str:
        inner, outer = "  " * (depth + 1), "  " * depth
        if isinstance(value, InlineList):
            return json.dumps(value, ensure_ascii=False)
        if isinstance(value, dict) and value:
            items = (f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {dump(v, depth + 1)}"
                     for k, v in value.items())
            return "{\n" + ",\n".join(items) + f"\n{outer}}}"
        if isinstance(value, (list, tuple)) and value:
            return "[\n" + ",\n".join(f"{inner}{dump(v, depth + 1)}" for v in value) + f"\n{outer}]"
        return json.dumps(value, ensure_ascii=False)

    return dump(data, 0)


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal or a monospaced file: wide (CJK) characters take two, combining marks
    none. ``len`` would misalign every table of Chinese label names."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def align(text: str, width: int) -> str:
    """``text`` right-aligned in ``width`` display columns (see :func:`display_width`)."""
    return " " * max(0, width - display_width(text)) + text


# Large label sets (thousands of classes) are drawn as their most frequent classes: a full 3,000-class image at
# 24 pixels a cell would take 38 GiB, and no one can read it.
MAX_IMAGE_CLASSES = 256
MAX_IMAGE_PIXELS = 1024


def most_frequent_classes(counts: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``limit`` classes with the most rows (true plus predicted), in label order."""
    counts = np.asarray(counts)
    if len(counts) <= limit:
        return np.arange(len(counts))
    support = counts.sum(0) + counts.sum(1)
    return np.sort(np.argsort(-support, kind="stable")[:limit])


def confusion_image(counts: np.ndarray, cell_pixels: int = 24) -> np.ndarray:
    """Render a row-normalised confusion matrix as an ``[3, H, W]`` uint8 image for TensorBoard.

    Darker blue means a larger share of the true class; the diagonal of a good model is dark. At most
    :data:`MAX_IMAGE_CLASSES` classes (the most frequent) are drawn, in cells shrunk so the image stays within
    :data:`MAX_IMAGE_PIXELS` pixels a side.
    """
    counts = np.asarray(counts, dtype=np.float64)
    keep = most_frequent_classes(counts, MAX_IMAGE_CLASSES)
    shares = (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1))[np.ix_(keep, keep)].astype(np.float32)
    cell_pixels = max(1, min(cell_pixels, MAX_IMAGE_PIXELS // len(keep)))
    shades = np.kron(shares, np.ones((cell_pixels, cell_pixels), dtype=np.float32))
    white, blue = np.array([255.0, 255.0, 255.0], np.float32), np.array([8.0, 48.0, 107.0], np.float32)
    image = white[:, None, None] * (1 - shades)[None] + blue[:, None, None] * shades[None]
    return image.astype(np.uint8)
