"""Calibration: temperature scaling fitted on dev, expected calibration error, reliability and confusion plots.

Temperature scaling (Guo et al., 2017) divides a single-label model's logits by one scalar ``T`` fitted to
minimise the negative log-likelihood of the dev split. The argmax, hence every predicted label and metric that
depends on labels, is unchanged; only the probabilities move (``T > 1`` softens an over-confident model). The
fitted ``T`` is saved in the model folder's ``textclf.json`` (``"calibration": {"temperature": T, ...}``) and
:class:`~textclf.deploy.predict.Predictor` applies it to every probability it returns.

The expected calibration error (ECE) is the mean |accuracy - confidence| over 15 equal-width confidence bins,
weighted by the share of rows in each bin; :class:`CalibrationBins` accumulates it batch by batch, so evaluation
still never holds every logit. Fitting ``T`` does hold the dev split's logits (``[N, C]`` floats: 4 MB for 100k
rows of 10 classes).

Multi-label models are not temperature-scaled (their per-label sigmoids need per-label thresholds rather than one
temperature); their ECE is not reported either.

Plots are written with matplotlib when it is installed; without it, a plain PNG (written with zlib, no
dependency) shows the same bars and matrix without axis labels. Label names are drawn as plain text
(:func:`plain_text`): matplotlib reads text between two ``$`` as mathtext and raised on a label such as ``$\\frac$``.
A picture that cannot be drawn anyway costs only itself (:func:`draw_safely`): the numbers are in ``metrics.json``
and ``report.txt``, written first.
"""

from __future__ import annotations

import contextlib
import math
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .fonts import axis_labels
from .metrics import confusion_image, dense_confusion, top_confusions

NUM_BINS = 15
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """The temperature ``T`` minimising the cross-entropy of ``logits / T`` against ``labels``.

    Args:
        logits: ``[N, C]`` single-label logits (array or tensor).
        labels: ``[N]`` class ids.
        max_iter: L-BFGS iterations (on ``log T``, so ``T`` stays positive).

    Returns:
        ``T`` in [0.05, 20]; 1.0 when there are no rows or scaling does not lower the dev loss.
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(logits) == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE))
    with torch.no_grad():
        before = float(F.cross_entropy(logits, labels))
        after = float(F.cross_entropy(logits / temperature, labels))
    return temperature if math.isfinite(temperature) and after < before else 1.0


class CalibrationBins:
    """Streaming reliability statistics of top-1 confidence in ``num_bins`` equal-width bins.

    ``update(probabilities, labels)`` per batch; :attr:`ece` and :meth:`to_dict` at the end.
    """

    def __init__(self, num_bins: int = NUM_BINS):
        self.num_bins = num_bins
        self.count = np.zeros(num_bins, dtype=np.int64)
        self.confidence = np.zeros(num_bins)
        self.correct = np.zeros(num_bins)

    def update(self, probabilities, labels) -> None:
        """Add a batch: ``probabilities`` ``[B, C]`` (rows sum to 1), ``labels`` ``[B]`` class ids."""
        probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
        confidence, predicted = probabilities.max(1), probabilities.argmax(1)
        # Bin k holds confidences in (k/n, (k+1)/n]; the first bin also holds 0.
        bins = np.clip(np.ceil(confidence * self.num_bins).astype(int) - 1, 0, self.num_bins - 1)
        self.count += np.bincount(bins, minlength=self.num_bins)
        self.confidence += np.bincount(bins, weights=confidence, minlength=self.num_bins)
        self.correct += np.bincount(bins, weights=(predicted == labels).astype(float), minlength=self.num_bins)

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of (rows in bin / rows) x |accuracy - mean confidence|."""
        total = self.count.sum()
        return float(np.abs(self.correct - self.confidence).sum() / total) if total else 0.0

    def accuracy_per_bin(self) -> np.ndarray:
        return np.divide(self.correct, self.count, out=np.full(self.num_bins, np.nan), where=self.count > 0)

    def confidence_per_bin(self) -> np.ndarray:
        return np.divide(self.confidence, self.count, out=np.full(self.num_bins, np.nan), where=self.count > 0)

    def to_dict(self) -> dict:
        return {"ece": self.ece, "bins": self.num_bins, "count": self.count.tolist(),
                "accuracy": [None if math.isnan(x) else x for x in self.accuracy_per_bin()],
                "confidence": [None if math.isnan(x) else x for x in self.confidence_per_bin()]}


def expected_calibration_error(probabilities, labels, num_bins: int = NUM_BINS) -> float:
    """ECE of ``probabilities`` ``[N, C]`` against ``labels`` ``[N]`` (see :class:`CalibrationBins`)."""
    bins = CalibrationBins(num_bins)
    bins.update(probabilities, labels)
    return bins.ece


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(1, keepdims=True)


# ==================================================================================================== plots


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an ``[H, W, 3]`` uint8 RGB image as PNG with zlib only (no imaging library needed)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(height))  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                           + chunk(b"IEND", b""))


class PlotWarning(UserWarning):
    """A picture could not be drawn; what it shows is in ``metrics.json`` and ``report.txt``."""


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception:  # not installed, or no usable backend: fall back to the dependency-free PNG
        return None
    return plt


def plain_text(text: str) -> str:
    """``text`` as matplotlib draws it literally: every ``$`` escaped, so a label with two of them is not read as
    mathtext (``$\\frac$`` raised at savefig and ``$5-$10`` lost its dollars)."""
    return str(text).replace("$", r"\$")


@contextlib.contextmanager
def plain_rc():
    """matplotlib settings under which text is drawn as given: a user's ``text.usetex`` would send every label
    through LaTeX, where ``%``, ``&``, ``_`` and ``#`` are commands."""
    import matplotlib

    with matplotlib.rc_context({"text.usetex": False}):
        yield


def draw_safely(path: str | Path, draw, *args, numbers_in: str = "metrics.json and report.txt") -> bool:
    """``draw(path, *args)``; a failure becomes a :class:`PlotWarning` naming the picture and where its numbers are
    (``numbers_in``), and leaves no half-written file: a picture never costs a run its reports. Returns whether the
    picture was written."""
    try:
        draw(path, *args)
        return True
    except Exception as exc:  # noqa: BLE001 -- any drawing error: the numbers are already written elsewhere
        plt = pyplot()
        if plt is not None:
            plt.close("all")
        with contextlib.suppress(OSError):
            Path(path).unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()
        warnings.warn(f"{Path(path).name} could not be drawn ({type(exc).__name__}: "
                      f"{reason[-1] if reason else 'no details'}); the numbers it shows are in {numbers_in}",
                      PlotWarning, stacklevel=2)
        return False


def plot_reliability(path: str | Path, before: CalibrationBins, after: CalibrationBins | None = None,
                     title: str = "") -> None:
    """Reliability diagram: accuracy per confidence bin (bars) against the diagonal, before and after scaling."""
    plt = pyplot()
    curves = [("before", before, "#d62728")] + ([("after", after, "#1f77b4")] if after is not None else [])
    if plt is None:
        _reliability_png(path, [bins for _, bins, _ in curves])
        return
    with plain_rc():
        _draw_reliability(plt, path, curves, before.num_bins, title)


def _draw_reliability(plt, path, curves, num_bins: int, title: str) -> None:
    figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
    edges = np.linspace(0, 1, num_bins + 1)
    width = 1 / num_bins / len(curves)
    axis.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
    for j, (name, bins, color) in enumerate(curves):
        accuracy = np.nan_to_num(bins.accuracy_per_bin())
        axis.bar(edges[:-1] + j * width, accuracy, width=width, align="edge", color=color, alpha=0.7,
                 label=f"{name} scaling (ECE {bins.ece:.3f})")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy",
             title=plain_text(title or "reliability diagram"))
    axis.legend(loc="upper left", fontsize=8)
    _save(plt, figure, path)


def _save(plt, figure, path) -> None:
    """Save and close ``figure`` (closed even when saving fails: pyplot keeps every open figure alive)."""
    try:
        figure.tight_layout()
        figure.savefig(str(path))
    finally:
        plt.close(figure)


def _reliability_png(path, curves: list[CalibrationBins], size: int = 300) -> None:
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    colors = [(214, 39, 40), (31, 119, 180)]
    bin_width = size / curves[0].num_bins
    for j, bins in enumerate(curves):
        for k, accuracy in enumerate(np.nan_to_num(bins.accuracy_per_bin())):
            left = int(k * bin_width + j * bin_width / len(curves))
            right = int(k * bin_width + (j + 1) * bin_width / len(curves))
            top = size - int(round(accuracy * (size - 1))) - 1
            image[top:, left:right] = colors[j]
    diagonal = np.arange(size)
    image[size - 1 - diagonal, diagonal] = (128, 128, 128)
    write_png(path, image)


# Class names stay readable up to about this many per axis; above it the picture shows the top confusions.
MAX_PLOTTED_CLASSES = 60
TOP_PLOTTED_CONFUSIONS = 30


def plot_confusion(path: str | Path, counts, label_names: list[str], title: str = "") -> None:
    """Confusion matrix (rows: true label, columns: predicted), shaded by share of the true class, with counts.

    ``counts`` is a matrix (rows) or the sparse form of ``metrics.json`` (:func:`~textclf.eval.metrics.
    sparse_confusion`). Above :data:`MAX_PLOTTED_CLASSES` classes the picture is a bar chart of the most frequent
    confusions instead: no one reads a matrix of thousands of classes.
    """
    plt = pyplot()
    if len(label_names) > MAX_PLOTTED_CLASSES:
        if plt is None:  # the dependency-free picture: the most frequent classes' matrix, no names
            write_png(path, confusion_image(dense_confusion(counts)).transpose(1, 2, 0))
            return
        with plain_rc():
            _draw_top_confusions(plt, path, counts, label_names, title)
        return
    counts = dense_confusion(counts)
    if plt is None:
        write_png(path, confusion_image(counts).transpose(1, 2, 0))
        return
    with plain_rc():
        _draw_matrix(plt, path, counts, label_names, title)


def _draw_matrix(plt, path, counts: np.ndarray, label_names: list[str], title: str) -> None:
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = max(4.0, 0.5 * len(label_names) + 2)
    figure, axis = plt.subplots(figsize=(side, side), dpi=100)
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(label_names))
    labels = axis_labels(label_names)  # Chinese names need a font with their glyphs, or indices
    names = [plain_text(name) for name in labels.names]
    axis.set_xticks(ticks, names, rotation=45, ha="right", fontsize=8, fontproperties=labels.font)
    axis.set_yticks(ticks, names, fontsize=8, fontproperties=labels.font)
    if labels.note:
        _draw_key(axis, labels.note)
    if len(label_names) <= 30:
        for i in ticks:
            for j in ticks:
                axis.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                          color="white" if shares[i, j] > 0.5 else "black")
    axis.set(xlabel="predicted", ylabel="true", title=plain_text(title or "confusion matrix"))
    _save(plt, figure, path)


def _draw_key(axis, note: str) -> None:
    """``note`` (the key to class numbers) under the x-axis label: an annotation of the axes, so tight_layout makes
    room for it (a figure text at the bottom was drawn over the tick labels). Plain text: names may hold ``$``."""
    axis.annotate(plain_text(note), xy=(0.5, 0), xycoords=axis.xaxis.label, xytext=(0, -6), textcoords="offset points",
                  ha="center", va="top", fontsize=6, wrap=True)


def _draw_top_confusions(plt, path, counts, label_names: list[str], title: str) -> None:
    """Horizontal bars, one per (true -> predicted) pair, the most frequent at the top."""
    top = top_confusions(counts, TOP_PLOTTED_CONFUSIONS)
    involved = sorted({i for t, p, _ in top for i in (t, p)})
    labels = axis_labels([label_names[i] for i in involved], involved)  # numbered by class id, if numbered
    name = dict(zip(involved, (plain_text(n) for n in labels.names)))
    figure, axis = plt.subplots(figsize=(8, max(3.0, 0.3 * len(top) + 1.5)), dpi=100)
    axis.barh(range(len(top)), [n for _, _, n in top], color="#1f77b4")
    axis.set_yticks(range(len(top)), [f"{name[t]} -> {name[p]}" for t, p, _ in top], fontsize=8,
                    fontproperties=labels.font)
    axis.invert_yaxis()  # the most frequent first
    if labels.note:
        _draw_key(axis, labels.note)
    if not top:
        axis.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=axis.transAxes)
    heading = (f"{title or 'confusion matrix'}\nthe {len(top)} most frequent confusions (true -> predicted) of "
               f"{len(label_names)} classes")
    axis.set(xlabel="rows", title=plain_text(heading))
    _save(plt, figure, path)
