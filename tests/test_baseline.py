"""The TF-IDF baseline: accuracy on real data, probabilities, persistence, multi-label, reports, CLI and the
``train --baseline`` comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest

from textclf import cli
from textclf.errors import ConfigError, ModelLoadError, OutputDirError
from textclf.tools.baseline import TfidfBaseline, compare_with_baseline, is_mostly_cjk, multilabel_report, run_baseline

ENGLISH = ["What is the capital of China ?", "Who wrote Hamlet ?", "How many feet are in a mile ?"]


def test_fits_tiny_chinese_titles_well_above_chance(tiny_data):
    clf = TfidfBaseline(analyzer="auto").fit(tiny_data.train.texts, tiny_data.train.labels)
    assert clf.resolved_analyzer == "char"  # Chinese: character n-grams
    predicted = clf.predict(tiny_data.test.texts)
    assert set(predicted) <= set(tiny_data.label_map.names)
    accuracy = np.mean([p == y for p, y in zip(predicted, tiny_data.test.labels)])
    assert accuracy >= 0.4  # 10 classes: chance is 0.1; measured 0.58 on these 50 rows
    probabilities = clf.predict_proba(tiny_data.test.texts)
    assert probabilities.shape == (50, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert [clf.label_map.names[j] for j in probabilities.argmax(axis=1)] == predicted
    # evaluate() is the confusion-matrix report of the same predictions
    report = clf.evaluate(tiny_data.test.texts, tiny_data.test.labels)
    assert report.accuracy == pytest.approx(accuracy)
    assert np.trace(np.asarray(report.confusion_matrix)) == round(accuracy * 50)


def test_analyzer_auto_picks_words_for_english():
    assert not is_mostly_cjk(ENGLISH) and is_mostly_cjk(["北京欢迎你", "今天天气很好 ok"])
    clf = TfidfBaseline().fit(ENGLISH * 2, ["LOC", "HUM", "NUM"] * 2)
    assert clf.resolved_analyzer == "word"
    assert "?" in clf.vectorizer.vocabulary_ and "a" in clf.vectorizer.vocabulary_  # short tokens are kept
    assert clf.predict(["Who wrote Hamlet ?"]) == ["HUM"]


def test_save_load_round_trip(tiny_data, tmp_path):
    clf = TfidfBaseline().fit(tiny_data.train.texts, tiny_data.train.labels)
    folder = clf.save(tmp_path / "b")
    assert not list(folder.glob("*.pkl"))  # arrays and JSON only: loading runs no code
    again = TfidfBaseline.load(folder)
    np.testing.assert_allclose(again.predict_proba(tiny_data.dev.texts), clf.predict_proba(tiny_data.dev.texts),
                               atol=1e-5)  # the weights are stored as float32
    assert again.predict(tiny_data.dev.texts) == clf.predict(tiny_data.dev.texts)
    assert again.label_map.names == clf.label_map.names and again.resolved_analyzer == "char"
    (tmp_path / "old.pkl").write_bytes(b"not read")
    with pytest.raises(ModelLoadError, match="pickled baseline of an earlier textclf release"):
        TfidfBaseline.load(tmp_path / "old.pkl")
    with pytest.raises(ModelLoadError, match="does not exist"):
        TfidfBaseline.load(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="not a TF-IDF baseline folder"):
        TfidfBaseline.load(tmp_path)
    # saving over an earlier baseline is fine; into a folder of other files, never
    assert clf.save(folder) == folder
    with pytest.raises(OutputDirError, match="not a TF-IDF baseline"):
        clf.save(tmp_path)
    assert (tmp_path / "old.pkl").read_bytes() == b"not read" and not (tmp_path / "tfidf.json").exists()


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="baseline.analyzer"):
        TfidfBaseline(analyzer="bpe")
    with pytest.raises(ConfigError, match="call fit"):
        TfidfBaseline().predict(["x"])


def test_multi_label(tiny_data):
    money = {"finance", "stocks", "realty"}
    labels = [[y, "money"] if y in money else [y] for y in tiny_data.train.labels]
    clf = TfidfBaseline().fit(tiny_data.train.texts, labels)
    assert clf.label_map.multi_label and "money" in clf.label_map.names
    predicted = clf.predict(tiny_data.train.texts)
    assert all(isinstance(p, list) for p in predicted)
    truth = [[y, "money"] if y in money else [y] for y in tiny_data.test.labels]
    report = clf.evaluate(tiny_data.test.texts, truth)
    assert report.extra["multi_label"] and 0.0 <= report.micro_f1 <= 1.0


def test_multilabel_report_matches_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    truth = rng.random((40, 5)) < 0.3
    predicted = rng.random((40, 5)) < 0.3
    report = multilabel_report(truth, predicted, list("abcde"))
    assert report.micro_f1 == pytest.approx(f1_score(truth, predicted, average="micro", zero_division=0))
    assert report.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    assert report.accuracy == pytest.approx(accuracy_score(truth, predicted))
    assert np.diag(report.confusion_matrix).tolist() == (truth & predicted).sum(axis=0).tolist()


def test_run_baseline_writes_the_train_report_layout(tiny_data, tmp_path):
    result = run_baseline(tiny_data, tmp_path / "b")
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics) == {"baseline", "dev", "test"}
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "labels"):
        assert key in metrics["test"]
    clf = TfidfBaseline.load(tmp_path / "b")
    assert metrics["test"]["accuracy"] == pytest.approx(
        np.mean([p == y for p, y in zip(clf.predict(tiny_data.test.texts), tiny_data.test.labels)]))
    assert "confusion matrix" in (tmp_path / "b" / "report.txt").read_text(encoding="utf-8")
    assert result["test"]["accuracy"] == metrics["test"]["accuracy"]


def test_compare_with_baseline_adds_scores_to_metrics(tiny_data, tmp_path):
    run = {"dev": {"accuracy": 0.5, "macro_f1": 0.4, "micro_f1": 0.5},
           "test": {"accuracy": 0.6, "macro_f1": 0.55, "micro_f1": 0.6}}
    (tmp_path / "metrics.json").write_text(json.dumps(run))
    table = compare_with_baseline(tmp_path, tiny_data)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    baseline_test = metrics["baseline"]["test"]["accuracy"]
    assert metrics["test"] == run["test"]  # the run's own scores stay
    assert f"{0.6 - baseline_test:+.4f}" in table
    with pytest.raises(ConfigError, match="finished run"):
        compare_with_baseline(tmp_path / "nothing", tiny_data)


def test_cli_baseline(tiny_data_dir, tmp_path, capsys):
    assert cli.main(["baseline", "--data", str(tiny_data_dir), "--output", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "== test (50 rows" in out and "char n-grams" in out
    assert (tmp_path / "b" / "tfidf.safetensors").is_file() and not (tmp_path / "b" / "baseline.pkl").exists()
    assert cli.main(["baseline", "--data", str(tmp_path / "missing")]) == 2


def test_cli_train_baseline_flag(tiny_data_dir, tiny_model_dir, tmp_path, capsys):
    code = cli.main(["train", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output",
                     str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "8", "--precision", "fp32",
                     "--device", "cpu", "--quiet", "--baseline"])
    assert code == 0
    out = capsys.readouterr().out
    assert "TF-IDF baseline on the same splits" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["baseline"]["test"]["num_rows"] == 50 and "accuracy" in metrics["test"]
