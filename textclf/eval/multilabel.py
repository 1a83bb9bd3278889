"""Multi-label evaluation and decision thresholds, streamed (no logits are kept).

A multi-label model scores every label independently (sigmoid); a label is predicted when its probability
reaches that label's threshold. Evaluation folds each batch into three small device tensors:

* per-label counts ``[K, C, 3]`` (true positives, false positives, false negatives) and per-row sums
  ``[K, 2]`` (sample F1, exact matches) for each of ``K`` threshold sets (the applied one, and for comparison
  0.5, the tuned global and the tuned per-label thresholds);
* probability histograms ``[C, 2, NUM_BINS]`` of the negatives and positives of every label.

From the histograms the true/false positives of every label at every bin edge ``k / NUM_BINS`` follow by a
suffix sum, so thresholds are tuned on dev exactly (for thresholds on the edge grid, 0.005 apart with 200 bins)
without holding ``[N, C]`` probabilities: :func:`tune_thresholds` picks the global threshold that maximises
micro F1 and, per label, the one that maximises that label's F1 (labels with fewer than ``min_positives`` dev
positives keep the global one: a threshold fitted to three examples is noise).

Definitions follow scikit-learn with ``zero_division=0``: micro F1 pools the counts of all labels, macro F1 is
the mean of the per-label F1s, sample F1 the mean over rows of each row's F1 (0 for a row with neither true nor
predicted labels), subset accuracy the share of rows whose predicted label set is exactly right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import THRESHOLD_MODES
from ..errors import ConfigError
from ..model import bundle
from .metrics import EvalReport, align, class_scores, display_width, weighted_mean

NUM_BINS = 200


# ==================================================================================================== thresholds


@dataclass
class Thresholds:
    """Decision thresholds of a multi-label model, as saved in ``textclf.json`` under ``"thresholds"``.

    Attributes:
        values: the threshold applied to each label, ``[C]``.
        mode: ``"none"`` (0.5 everywhere), ``"global"`` or ``"per_label"`` (how ``values`` was chosen).
        global_value: the tuned global threshold (0.5 when not tuned).
        per_label: the tuned per-label thresholds (None when not tuned); labels with too few dev positives hold
            ``global_value``.
        tuned_on: what the thresholds were tuned on (e.g. ``"dev (5413 rows)"``).
    """

    values: np.ndarray
    mode: str = "none"
    global_value: float = 0.5
    per_label: np.ndarray | None = None
    tuned_on: str | None = None

    @classmethod
    def fixed(cls, num_labels: int, value: float = 0.5) -> Thresholds:
        return cls(np.full(num_labels, value, dtype=np.float32), "none", value)

    def candidates(self) -> dict[str, np.ndarray]:
        """Threshold sets worth comparing in a report: the applied one first, then 0.5, global and per-label."""
        sets = {"applied": self.values, "0.5": np.full_like(self.values, 0.5)}
        if self.mode != "none":
            sets["global"] = np.full_like(self.values, self.global_value)
            if self.per_label is not None:
                sets["per_label"] = self.per_label
        return sets

    def to_dict(self, names: list[str]) -> dict:
        return {"mode": self.mode, "global": self.global_value, "tuned_on": self.tuned_on,
                "values": {name: round(float(v), 6) for name, v in zip(names, self.values)},
                "per_label": (None if self.per_label is None
                              else {name: round(float(v), 6) for name, v in zip(names, self.per_label)})}

    @classmethod
    def from_dict(cls, raw: dict, names: list[str], where: str = "textclf.json") -> Thresholds:
        """Read the ``"thresholds"`` entry of a model folder's metadata (label order from ``names``)."""
        try:
            values = np.asarray([float(raw["values"][name]) for name in names], dtype=np.float32)
            per_label = (None if raw.get("per_label") is None
                         else np.asarray([float(raw["per_label"][name]) for name in names], dtype=np.float32))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: the thresholds entry does not cover the model's labels ({exc!r}); "
                              "remove it (0.5 is then used) or retrain") from None
        return cls(values, raw.get("mode", "none"), float(raw.get("global", 0.5)), per_label, raw.get("tuned_on"))


def read_thresholds(folder: str | Path, names: list[str]) -> Thresholds:
    """The thresholds saved in ``folder/textclf.json``, or 0.5 for every label when none were saved."""
    raw = bundle.read_meta(folder).get("thresholds") if bundle.has_meta(folder) else None
    return Thresholds.from_dict(raw, names, str(Path(folder) / bundle.META_FILE)) if raw else Thresholds.fixed(
        len(names))


def save_thresholds(folder: str | Path, thresholds: Thresholds, names: list[str]) -> None:
    """Add ``"thresholds"`` to ``folder/textclf.json`` (atomically: a reader never sees half a file)."""
    bundle.update_meta(folder, thresholds=thresholds.to_dict(names))


def tune_thresholds(histograms: np.ndarray, mode: str = "per_label", min_positives: int = 5,
                    tuned_on: str | None = None) -> Thresholds:
    """Choose thresholds from probability histograms (see :class:`MultiLabelMetrics`).

    Args:
        histograms: ``[C, 2, NUM_BINS]`` counts of negatives (index 0) and positives (index 1) per probability bin.
        mode: ``"global"`` (one threshold maximising micro F1), ``"per_label"`` (each label's own, maximising its
            F1; the global one for labels with fewer than ``min_positives`` positives) or ``"none"`` (0.5).
        min_positives: fewest positives a label needs for its own threshold.
        tuned_on: a description stored with the thresholds.

    Returns:
        :class:`Thresholds`. Candidate thresholds are the bin edges ``1/NUM_BINS .. (NUM_BINS-1)/NUM_BINS``; among
        equally good ones the middle of the best run is taken, which is less fitted to the dev set than its edge.
    """
    if mode not in THRESHOLD_MODES:
        raise ConfigError(f"train.threshold_tuning: must be one of {THRESHOLD_MODES}, got {mode!r}")
    hist = np.asarray(histograms, dtype=np.float64)
    num_labels, bins = hist.shape[0], hist.shape[2]
    if mode == "none":
        return Thresholds.fixed(num_labels)
    # predicted positive at edge k (threshold k/bins) = every row in bins k..bins-1: suffix sums
    tp = np.flip(np.cumsum(np.flip(hist[:, 1], -1), -1), -1)[:, 1:]  # [C, bins-1], edges 1..bins-1
    fp = np.flip(np.cumsum(np.flip(hist[:, 0], -1), -1), -1)[:, 1:]
    positives = hist[:, 1].sum(-1, keepdims=True)
    fn = positives - tp
    edges = np.arange(1, bins) / bins
    micro = _f1(tp.sum(0), fp.sum(0), fn.sum(0))
    global_value = float(edges[_middle_of_best(micro)])
    values = np.full(num_labels, global_value, dtype=np.float32)
    per_label = None
    if mode == "per_label":
        per_label = values.copy()
        scores = _f1(tp, fp, fn)
        for c in range(num_labels):
            if positives[c, 0] >= max(1, min_positives):
                per_label[c] = edges[_middle_of_best(scores[c])]
        values = per_label
    return Thresholds(values.astype(np.float32), mode, global_value, per_label, tuned_on)


def _f1(tp, fp, fn):
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def _middle_of_best(scores: np.ndarray) -> int:
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    # the longest run of consecutive best edges containing the first best one, and its middle
    run_end = best[0]
    while run_end + 1 < len(scores) and scores[run_end + 1] >= scores.max() - 1e-12:
        run_end += 1
    return int((best[0] + run_end) // 2)


# ==================================================================================================== metrics


class MultiLabelMetrics:
    """Streaming multi-label counts for one evaluation (see the module docstring).

    Args:
        num_labels: ``C``.
        thresholds: named threshold sets ``{name: [C]}``; the first is the one the report's headline metrics use.
        device: where the counters live (the model's device: updates never sync with the host).
        num_bins: probability histogram bins per label.
    """

    def __init__(self, num_labels: int, thresholds: dict[str, np.ndarray], device: torch.device | str = "cpu",
                 num_bins: int = NUM_BINS):
        self.num_labels, self.num_bins = num_labels, num_bins
        self.names = list(thresholds)
        self.thresholds = torch.as_tensor(np.stack([np.asarray(t, dtype=np.float32) for t in thresholds.values()]),
                                          device=device)  # [K, C]
        self.counts = torch.zeros(len(self.names), num_labels, 3, dtype=torch.long, device=device)
        self.row_sums = torch.zeros(len(self.names), 2, dtype=torch.float64, device=device)
        self.histograms = torch.zeros(num_labels, 2, num_bins, dtype=torch.long, device=device)
        self.num_rows = torch.zeros((), dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``logits`` ``[B, C]`` and multi-hot ``targets`` ``[B, C]`` (no host sync)."""
        probs = logits.float().sigmoid()
        truth = targets.to(probs.device) > 0.5  # [B, C]
        bins = (probs * self.num_bins).long().clamp_(0, self.num_bins - 1)
        label = torch.arange(self.num_labels, device=probs.device)
        flat = (label * 2 + truth.long()) * self.num_bins + bins
        self.histograms += torch.bincount(flat.flatten(), minlength=self.histograms.numel()).view_as(self.histograms)
        predicted = probs[None] >= self.thresholds[:, None, :]  # [K, B, C]
        hit = predicted & truth[None]
        tp = hit.sum(1)
        fp = (predicted & ~truth[None]).sum(1)
        fn = (~predicted & truth[None]).sum(1)
        self.counts += torch.stack([tp, fp, fn], -1)
        row_tp, row_pred, row_true = hit.sum(-1), predicted.sum(-1), truth.sum(-1)[None]
        denominator = (row_pred + row_true).double()
        row_f1 = torch.where(denominator > 0, 2 * row_tp.double() / denominator.clamp(min=1), 0.0)
        exact = (predicted == truth[None]).all(-1).double()
        self.row_sums += torch.stack([row_f1.sum(-1), exact.sum(-1)], -1)
        self.num_rows += len(logits)

    def all_reduce(self) -> None:
        """Sum the counters of every rank (each rank evaluated a disjoint shard of the rows)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for tensor in (self.counts, self.row_sums, self.histograms, self.num_rows):
                torch.distributed.all_reduce(tensor)

    def report(self, label_names: list[str], loss: float | None = None) -> MultiLabelReport:
        """Every metric, for the first threshold set in full and for the others as a comparison table."""
        counts, row_sums = self.counts.cpu().numpy(), self.row_sums.cpu().numpy()
        rows = int(self.num_rows)
        summaries = {name: _summary(counts[k], row_sums[k], rows) for k, name in enumerate(self.names)}
        tp, fp, fn = (counts[0, :, i] for i in range(3))
        support = tp + fn
        per_class, f1 = class_scores(tp, tp + fp, support, label_names)
        head = summaries[self.names[0]]
        weighted = weighted_mean(f1, support)
        return MultiLabelReport(
            accuracy=head["subset_accuracy"], macro_f1=head["macro_f1"], micro_f1=head["micro_f1"],
            weighted_f1=weighted, loss=loss, num_rows=rows, per_class=per_class, confusion_matrix=[],
            label_names=list(label_names), samples_f1=head["samples_f1"],
            thresholds=[float(t) for t in self.thresholds[0].cpu()],
            by_threshold={name: s for name, s in summaries.items() if name != self.names[0]},
            per_label_counts=counts[0].tolist(), histograms=self.histograms.cpu().numpy(),
        )


def _summary(counts: np.ndarray, row_sums: np.ndarray, rows: int) -> dict[str, float]:
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    return {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())), "macro_f1": float(_f1(tp, fp, fn).mean()),
            "samples_f1": float(row_sums[0] / rows) if rows else 0.0,
            "subset_accuracy": float(row_sums[1] / rows) if rows else 0.0}


@dataclass
class MultiLabelReport(EvalReport):
    """An :class:`EvalReport` for multi-label data.

    ``accuracy`` is subset accuracy (exact label sets); ``micro_f1``/``macro_f1``/``weighted_f1`` and ``per_class``
    are over labels; ``confusion_matrix`` is empty (one per label would be 2x2: see ``per_label_counts``,
    ``[C, 3]`` true positives, false positives, false negatives). ``by_threshold`` holds the headline metrics at
    other threshold sets (0.5, global, per-label) for comparison; ``histograms`` feed :func:`tune_thresholds`.
    """

    samples_f1: float = 0.0
    thresholds: list[float] = field(default_factory=list)
    by_threshold: dict[str, dict[str, float]] = field(default_factory=dict)
    per_label_counts: list[list[int]] = field(default_factory=list)
    histograms: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self, full_matrix: bool = False) -> dict:
        return {**super().to_dict(full_matrix), "multi_label": True, "samples_f1": self.samples_f1,
                "subset_accuracy": self.accuracy, "thresholds": dict(zip(self.label_names, self.thresholds)),
                "by_threshold": self.by_threshold,
                "per_label_counts": {name: dict(zip(("tp", "fp", "fn"), c))
                                     for name, c in zip(self.label_names, self.per_label_counts)}}

    def format(self, digits: int = 4) -> str:
        """Per-label precision/recall/F1/support/threshold, the averages, and the threshold comparison."""
        width = max([display_width(n) for n in self.label_names] + [len("weighted avg")])
        lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9} {'threshold':>9}", ""]
        for (name, s), t in zip(self.per_class.items(), self.thresholds):
            lines.append(f"{align(name, width)} {s.precision:>9.{digits}f} {s.recall:>9.{digits}f} "
                         f"{s.f1:>9.{digits}f} {s.support:>9} {t:>9.3f}")
        tp, fp, fn = (np.asarray(self.per_label_counts, dtype=float)[:, i].sum() if self.per_label_counts else 0.0
                      for i in range(3))
        scores = list(self.per_class.values())
        total = int(sum(s.support for s in scores))
        micro_p = tp / (tp + fp) if tp + fp else 0.0
        micro_r = tp / (tp + fn) if tp + fn else 0.0
        lines.append("")
        lines.append(f"{'micro avg':>{width}} {micro_p:>9.{digits}f} {micro_r:>9.{digits}f} "
                     f"{self.micro_f1:>9.{digits}f} {total:>9}")
        for title, weights in (("macro avg", None), ("weighted avg", [s.support for s in scores])):
            p, r = (float(np.average([getattr(s, k) for s in scores], weights=weights))
                    if scores and (weights is None or sum(weights)) else 0.0 for k in ("precision", "recall"))
            f = self.macro_f1 if weights is None else self.weighted_f1
            lines.append(f"{title:>{width}} {p:>9.{digits}f} {r:>9.{digits}f} {f:>9.{digits}f} {total:>9}")
        lines.append(f"{'samples avg':>{width}} {'':>9} {'':>9} {self.samples_f1:>9.{digits}f} {self.num_rows:>9}")
        lines.append(f"{'subset acc':>{width}} {'':>9} {'':>9} {self.accuracy:>9.{digits}f} {self.num_rows:>9}")
        if self.by_threshold:
            lines += ["", f"{'thresholds':>{width}} {'micro F1':>9} {'macro F1':>9} {'sample F1':>9} {'subset':>9}"]
            rows = {"applied": {"micro_f1": self.micro_f1, "macro_f1": self.macro_f1,
                                "samples_f1": self.samples_f1, "subset_accuracy": self.accuracy},
                    **self.by_threshold}
            for name, s in rows.items():
                lines.append(f"{name:>{width}} {s['micro_f1']:>9.{digits}f} {s['macro_f1']:>9.{digits}f} "
                             f"{s['samples_f1']:>9.{digits}f} {s['subset_accuracy']:>9.{digits}f}")
        if self.loss is not None:
            lines.insert(0, f"loss {self.loss:.4f}\n")
        return "\n".join(lines)


def init_prior_bias(model, train_labels: np.ndarray) -> bool:
    """Start a fresh multi-label head at the training label frequencies: bias ``log(p / (1 - p))`` per label.

    With the bias at 0 every sigmoid starts at 0.5 while most labels are rare, so the first steps' gradients all
    push every logit down, through the encoder as much as through the head; on GoEmotions (28 labels) that drove
    MiniLM's pooled vectors to one point for every text (a model that outputs the label priors). Starting at the
    priors (as Lin et al. 2017 do for rare classes) leaves only the informative part of the gradient.

    Returns:
        True when ``model.head`` is a plain ``nn.Linear`` whose bias was set; custom heads are left alone.
    """
    head = getattr(model, "head", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is None or getattr(model, "custom_head", False):
        return False
    labels = np.asarray(train_labels, dtype=np.float64)
    prior = np.clip(labels.mean(0), 1e-4, 1 - 1e-4)  # a label absent from training would give log(0)
    with torch.no_grad():
        head.bias.copy_(torch.as_tensor(np.log(prior / (1 - prior)), dtype=head.bias.dtype))
    return True
