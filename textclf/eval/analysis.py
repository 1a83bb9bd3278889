"""Error analysis and the end-of-training analysis (calibration, ECE, plots, misclassified rows).

Both plug into :meth:`Trainer.evaluate <textclf.train.trainer.Trainer.evaluate>` through its ``batch_hook``: a function
called with each batch's row indices, logits and labels. Nothing here keeps every logit of a split except the
dev logits that temperature fitting needs; the error collector keeps only the misclassified rows.

* :class:`ErrorCollector` -- misclassified rows with their top-2 labels and probabilities; :meth:`write` saves
  them as CSV, most confident mistakes first. Used by ``textclf evaluate --errors FILE.csv`` and by ``fit``
  (``OUTPUT/errors.csv`` for the test split, or dev when there is no test split).
* :class:`RunAnalysis` -- what :meth:`Trainer.fit <textclf.train.trainer.Trainer.fit>` does after training: fit the
  temperature on dev, report ECE before/after on dev and test, write ``reliability.png``, ``confusion.png`` and
  ``errors.csv``, and record the temperature in ``best/textclf.json``. A picture that cannot be drawn is a warning
  naming it, never an error: the run's numbers do not depend on a picture.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..model import bundle
from .calibration import CalibrationBins, draw_safely, fit_temperature, plot_confusion, plot_reliability
from .metrics import metrics_json
from .tasks import SingleLabelTask

ERRORS_FILE = "errors.csv"
RELIABILITY_FILE = "reliability.png"
CONFUSION_FILE = "confusion.png"
ERROR_COLUMNS = ["line", "text", "label", "predicted", "confidence", "top1", "top1_prob", "top2", "top2_prob"]


def probabilities(logits: torch.Tensor, task, temperature: float = 1.0) -> np.ndarray:
    """The task's probabilities (softmax, or per-label sigmoid) of ``logits / temperature`` as float64 numpy."""
    return task.probabilities(logits.detach().float().cpu().double() / temperature).numpy()


class ErrorCollector:
    """Collects misclassified rows batch by batch (use :meth:`hook` as ``Trainer.evaluate``'s ``batch_hook``).

    Args:
        label_names: the model's labels, in id order.
        task: the model's task (:mod:`textclf.eval.tasks`), which decides as the model does: the most probable
            label, or (multi-label) the labels at or above their decision thresholds, so a row is an error here
            exactly when it is one in ``metrics.json``. Default: one label per text.
        temperature: applied to the logits before the probabilities are taken (the model's calibration).
    """

    def __init__(self, label_names: list[str], task=None, temperature: float = 1.0):
        self.label_names = list(label_names)
        self.task = task if task is not None else SingleLabelTask(len(self.label_names))
        self.temperature = temperature
        self.rows: list[tuple[int, float, list[int], list[float], object, object]] = []

    def hook(self, rows: list[int], logits: torch.Tensor, labels: torch.Tensor) -> None:
        probs = probabilities(logits, self.task, self.temperature)
        gold = self.task.gold(labels.detach().cpu().numpy())
        top = np.argsort(-probs, axis=1)[:, :2]
        predicted = self.task.decisions(probs)
        for j in np.flatnonzero(~self.task.agree(predicted, gold)):  # only the mistakes are kept
            self.rows.append((rows[j], float(probs[j].max()), top[j].tolist(), probs[j][top[j]].tolist(),
                              self.task.label_ids(gold[j]), self.task.label_ids(predicted[j])))

    def _names(self, ids) -> str:
        return "|".join(self.label_names[i] for i in ids) if isinstance(ids, list) else self.label_names[ids]

    def write(self, path: str | Path, split) -> int:
        """Write the errors as CSV (columns :data:`ERROR_COLUMNS`), most confident first; returns the row count.

        Args:
            path: the CSV file.
            split: the :class:`~textclf.data.readers.Split` evaluated (texts and source locations).
        """
        ordered = sorted(self.rows, key=lambda r: (-r[1], r[0]))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(ERROR_COLUMNS)
            for row, confidence, top, top_probs, gold, pred in ordered:
                location = split.locations[row] if split.locations is not None else row
                second = (self.label_names[top[1]], f"{top_probs[1]:.4f}") if len(top) > 1 else ("", "")
                writer.writerow([location, split.texts[row], self._names(gold), self._names(pred),
                                 f"{confidence:.4f}", self.label_names[top[0]], f"{top_probs[0]:.4f}", *second])
        return len(ordered)


def evaluate_with_errors(trainer, split, path: str | Path, temperature: float = 1.0):
    """Evaluate ``split`` with ``trainer`` and write its misclassified rows to ``path`` (see :class:`ErrorCollector`).

    Returns:
        ``(report, number of errors written)``.
    """
    collector = ErrorCollector(trainer.label_map.names, trainer.task, temperature)
    report = trainer.evaluate(split, batch_hook=collector.hook)
    return report, collector.write(path, split)


def saved_temperature(folder: str | Path) -> float:
    """The calibration temperature recorded in a model folder's ``textclf.json`` (1.0 when none)."""
    if not bundle.has_meta(folder):
        return 1.0
    return float((bundle.read_meta(folder).get("calibration") or {}).get("temperature", 1.0))


class RunAnalysis:
    """The post-training analysis of a run; see the module docstring.

    Call :meth:`hook` for each split's evaluation (dev first), :meth:`after` with its report, then :meth:`finish`.

    Args:
        label_names: the model's labels.
        task: the model's task, with its decision thresholds (:mod:`textclf.eval.tasks`); tasks that do not
            calibrate (multi-label) get neither temperature scaling nor ECE.
        calibrate: fit the temperature on dev (where the task calibrates).
        temperature: a temperature already fitted (e.g. read from the model folder); used when not calibrating.
    """

    def __init__(self, label_names: list[str], task, calibrate: bool, temperature: float = 1.0):
        self.label_names = list(label_names)
        self.task = task
        self.calibrate = calibrate and task.calibrates
        self.temperature = temperature
        self.calibration: dict = {"method": "temperature", "fitted_on": None, "temperature": temperature}
        self.bins: dict[str, tuple[CalibrationBins, CalibrationBins]] = {}
        self.errors: dict[str, tuple[ErrorCollector, object]] = {}
        self.reports: dict = {}
        self._dev_logits: list[torch.Tensor] = []
        self._dev_labels: list[torch.Tensor] = []
        self._dev_rows: list[int] = []

    def hook(self, name: str, split):
        """The ``batch_hook`` for evaluating split ``name`` (``"dev"`` or ``"test"``)."""
        collect_dev = name == "dev" and self.calibrate
        collector = ErrorCollector(self.label_names, self.task, self.temperature)
        self.errors[name] = (collector, split)
        raw, scaled = CalibrationBins(), CalibrationBins()
        if self.task.calibrates:
            self.bins[name] = (raw, scaled)

        def batch_hook(rows, logits, labels):
            if collect_dev:  # the temperature is not known yet: keep dev logits (one [N, C] array) to fit it
                self._dev_logits.append(logits.detach().float().cpu())
                self._dev_labels.append(labels.detach().cpu())
                self._dev_rows.extend(rows)
            else:
                collector.hook(rows, logits, labels)
            if self.task.calibrates:
                raw.update(probabilities(logits, self.task), labels.cpu().numpy())
                if not collect_dev:
                    scaled.update(probabilities(logits, self.task, self.temperature), labels.cpu().numpy())

        return batch_hook

    def evaluate(self, name: str, evaluate, data, split) -> tuple:
        """``evaluate(data, batch_hook=...)`` under this analysis: returns the report and the note for report.txt."""
        report = evaluate(data, batch_hook=self.hook(name, split))
        return report, self.after(name, report)

    def after(self, name: str, report) -> str:
        """Fit the temperature after dev; add ECE to ``report.extra``; returns lines for ``report.txt``."""
        self.reports[name] = report
        if not self.task.calibrates:
            return "calibration: not applied to multi-label models (no temperature, no ECE)"
        raw, scaled = self.bins[name]
        if name == "dev" and self.calibrate:
            logits, labels = torch.cat(self._dev_logits), torch.cat(self._dev_labels)
            self.temperature = fit_temperature(logits, labels)
            self.calibration.update(fitted_on="dev", temperature=self.temperature, dev_rows=len(labels))
            scaled.update(probabilities(logits, self.task, self.temperature), labels.numpy())
            collector, split = self.errors[name]
            collector.temperature = self.temperature
            collector.hook(self._dev_rows, logits, labels)
            self._dev_logits, self._dev_labels, self._dev_rows = [], [], []
        report.extra["ece_before"] = raw.ece
        report.extra["ece_after"] = scaled.ece
        report.extra["temperature"] = self.temperature
        self.calibration[f"{name}_ece_before"], self.calibration[f"{name}_ece_after"] = raw.ece, scaled.ece
        note = " (fitted on this split)" if name == "dev" and self.calibrate else ""
        return (f"calibration: temperature {self.temperature:.4f}{note}; expected calibration error "
                f"({raw.num_bins} bins) {raw.ece:.4f} before, {scaled.ece:.4f} after scaling")

    def finish(self, output_dir: str | Path, model_dir: str | Path | None = None) -> dict:
        """Write ``errors.csv``, record the temperature in ``model_dir``, then draw ``confusion.png`` and
        ``reliability.png`` (a picture that fails is a :class:`~textclf.eval.calibration.PlotWarning`, not an error).

        The files describe the test split, or dev when the run has no test split. Returns the calibration record
        (:attr:`calibration`, complete once every split's :meth:`after` ran: write ``metrics.json`` before this).
        """
        output_dir = Path(output_dir)
        name = "test" if "test" in self.reports else "dev" if "dev" in self.reports else None
        if name is None:
            return self.calibration
        collector, split = self.errors[name]
        collector.write(output_dir / ERRORS_FILE, split)
        if model_dir is not None and self.calibration["fitted_on"]:
            record_calibration(model_dir, self.calibration)
        report = self.reports[name]
        if report.confusion_matrix:  # multi-label reports have per-label counts instead (textclf.eval.multilabel)
            draw_safely(output_dir / CONFUSION_FILE, plot_confusion, report.confusion_matrix, report.label_names,
                        f"confusion matrix ({name}, {report.num_rows} rows)")
        if name in self.bins:
            raw, scaled = self.bins[name]
            draw_safely(output_dir / RELIABILITY_FILE, plot_reliability, raw,
                        scaled if self.calibration["fitted_on"] else None,
                        f"reliability ({name}, T = {self.temperature:.3f})")
        return self.calibration


def record_calibration(model_dir: str | Path, calibration: dict) -> None:
    """Add ``"calibration"`` to ``model_dir/textclf.json`` (atomically: a reader never sees half a file)."""
    bundle.update_meta(model_dir, calibration=calibration)


class RunReport:
    """The reports at the end of a run: ``metrics.json`` (numbers, for programs) and ``report.txt`` (for people).

    The one writer for single runs (:class:`~textclf.train.trainer.Trainer`) and seed ensembles; both files are written
    atomically, so a reader never sees half of one. Write them before drawing anything (:meth:`RunAnalysis.finish`):
    they are what a run is for. Their size grows with the classes, not their square (the confusion matrix of a large
    label set is sparse in ``metrics.json`` and its top confusions in ``report.txt``: :mod:`textclf.eval.metrics`).

    Args:
        metrics: the run-level entries of ``metrics.json`` (best step, seeds, ...).
    """

    def __init__(self, **metrics):
        self.metrics = dict(metrics)
        self.sections: list[str] = []

    def add(self, name: str, report, text: str) -> None:
        """Record split ``name``'s :class:`~textclf.eval.metrics.EvalReport` and its section of ``report.txt``."""
        self.metrics[name] = report.to_dict()
        self.sections.append(text)

    def write(self, folder: str | Path) -> None:
        folder = Path(folder)
        bundle.write_atomically(folder / "metrics.json", metrics_json(self.metrics))
        bundle.write_atomically(folder / "report.txt", "\n\n".join(self.sections))
