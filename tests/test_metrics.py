"""Tests for textclf.eval.metrics: every number equals scikit-learn's on the same predictions."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, classification_report, f1_score, precision_recall_fscore_support

from textclf.eval.metrics import ConfusionMatrix, confusion_image, report_from_confusion

NAMES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]


def _random_predictions(seed: int, n: int = 300, num_classes: int = len(NAMES)):
    """Predictions that are right ~half the time, with class 4 never predicted and class 5 absent from targets."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, num_classes - 1, size=n)  # class 5 has no support
    noise = rng.choice([0, 1, 2, 3, 5], size=n)  # class 4 is never predicted by chance ...
    predictions = np.where(rng.random(n) < 0.5, targets, noise)
    predictions[predictions == 4] = 0  # ... nor when right
    return predictions, targets


def _report(predictions, targets, names=NAMES):
    matrix = ConfusionMatrix(len(names))
    matrix.update(torch.as_tensor(predictions), torch.as_tensor(targets))
    return report_from_confusion(matrix.numpy(), names)


def test_confusion_matrix_counts():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 1, 1, 2]))
    assert matrix.numpy().tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 0]]  # rows true, columns predicted
    assert matrix.numpy().sum() == 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed):
    predictions, targets = _random_predictions(seed)
    report = _report(predictions, targets)
    labels = list(range(len(NAMES)))
    assert report.accuracy == pytest.approx(accuracy_score(targets, predictions), abs=1e-12)
    for average, value in (("macro", report.macro_f1), ("micro", report.micro_f1), ("weighted", report.weighted_f1)):
        expected = f1_score(targets, predictions, labels=labels, average=average, zero_division=0)
        assert value == pytest.approx(expected, abs=1e-12), average
    precision, recall, f1, support = precision_recall_fscore_support(targets, predictions, labels=labels,
                                                                     zero_division=0)
    for i, name in enumerate(NAMES):
        scores = report.per_class[name]
        assert scores.precision == pytest.approx(precision[i], abs=1e-12), name
        assert scores.recall == pytest.approx(recall[i], abs=1e-12), name
        assert scores.f1 == pytest.approx(f1[i], abs=1e-12), name
        assert scores.support == support[i], name
    assert report.num_rows == len(targets)
    # The fixture really exercises zero_division: one class never predicted, one never true.
    assert report.per_class["epsilon"].precision == 0.0 and report.per_class["epsilon"].support > 0
    assert report.per_class["zeta"].support == 0 and report.per_class["zeta"].recall == 0.0


def test_streaming_equals_one_shot():
    predictions, targets = _random_predictions(7, n=517)
    one_shot = _report(predictions, targets)
    matrix = ConfusionMatrix(len(NAMES))
    for start in range(0, len(targets), 64):  # uneven last batch
        matrix.update(torch.as_tensor(predictions[start : start + 64]), torch.as_tensor(targets[start : start + 64]))
    streamed = report_from_confusion(matrix.numpy(), NAMES)
    assert streamed.confusion_matrix == one_shot.confusion_matrix
    assert streamed.to_dict() == one_shot.to_dict()


def test_report_dict_and_indexing():
    predictions, targets = _random_predictions(3)
    report = _report(predictions, targets)
    data = report.to_dict()
    assert set(data) >= {"accuracy", "macro_f1", "micro_f1", "weighted_f1", "loss", "num_rows", "per_class",
                         "confusion_matrix", "labels"}
    assert report["macro_f1"] == report.macro_f1 and report["accuracy"] == report.accuracy
    assert data["labels"] == NAMES and list(data["per_class"]) == NAMES
    assert np.array(data["confusion_matrix"]).sum() == len(targets)


def test_perfect_and_empty():
    perfect = _report(np.arange(6), np.arange(6))
    assert perfect.accuracy == perfect.macro_f1 == perfect.weighted_f1 == 1.0
    empty = report_from_confusion(np.zeros((3, 3), dtype=int), ["a", "b", "c"])
    assert empty.accuracy == 0.0 and empty.macro_f1 == 0.0 and empty.num_rows == 0


def _rows(text: str) -> dict[str, list[float]]:
    """Parse classification-report lines into {row name: numbers} (row names may contain spaces)."""
    rows = {}
    for line in text.splitlines():
        tokens = line.split()
        numbers = []
        while tokens and re.fullmatch(r"-?\d+(\.\d+)?", tokens[-1]):
            numbers.insert(0, float(tokens.pop()))
        if tokens and numbers:
            rows[" ".join(tokens)] = numbers
    return rows


def test_format_has_sklearn_layout_and_numbers():
    predictions, targets = _random_predictions(5)
    report = _report(predictions, targets)
    text = report.format(digits=4)
    for name in NAMES:
        assert name in text
    head = text.splitlines()[0].split()
    assert head == ["precision", "recall", "f1-score", "support"]
    ours = _rows(text.split("confusion matrix")[0])
    theirs = _rows(classification_report(targets, predictions, labels=list(range(len(NAMES))), target_names=NAMES,
                                         digits=4, zero_division=0))
    assert set(theirs) == set(NAMES) | {"accuracy", "macro avg", "weighted avg"}
    assert ours == theirs
    assert "confusion matrix" in text


def test_format_includes_loss_and_matrix():
    report = report_from_confusion(np.array([[3, 1], [0, 2]]), ["neg", "pos"], loss=0.25)
    text = report.format()
    assert text.startswith("loss 0.2500")
    matrix_part = text.split("confusion matrix (rows: true, columns: predicted)")[1]
    assert [line.split() for line in matrix_part.strip().splitlines()] == [["neg", "pos"], ["neg", "3", "1"],
                                                                             ["pos", "0", "2"]]


def test_confusion_image_shape_and_shading():
    image = confusion_image(np.array([[9, 1], [0, 0]]), cell_pixels=4)
    assert image.shape == (3, 8, 8) and image.dtype == np.uint8
    assert image[:, 0, 0].tolist() != [255, 255, 255]  # a 90% cell is dark
    assert image[:, 4, 4].tolist() == [255, 255, 255]  # an empty row stays white
    assert image[2, 0, 0] < image[2, 0, 4] or image[0, 0, 0] < image[0, 0, 4]


def test_thousands_of_classes_draw_a_bounded_image_of_the_most_frequent(tmp_path):
    from textclf.eval.calibration import plot_confusion
    from textclf.eval.metrics import MAX_IMAGE_CLASSES, MAX_IMAGE_PIXELS, most_frequent_classes

    classes = 3000  # at 24 pixels a cell the full image needed 38.6 GiB and the run died at its first evaluation
    rng = np.random.default_rng(0)
    counts = np.zeros((classes, classes), dtype=np.int64)
    truth = rng.integers(0, classes, 20_000)
    np.add.at(counts, (truth, np.where(rng.random(20_000) < 0.8, truth, rng.integers(0, classes, 20_000))), 1)
    counts[7, 7] += 5000  # a dominant class must be among those drawn
    image = confusion_image(counts)
    assert image.shape[0] == 3 and image.shape[1] == image.shape[2] <= MAX_IMAGE_PIXELS
    assert image.shape[1] == MAX_IMAGE_CLASSES * 4  # 256 classes at 4 pixels a cell
    kept = most_frequent_classes(counts, MAX_IMAGE_CLASSES)
    assert len(kept) == MAX_IMAGE_CLASSES and 7 in kept and list(kept) == sorted(kept)
    plot_confusion(tmp_path / "confusion.png", counts, [f"class-{i}" for i in range(classes)])
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    small = np.eye(4, dtype=np.int64) * 3
    assert confusion_image(small).shape == (3, 96, 96)  # a few classes keep 24-pixel cells
