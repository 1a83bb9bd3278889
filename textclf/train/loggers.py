"""Loggers behind one small protocol: ``log_metrics(metrics, step)``, ``log_confusion(...)``, ``close()``.

The trainer creates them on rank 0 only. :class:`TensorBoardLogger` writes ``output_dir/runs``;
:class:`JsonlLogger` writes the same scalars to ``output_dir/log.jsonl``, one JSON object per line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from ..eval.metrics import MAX_MATRIX_CLASSES, confusion_image, sparse_confusion, top_confusions
from ..model.card import markdown_cell as _cell


class Logger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_confusion(self, counts: np.ndarray, label_names: list[str], step: int, tag: str) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """Scalars and the confusion matrix (as an image and a text table) for TensorBoard."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on resume, TensorBoard hides events at or after it, written after the checkpoint by the
        # interrupted run, so the curves show each step once.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_confusion(self, counts: np.ndarray, label_names: list[str], step: int, tag: str) -> None:
        self.writer.add_image(f"{tag}/confusion_matrix", confusion_image(counts), step, dataformats="CHW")
        if len(label_names) > MAX_MATRIX_CLASSES:  # a table of thousands of columns: the top confusions instead
            rows = [f"| {_cell(label_names[t])} | {_cell(label_names[p])} | {n} |"
                    for t, p, n in top_confusions(counts)]
            table = ["| true | predicted | rows |", "|---|---|---|", *rows]
        else:
            header = "| true \\ predicted | " + " | ".join(_cell(n) for n in label_names) + " |"
            rows = [f"| {_cell(name)} | " + " | ".join(str(v) for v in row) + " |"
                    for name, row in zip(label_names, counts)]
            table = [header, "|" + "---|" * (len(label_names) + 1), *rows]
        self.writer.add_text(f"{tag}/confusion_matrix", "\n".join(table), step)

    def close(self) -> None:
        self.writer.close()


class JsonlLogger:
    """Appends ``{"step": ..., "time": ..., <metrics>}`` lines to a file."""

    def __init__(self, path: str | Path):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.file.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
        self.file.flush()

    def log_confusion(self, counts: np.ndarray, label_names: list[str], step: int, tag: str) -> None:
        # sparse above MAX_MATRIX_CLASSES classes, as in metrics.json: a dense line of 3,000 classes took 27 MB
        matrix = sparse_confusion(counts) if len(label_names) > MAX_MATRIX_CLASSES else np.asarray(counts).tolist()
        record = {"step": step, f"{tag}/confusion_matrix": matrix, "labels": label_names}
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


HEADLINE_METRICS = ("accuracy", "macro_f1", "micro_f1", "loss")  # logged and kept in the history per evaluation


def log_evaluation(loggers: list, report, step: int, tag: str = "dev") -> None:
    """The headline scores of an evaluation (and its confusion matrix, for single-label reports) to every logger."""
    for logger in loggers:
        logger.log_metrics({f"{tag}/{k}": report[k] for k in HEADLINE_METRICS}, step)
        if report.confusion_matrix:  # multi-label reports carry per-label counts instead
            logger.log_confusion(report.confusion_matrix, report.label_names, step, tag)
