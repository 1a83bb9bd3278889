"""Error analysis: only misclassified rows, their top-2 labels and probabilities, most confident mistakes first."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import TEXTS, build_tiny_classifier

from textclf.data.readers import Split
from textclf.eval.analysis import ERROR_COLUMNS, ErrorCollector
from textclf.eval.tasks import MultiLabelTask


def _read(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_collector_keeps_mistakes_sorted_by_confidence(tmp_path):
    split = Split("test", ["t0", "t1", "t2", "t3", "t4"], None, "x.csv", locations=[2, 3, 4, 5, 6],
                  location_kind="line")
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.2, 5.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    collector = ErrorCollector(["a", "b", "c"], temperature=2.0)
    # Rows arrive in any order (evaluation sorts them by length): two batches, out of order.
    collector.hook([3, 1], logits[[3, 1]], labels[[3, 1]])
    collector.hook([0, 2, 4], logits[[0, 2, 4]], labels[[0, 2, 4]])
    assert collector.write(tmp_path / "errors.csv", split) == 3
    rows = _read(tmp_path / "errors.csv")
    assert list(rows[0]) == ERROR_COLUMNS
    assert [r["text"] for r in rows] == ["t2", "t3", "t1"]  # confidence 0.90, 0.58, 0.42 at T = 2
    assert [r["line"] for r in rows] == ["4", "5", "3"] and [r["label"] for r in rows] == ["b", "b", "a"]
    probs = (logits[2] / 2).softmax(-1).numpy()
    assert rows[0]["top1"] == rows[0]["predicted"] == "c" and rows[0]["top2"] == "b"
    assert float(rows[0]["top1_prob"]) == pytest.approx(probs[2], abs=1e-4)
    assert float(rows[0]["top2_prob"]) == pytest.approx(probs[1], abs=1e-4)
    confidences = [float(r["confidence"]) for r in rows]
    assert confidences == sorted(confidences, reverse=True)


def test_multi_label_errors_compare_label_sets(tmp_path):
    split = Split("test", ["u", "v"], None, "<list>")
    collector = ErrorCollector(["x", "y", "z"], MultiLabelTask(3))
    collector.hook([0, 1], torch.tensor([[3.0, 3.0, -3.0], [3.0, -3.0, -3.0]]),
                   torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))
    collector.write(tmp_path / "e.csv", split)
    (row,) = _read(tmp_path / "e.csv")
    assert row["text"] == "v" and row["label"] == "x|z" and row["predicted"] == "x"


def test_cli_evaluate_writes_errors(tiny_model_dir, tmp_path):
    from textclf.cli import main
    from textclf.deploy.predict import Predictor

    folder = build_tiny_classifier(tiny_model_dir, tmp_path / "m", ["a", "b", "c"])
    predicted = [p.label for p in Predictor.from_pretrained(folder, device="cpu", precision="fp32").predict(TEXTS)]
    gold = ["a", "b", "c", "a", "b", "c", "a"]
    data = tmp_path / "eval.csv"
    with open(data, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([["text", "label"], *zip(TEXTS, gold)])
    assert main(["evaluate", "--model", str(folder), "--data", str(data), "--errors", str(tmp_path / "err.csv"),
                 "--device", "cpu", "--output", str(tmp_path / "eval.json")]) == 0
    rows = _read(tmp_path / "err.csv")
    wrong = [i for i, (p, g) in enumerate(zip(predicted, gold)) if p != g]
    assert len(rows) == len(wrong) > 0
    assert sorted(int(r["line"]) for r in rows) == [i + 2 for i in wrong]  # line 1 is the header
    assert all(r["predicted"] == predicted[int(r["line"]) - 2] != r["label"] for r in rows)
    assert np.all(np.diff([float(r["confidence"]) for r in rows]) <= 0)
    page = (tmp_path / "eval.html").read_text(encoding="utf-8")  # the page beside eval.json lists the errors
    assert "Most confident errors" in page and "err.csv" in page


def test_run_report_writes_both_files_atomically(tmp_path):
    from textclf.eval.analysis import RunReport

    class Report:
        def to_dict(self):
            return {"accuracy": 0.5}

    run_report = RunReport(best_step=3, metric="macro_f1")
    run_report.add("dev", Report(), "== dev ==\naccuracy 0.5")
    run_report.add("test", Report(), "== test ==\naccuracy 0.5")
    run_report.write(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "best_step": 3, "metric": "macro_f1", "dev": {"accuracy": 0.5}, "test": {"accuracy": 0.5}}
    assert (tmp_path / "report.txt").read_text() == "== dev ==\naccuracy 0.5\n\n== test ==\naccuracy 0.5\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.txt"]  # no temporary file left


def _dollar_data(folder, tiny_data_dir):
    """The tiny data set with two labels matplotlib would read as (broken) mathtext."""
    folder.mkdir()
    names = {"stocks": "price $^$ up", "realty": r"$\frac$"}
    for split in ("train", "dev", "test"):
        with open(tiny_data_dir / f"{split}.csv", encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows([rows[0]] + [[text, names.get(label, label)] for text, label in rows[1:]])
    return folder


TRAIN = ["--max-steps", "2", "--max-length", "16", "--batch-size", "16", "--device", "cpu", "--precision", "fp32"]


def test_labels_with_dollar_signs_are_drawn_as_written(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    """`$\\frac$` raised in confusion.png after training had finished: no metrics.json, no report.txt."""
    from textclf.cli import main

    out = tmp_path / "run"
    code = main(["train", "--data", str(_dollar_data(tmp_path / "data", tiny_data_dir)), "--model",
                 str(tiny_model_dir), "--output", str(out), *TRAIN])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning" not in err, err
    assert {"metrics.json", "report.txt", "confusion.png", "reliability.png", "report.html"} <= {
        p.name for p in out.iterdir()}
    assert r"$\frac$" in json.loads((out / "metrics.json").read_text(encoding="utf-8"))["test"]["labels"]


def test_a_picture_that_fails_costs_only_itself(tiny_model_dir, tiny_data_dir, tmp_path, capsys, monkeypatch):
    """metrics.json and report.txt are written before any picture; a failing one is a warning that names it."""
    import textclf.eval.analysis
    from textclf.cli import main

    def broken(path, *args):
        Path(path).write_bytes(b"\x89PNG half")  # a half-written picture must not stay behind
        raise ValueError("a drawing library failed\nin some way")

    monkeypatch.setattr(textclf.eval.analysis, "plot_confusion", broken)
    out = tmp_path / "run"
    code = main(["train", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output", str(out), *TRAIN])
    err = capsys.readouterr().err
    assert code == 0, err
    assert ("textclf train: warning: confusion.png could not be drawn (ValueError: in some way); the numbers it "
            "shows are in metrics.json and report.txt") in err
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["test"]["num_rows"] == 50
    assert "confusion matrix (rows: true" in (out / "report.txt").read_text(encoding="utf-8")
    assert not (out / "confusion.png").exists()
    assert {"errors.csv", "reliability.png", "report.html", "best"} <= {p.name for p in out.iterdir()}
