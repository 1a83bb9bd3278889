"""Tasks: what differs between single-label and multi-label classification, in one small object each.

A task owns the loss, the streaming metrics, how logits become probabilities and decisions (argmax, or per-label
decision thresholds), how a fresh head starts, and what it saves in a model folder (the thresholds). The Trainer,
the Predictor, export, evaluation, the label audit and cross-validation all ask the task, so a multi-label model
reads, trains, scores and decides the same way everywhere, and none of them branches on the kind of task.

Adding a task (say, ordinal labels) means one more class with these methods and a line in :func:`task_for`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.labels import LabelMap
from ..model.links import SigmoidLink, SoftmaxLink
from ..model.losses import classification_loss
from .metrics import ConfusionMatrix, EvalReport, report_from_confusion
from .multilabel import MultiLabelMetrics, Thresholds, init_prior_bias, read_thresholds, save_thresholds


class SingleLabelTask:
    """One label per text: softmax, cross-entropy (or focal loss), argmax, a confusion matrix."""

    multi_label = False
    has_thresholds = False
    calibrates = True  # a temperature fitted on dev, and the expected calibration error
    link = SoftmaxLink()

    def __init__(self, num_labels: int):
        self.num_labels = num_labels
        self.thresholds = None

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None,
             focal_gamma: float | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean loss of ``logits [B, C]`` against class ids ``labels [B]``, in fp32."""
        return classification_loss(logits, labels, False, class_weights, focal_gamma, label_smoothing)

    def targets(self, label_map: LabelMap, labels: list) -> np.ndarray:
        """Label names as the loss and the metrics take them: class ids ``[N]``."""
        return np.asarray(label_map.encode_many(labels), dtype=np.int64)

    def metrics(self, device: torch.device | str = "cpu") -> _Confusion:
        """A streaming accumulator: ``update(logits, labels)``, ``all_reduce()``, ``report(names, loss_sum)``."""
        return _Confusion(self.num_labels, device)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities of ``logits [N, C]``, in fp32 (fp64 stays fp64)."""
        return self.link.probabilities(logits.to(torch.promote_types(logits.dtype, torch.float32)))

    def decisions(self, probabilities: np.ndarray) -> np.ndarray:
        """What the model decides for each row of ``probabilities [N, C]``: class ids ``[N]``."""
        return probabilities.argmax(1)

    def gold(self, targets: np.ndarray) -> np.ndarray:
        """Targets (from :meth:`targets`, or a batch's labels) in the form :meth:`decisions` returns."""
        return np.asarray(targets).astype(np.int64)

    def agree(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """``[N]`` booleans: the two decisions (or a decision and :meth:`gold`) are the same, row by row."""
        return first == second

    def label_ids(self, decision) -> int | list[int]:
        """One row's decision as label ids (``names[i]`` gives the names)."""
        return int(decision)

    def decide(self, probabilities: np.ndarray, names: list[str], top_k: int = 1):
        """One text's label, its score and its ``top_k`` most probable labels ``[(name, probability)]``, from its
        probabilities ``[C]``: the most probable label."""
        order = np.argsort(-probabilities, kind="stable")[:max(1, top_k)]
        ranked = [(names[i], float(probabilities[i])) for i in order]
        return ranked[0][0], ranked[0][1], ranked

    def describe(self, names: list[str]) -> dict:
        """What a service's ``/metadata`` shows about the decision rule (argmax: nothing to show)."""
        return {}

    def init_head(self, model, train_labels: np.ndarray) -> None:
        """A fresh head starts as the encoder's initialisation leaves it."""

    def save(self, folder: str | Path, names: list[str]) -> None:
        """Nothing beyond the weights and labels: argmax needs no setting."""


class MultiLabelTask(SingleLabelTask):
    """Any number of labels per text: per-label sigmoid, binary cross-entropy, decision thresholds (0.5 until tuned
    on dev), per-label counts at every candidate threshold."""

    multi_label = True
    has_thresholds = True
    calibrates = False  # a temperature would move every label's probability across its threshold
    link = SigmoidLink()

    def __init__(self, num_labels: int, thresholds: Thresholds | None = None):
        super().__init__(num_labels)
        self.thresholds = thresholds or Thresholds.fixed(num_labels)

    def loss(self, logits, labels, class_weights=None, focal_gamma=None, label_smoothing=0.0) -> torch.Tensor:
        """Mean binary cross-entropy of ``logits [B, C]`` against multi-hot ``labels [B, C]``, in fp32."""
        return classification_loss(logits, labels, True, class_weights, focal_gamma, label_smoothing)

    def targets(self, label_map: LabelMap, labels: list) -> np.ndarray:
        """Label lists as multi-hot rows ``[N, C]``."""
        return label_map.encode_multi_hot(labels)

    def metrics(self, device="cpu") -> _PerLabel:
        return _PerLabel(MultiLabelMetrics(self.num_labels, self.thresholds.candidates(), device))

    def decisions(self, probabilities: np.ndarray) -> np.ndarray:
        """Each row's label set as booleans ``[N, C]``: the labels at or above their thresholds."""
        return probabilities >= self.thresholds.values

    def gold(self, targets: np.ndarray) -> np.ndarray:
        return np.asarray(targets) > 0.5

    def agree(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """``[N]`` booleans: the same label set, row by row."""
        return (first == second).all(axis=1)

    def label_ids(self, decision) -> list[int]:
        return np.flatnonzero(decision).tolist()

    def decide(self, probabilities: np.ndarray, names: list[str], top_k: int = 1):
        """One text's labels (those at or above their thresholds, maybe none, in label order), the highest
        probability, and the ranking: every chosen label first (most probable first), then the most probable others
        up to ``top_k`` entries, so the ranking never contradicts the label set."""
        order = np.argsort(-probabilities, kind="stable")
        chosen = order[probabilities[order] >= self.thresholds.values[order]]
        others = order[probabilities[order] < self.thresholds.values[order]]
        ranked = [(names[i], float(probabilities[i])) for i in [*chosen, *others[:max(0, top_k - len(chosen))]]]
        return [names[i] for i in sorted(chosen)], float(probabilities.max()) if len(probabilities) else 0.0, ranked

    def describe(self, names: list[str]) -> dict:
        return {"thresholds": dict(zip(names, self.thresholds.values.tolist()))}

    def init_head(self, model, train_labels: np.ndarray) -> None:
        """Start the head's biases at the training label priors (rare labels begin near their base rate)."""
        init_prior_bias(model, train_labels)

    def save(self, folder: str | Path, names: list[str]) -> None:
        save_thresholds(folder, self.thresholds, names)


def task_for(label_map: LabelMap, thresholds: Thresholds | None = None) -> SingleLabelTask:
    """The task of a label set; ``thresholds`` are a multi-label model's (default 0.5 for every label)."""
    if not label_map.multi_label:
        return SingleLabelTask(len(label_map))
    return MultiLabelTask(len(label_map), thresholds)


def saved_task(folder: str | Path, label_map: LabelMap) -> SingleLabelTask:
    """The task of a model folder, with the decision thresholds tuned and saved after training."""
    return task_for(label_map, read_thresholds(folder, label_map.names) if label_map.multi_label else None)


class _Confusion:
    """Streaming single-label metrics: a confusion matrix on the device, no logits kept."""

    def __init__(self, num_labels: int, device):
        self.matrix = ConfusionMatrix(num_labels, device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.matrix.update(logits.argmax(-1), labels)

    def all_reduce(self) -> None:
        self.matrix.all_reduce()

    def report(self, names: list[str], loss_sum: float) -> EvalReport:
        counts = self.matrix.numpy()
        return report_from_confusion(counts, names, loss_sum / max(1, int(counts.sum())))


class _PerLabel:
    """Streaming multi-label metrics: per-label counts at the decision thresholds and histograms for tuning them."""

    def __init__(self, metrics: MultiLabelMetrics):
        self.metrics = metrics

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.metrics.update(logits, labels)

    def all_reduce(self) -> None:
        self.metrics.all_reduce()

    def report(self, names: list[str], loss_sum: float) -> EvalReport:
        return self.metrics.report(names, loss_sum / max(1, int(self.metrics.num_rows)))
