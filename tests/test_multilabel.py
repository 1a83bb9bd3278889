"""Multi-label end to end: streaming metrics equal scikit-learn's, threshold tuning finds the best F1 on the bin
grid, tuned thresholds are saved with the model and applied by the Predictor (PyTorch and ONNX folders), the
Trainer evaluates and selects models with multi-label metrics, and ``textclf evaluate`` prints the report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

import textclf
from textclf.eval.multilabel import (
    NUM_BINS,
    MultiLabelMetrics,
    Thresholds,
    read_thresholds,
    save_thresholds,
    tune_thresholds,
)


def _random_case(seed: int = 0, rows: int = 300, labels: int = 6):
    rng = np.random.default_rng(seed)
    truth = (rng.random((rows, labels)) < np.linspace(0.05, 0.5, labels)).astype(np.float32)
    logits = rng.normal(size=(rows, labels)) + 2.5 * (truth - 0.5)
    return torch.tensor(logits, dtype=torch.float32), truth


def _accumulate(logits, truth, thresholds: dict, batch: int = 64) -> textclf.EvalReport:
    metrics = MultiLabelMetrics(truth.shape[1], thresholds)
    for i in range(0, len(truth), batch):
        metrics.update(logits[i : i + batch], torch.tensor(truth[i : i + batch]))
    return metrics.report([f"l{c}" for c in range(truth.shape[1])], loss=0.0)


def test_streaming_metrics_equal_sklearn_at_per_label_thresholds():
    logits, truth = _random_case()
    thresholds = np.array([0.2, 0.35, 0.5, 0.55, 0.6, 0.75], dtype=np.float32)
    report = _accumulate(logits, truth, {"applied": thresholds, "0.5": np.full(6, 0.5)})
    predicted = (logits.sigmoid().numpy() >= thresholds).astype(int)
    assert report.micro_f1 == pytest.approx(f1_score(truth, predicted, average="micro"), abs=1e-12)
    assert report.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
    assert report.weighted_f1 == pytest.approx(f1_score(truth, predicted, average="weighted"), abs=1e-12)
    assert report.samples_f1 == pytest.approx(f1_score(truth, predicted, average="samples", zero_division=0),
                                              abs=1e-12)
    assert report.accuracy == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
    for c, scores in enumerate(report.per_class.values()):
        assert (scores.precision, scores.recall, scores.f1, scores.support) == pytest.approx(
            (precision[c], recall[c], f1[c], support[c]))
    at_half = (logits.sigmoid().numpy() >= 0.5).astype(int)
    assert report.by_threshold["0.5"]["macro_f1"] == pytest.approx(f1_score(truth, at_half, average="macro"))
    assert report.to_dict()["samples_f1"] == report.samples_f1 and report["micro_f1"] == report.micro_f1
    assert "samples avg" in report.format() and "threshold" in report.format()


def test_rows_with_no_true_and_no_predicted_labels_count_zero_as_in_sklearn():
    truth = np.array([[0, 0], [1, 0], [0, 0]], dtype=np.float32)
    logits = torch.tensor([[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0]])
    report = _accumulate(logits, truth, {"applied": np.full(2, 0.5)})
    predicted = (logits.sigmoid().numpy() >= 0.5).astype(int)
    assert report.samples_f1 == pytest.approx(f1_score(truth, predicted, average="samples", zero_division=0))


def test_threshold_tuning_finds_the_best_f1_on_the_bin_grid_and_falls_back_for_rare_labels():
    logits, truth = _random_case(seed=1, rows=400)
    truth[:, 0] = 0
    truth[:3, 0] = 1  # three positives: below min_positives, so label 0 takes the global threshold
    report = _accumulate(logits, truth, {"applied": np.full(6, 0.5)})
    probs = logits.sigmoid().numpy()
    edges = np.arange(1, NUM_BINS) / NUM_BINS
    tuned = tune_thresholds(report.histograms, "per_label", min_positives=5)
    best_micro = max(f1_score(truth, (probs >= e).astype(int), average="micro") for e in edges)
    assert f1_score(truth, (probs >= tuned.global_value).astype(int), average="micro") == pytest.approx(best_micro)
    assert tuned.values[0] == tuned.global_value
    for c in range(1, 6):
        best = max(f1_score(truth[:, c], probs[:, c] >= e) for e in edges)
        assert f1_score(truth[:, c], probs[:, c] >= tuned.values[c]) == pytest.approx(best)
    # tuned per-label thresholds beat 0.5 on the data they were tuned on
    assert f1_score(truth, (probs >= tuned.values).astype(int), average="macro") > \
        f1_score(truth, (probs >= 0.5).astype(int), average="macro")
    glob = tune_thresholds(report.histograms, "global")
    assert glob.per_label is None and (glob.values == glob.global_value).all()
    assert (tune_thresholds(report.histograms, "none").values == 0.5).all()


def _write_multilabel(src, dst, name):
    with open(src, encoding="utf-8") as f_in, open(dst / name, "w", encoding="utf-8", newline="") as f_out:
        writer = csv.writer(f_out)
        writer.writerow(["text", "label"])
        for row in csv.DictReader(f_in):
            extra = "short" if len(row["text"]) < 20 else "long"
            writer.writerow([row["text"], f"{row['label']}|{extra}"])


@pytest.fixture(scope="module")
def multilabel_dir(tiny_data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml-data")
    for name in ("train.csv", "dev.csv", "test.csv"):
        _write_multilabel(tiny_data_dir / name, folder, name)
    return folder


@pytest.fixture(scope="module")
def trained(tiny_model_dir, multilabel_dir, tmp_path_factory):
    data = textclf.load_dataset(multilabel_dir, config=textclf.DataConfig(multi_label=True))
    config = textclf.TrainConfig(epochs=2, batch_size=16, lr=5e-3, max_length=32, device="cpu", precision="fp32",
                                 metric="micro_f1", threshold_tuning="per_label", threshold_min_positives=3)
    trainer = textclf.Trainer(str(tiny_model_dir), data=data, output_dir=tmp_path_factory.mktemp("ml") / "run",
                              config=config, progress=False)
    return trainer, trainer.fit(), data


def test_fit_tunes_saves_and_reports_multilabel_metrics(trained):
    trainer, result, data = trained
    out = result.output_dir
    saved = json.loads((out / "best" / "textclf.json").read_text())["thresholds"]
    assert saved["mode"] == "per_label" and set(saved["values"]) == set(trainer.label_map.names)
    assert np.allclose(read_thresholds(out / "best", trainer.label_map.names).values, trainer.thresholds.values)
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("dev", "test"):
        assert metrics[split]["multi_label"] is True
        assert {"samples_f1", "subset_accuracy", "by_threshold", "per_label_counts"} <= set(metrics[split])
        assert set(metrics[split]["by_threshold"]) == {"0.5", "global", "per_label"}
    assert all("micro_f1" in entry for entry in metrics["history"])  # best-model selection ran on micro_f1
    assert "samples avg" in (out / "report.txt").read_text()
    # the test report's headline (applied = per-label thresholds) equals a fresh evaluation with those thresholds
    again = trainer.evaluate(data.test)
    assert again.micro_f1 == pytest.approx(metrics["test"]["micro_f1"])


def test_predictor_applies_saved_thresholds(trained, tmp_path):
    trainer, result, data = trained
    names = trainer.label_map.names
    folder = tmp_path / "model"
    trainer.model.save_pretrained(folder, trainer.tokenizer, {"train_config": {"max_length": 32}})
    # extreme thresholds make the effect unmistakable: label 0 always predicted, label 1 never
    values = np.full(len(names), 0.5, dtype=np.float32)
    values[0], values[1] = 0.0, 1.01
    save_thresholds(folder, Thresholds(values, "per_label", 0.5, values.copy()), names)
    predictor = textclf.Predictor.from_pretrained(folder, device="cpu", precision="fp32")
    texts = data.test.texts[:20]
    probs = predictor.predict_proba(texts)
    predictions = predictor.predict(texts)
    for row, prediction in zip(probs, predictions):
        assert prediction.label == [n for n, p, t in zip(names, row, values) if p >= t]
        assert names[0] in prediction.label and names[1] not in prediction.label
    plain = textclf.Predictor(trainer.model, trainer.tokenizer, max_length=32, device="cpu", precision="fp32")
    assert (plain.thresholds == 0.5).all()
    plain.thresholds = values  # set after construction: predict decides with them
    assert [p.label for p in plain.predict(texts)] == [p.label for p in predictions]
    # Trainer.from_pretrained (textclf evaluate) evaluates with the saved thresholds too
    evaluator = textclf.Trainer.from_pretrained(folder, device="cpu", precision="fp32")
    assert np.allclose(evaluator.thresholds.values, values)
    report = evaluator.evaluate(data.test)
    assert report.per_class[names[0]].recall == 1.0 and report.per_class[names[1]].recall == 0.0


def test_onnx_export_carries_the_thresholds(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from textclf.deploy.export import export_model

    trainer, result, data = trained
    export_model(result.output_dir / "best", tmp_path / "onnx", log=lambda *a: None)
    exported = textclf.Predictor.from_pretrained(tmp_path / "onnx")
    assert np.allclose(exported.thresholds, trainer.thresholds.values)
    assert json.loads((tmp_path / "onnx" / "textclf.json").read_text())["thresholds"]["mode"] == "per_label"


def test_cli_evaluate_prints_the_multilabel_report(trained, multilabel_dir, tmp_path, capsys):
    from textclf.cli import main

    _, result, _ = trained
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(result.output_dir / "best"), "--data", str(multilabel_dir / "test.csv"),
                 "--device", "cpu", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "samples avg" in printed and "subset acc" in printed and "per_label" in printed
    assert json.loads(out.read_text())["multi_label"] is True


def test_threshold_config_is_validated():
    with pytest.raises(textclf.ConfigError, match="train.threshold_tuning"):
        textclf.TrainConfig(threshold_tuning="best")
    with pytest.raises(textclf.ConfigError, match="train.threshold_min_positives"):
        textclf.TrainConfig(threshold_min_positives=0)


def test_a_fresh_multilabel_head_starts_at_the_label_priors(tiny_model_dir, multilabel_dir, tmp_path):
    data = textclf.load_dataset(multilabel_dir, config=textclf.DataConfig(multi_label=True))
    trainer = textclf.Trainer(str(tiny_model_dir), data=data, output_dir=tmp_path, progress=False,
                              config=textclf.TrainConfig(max_length=32, device="cpu"))
    prior = trainer.train_dataset.labels.mean(0)
    assert trainer.model.head.bias.detach().numpy() == pytest.approx(np.log(prior / (1 - prior)), rel=1e-5)
    start = trainer.model.head.bias.sigmoid().detach().numpy()
    assert start == pytest.approx(prior, rel=1e-5)  # the untrained model predicts each label's frequency


def test_a_multilabel_ranking_never_contradicts_the_label_set(trained, tmp_path):
    """top_k lists every chosen label first, each with its probability, then the most probable others."""
    trainer, _, data = trained
    names = trainer.label_map.names
    values = np.full(len(names), 0.5, dtype=np.float32)
    values[:3] = 0.0  # three labels always chosen, whatever their probability
    predictor = textclf.Predictor(trainer.model, trainer.tokenizer, max_length=32, device="cpu", precision="fp32",
                                  thresholds=values)
    for prediction in predictor.predict(data.test.texts[:20], top_k=2):
        assert len(prediction.label) >= 3
        assert sorted(name for name, _ in prediction.top_k[:len(prediction.label)]) == sorted(prediction.label)
        chosen = [p for _, p in prediction.top_k[:len(prediction.label)]]
        assert chosen == sorted(chosen, reverse=True) and prediction.score == max(p for _, p in prediction.top_k)
    wide = predictor.predict(data.test.texts[0], top_k=len(names))
    assert sorted(name for name, _ in wide.top_k) == sorted(names)


def _extreme_thresholds(trainer, folder):
    """A saved model whose label 0 is always chosen and label 1 never: thresholds that no 0.5 rule reproduces."""
    names = trainer.label_map.names
    trainer.model.save_pretrained(folder, trainer.tokenizer, {"train_config": {"max_length": 32}})
    values = np.full(len(names), 0.5, dtype=np.float32)
    values[0], values[1] = 0.0, 1.01
    save_thresholds(folder, Thresholds(values, "per_label", 0.5, values.copy()), names)
    return names


def test_errors_csv_decides_with_the_models_thresholds_as_metrics_do(trained, multilabel_dir, tmp_path):
    from textclf.cli import main

    trainer, _, _ = trained
    names = _extreme_thresholds(trainer, tmp_path / "model")
    out, errors = tmp_path / "eval.json", tmp_path / "errors.csv"
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(multilabel_dir / "test.csv"),
                 "--device", "cpu", "--output", str(out), "--errors", str(errors)]) == 0
    report = json.loads(out.read_text())
    with open(errors, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # a row is in errors.csv exactly when the report counts it wrong (subset accuracy), with the label set it scored
    assert len(rows) == round((1 - report["subset_accuracy"]) * report["num_rows"])
    assert rows and all(names[0] in row["predicted"].split("|") for row in rows)
    assert not any(names[1] in row["predicted"].split("|") for row in rows)


def test_export_parity_compares_the_decisions_the_model_makes(trained):
    """Logits on either side of 0 are the same decision under a threshold of 0.3 (and different ones at 0.5)."""
    from textclf.deploy.export import check_parity

    trainer, _, _ = trained
    names = trainer.label_map.names
    values = np.full(len(names), 0.3, dtype=np.float32)

    def predictor(logit):
        backend = textclf.Predictor(trainer.model, trainer.tokenizer, max_length=32, device="cpu", precision="fp32",
                                    thresholds=values)
        backend.logits = lambda texts, batch_size=None: np.full((len(texts), len(names)), logit, dtype=np.float32)
        return backend

    report = check_parity(predictor(0.1), predictor(-0.1), ["a", "b"], "<sample>", "onnx", None, None, 1.0)
    assert report.label_agreement == 1.0 and report.passed
    # at 0.5 the two sides (probabilities 0.525 and 0.475) decide differently: the check sees the disagreement
    values[:] = 0.5
    report = check_parity(predictor(0.1), predictor(-0.1), ["a", "b"], "<sample>", "onnx", None, None, 1.0)
    assert report.label_agreement == 0.0 and not report.passed
