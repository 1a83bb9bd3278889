"""Tests for textclf.eval.metrics: every number equals scikit-learn's on the same predictions."""

from __future__ import annotations

import json
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


def _many_classes(classes: int = 3000, rows: int = 60_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.zeros((classes, classes), dtype=np.int64)
    truth = rng.integers(0, classes, rows)
    np.add.at(counts, (truth, np.where(rng.random(rows) < 0.7, truth, rng.integers(0, classes, rows))), 1)
    counts[5, 9] += 40  # the most frequent confusion
    counts[9, 5] += 30
    return counts


def test_thousands_of_classes_keep_the_reports_small(tmp_path):
    """3,000 classes made metrics.json and report.txt about 200 MB each and printed a 3,000-column matrix: the text
    lists the top confusions and metrics.json holds the matrix sparse (its size grows with the classes, not their
    square); the dense matrix stays on the report object, and is written only when asked for."""
    from textclf.eval.analysis import RunReport
    from textclf.eval.metrics import MAX_SPARSE_CELLS, dense_confusion

    counts = _many_classes()
    names = [f"class-{i}" for i in range(len(counts))]
    report = report_from_confusion(counts, names, loss=1.5)
    run_report = RunReport(best_step=1)
    run_report.add("dev", report, report.format())
    run_report.add("test", report, report.format())
    run_report.write(tmp_path)
    assert (tmp_path / "metrics.json").stat().st_size < 2_000_000
    text = (tmp_path / "report.txt").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 2 * (len(names) + 60) and max(len(line) for line in text.splitlines()) < 200
    top = text.split("top confusions (true -> predicted: count")[1].split("\n\n")[0].splitlines()
    assert top[1].split() == ["class-5", "->", "class-9:", str(counts[5, 9])]  # the most frequent first
    assert top[2].split() == ["class-9", "->", "class-5:", str(counts[9, 5])] and len(top) == 31
    assert "the 3000-class matrix is not printed above 50 classes" in top[0]
    saved = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))["test"]
    matrix = saved["confusion_matrix"]
    assert matrix["format"] == "sparse" and matrix["num_classes"] == 3000
    assert len(matrix["cells"]) == MAX_SPARSE_CELLS + np.count_nonzero(np.diag(counts))
    kept = dense_confusion(matrix)
    assert (np.diag(kept) == np.diag(counts)).all() and kept[5, 9] == counts[5, 9]
    assert kept.sum() + matrix["rows_left_out"] == counts.sum()
    assert matrix["cells_left_out"] == np.count_nonzero(counts - np.diag(np.diag(counts))) - MAX_SPARSE_CELLS
    assert report.confusion_matrix == counts.tolist()  # the API keeps it all ...
    assert report.to_dict(full_matrix=True)["confusion_matrix"] == counts.tolist()  # ... and writes it on request
    assert report["macro_f1"] == report.macro_f1


def test_a_sparse_matrix_is_complete_when_nothing_is_left_out_and_readers_take_it(tmp_path):
    from textclf.eval.calibration import plot_confusion
    from textclf.eval.html_report import write_evaluation_report
    from textclf.eval.metrics import dense_confusion, metrics_json, sparse_confusion
    from textclf.train.loggers import JsonlLogger, TensorBoardLogger

    counts = _many_classes(classes=200, rows=3000)
    names = [f"c{i}" for i in range(200)]
    matrix = sparse_confusion(counts)
    assert matrix["cells_left_out"] == matrix["rows_left_out"] == 0 and (dense_confusion(matrix) == counts).all()
    assert json.loads(metrics_json({"m": matrix})) == json.loads(json.dumps({"m": matrix}))
    report = report_from_confusion(counts, names).to_dict()
    plot_confusion(tmp_path / "confusion.png", report["confusion_matrix"], names)  # the top confusions, as bars
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    page = write_evaluation_report(report, tmp_path / "eval.html", "model", "data.csv")  # textclf evaluate --output
    assert "data:image/png;base64," in page.read_text(encoding="utf-8")
    logger = JsonlLogger(tmp_path / "log.jsonl")  # one evaluation's line, sparse as well
    logger.log_confusion(counts, names, 10, "dev")
    logger.close()
    assert (tmp_path / "log.jsonl").stat().st_size < 60_000

    class Writer:  # TensorBoard's text table: the top confusions, not 200 columns
        def add_image(self, *args, **kwargs):
            pass

        def add_text(self, tag, text, step):
            self.text = text

    tensorboard = TensorBoardLogger.__new__(TensorBoardLogger)
    tensorboard.writer = Writer()
    tensorboard.log_confusion(counts, names, 10, "dev")
    assert tensorboard.writer.text.startswith("| true | predicted | rows |") and \
        len(tensorboard.writer.text.splitlines()) == 2 + 30


def test_small_label_sets_keep_the_dense_matrix():
    from textclf.eval.metrics import MAX_MATRIX_CLASSES

    counts = _many_classes(classes=MAX_MATRIX_CLASSES, rows=2000)
    report = report_from_confusion(counts, [f"c{i}" for i in range(MAX_MATRIX_CLASSES)])
    assert report.to_dict()["confusion_matrix"] == counts.tolist()
    assert "confusion matrix (rows: true, columns: predicted)" in report.format()
