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

from ..eval.metrics import confusion_image


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
        header = "| true \\ predicted | " + " | ".join(label_names) + " |"
        rows = [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(label_names, counts)]
        separator = "|" + "---|" * (len(label_names) + 1)
        self.writer.add_text(f"{tag}/confusion_matrix", "\n".join([header, separator, *rows]), step)

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
        record = {"step": step, f"{tag}/confusion_matrix": np.asarray(counts).tolist(), "labels": label_names}
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
