"""One model, read and decided the same way everywhere: a windowed multi-label model through fit, evaluate, predict,
ONNX export and the label audit.

Long texts are read as sliding windows (the input strategy) and labels are decided by tuned per-label thresholds
(the task); every consumer asks those two objects, so the same texts must give the same probabilities and the same
label sets wherever they are scored.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import textclf
from textclf.tools.audit import out_of_fold_probabilities

MAX_LENGTH = 16  # tokens per window: every text below needs 2-5 windows


def _long_multilabel(split: textclf.Split, name: str) -> textclf.Split:
    """Each text twice over (so it spans several windows), labelled with its topic and its length class."""
    texts = [f"{text}，{text}" for text in split.texts]
    labels = [[label, "short" if len(text) < 20 else "long"] for text, label in zip(split.texts, split.labels)]
    return textclf.Split(name, texts, labels, split.source, split.locations, split.where)


@pytest.fixture(scope="module")
def data(tiny_data_dir):
    plain = textclf.load_dataset(tiny_data_dir)
    splits = {name: _long_multilabel(getattr(plain, name), name) for name in ("train", "dev", "test")}
    label_map = textclf.LabelMap.from_labels([*splits["train"].labels, *splits["dev"].labels,
                                              *splits["test"].labels], multi_label=True)
    return textclf.DatasetSplits(splits["train"], splits["dev"], splits["test"], label_map)


def _config(**overrides) -> textclf.TrainConfig:
    values = dict(epochs=3, batch_size=16, lr=5e-3, max_length=MAX_LENGTH, long_texts="windows", window_overlap=4,
                  window_aggregation="mean", device="cpu", precision="fp32", metric="micro_f1",
                  threshold_tuning="per_label", threshold_min_positives=3, seed=7)
    return textclf.TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_model_dir, data, tmp_path_factory):
    trainer = textclf.Trainer(str(tiny_model_dir), data=data, output_dir=tmp_path_factory.mktemp("wml") / "run",
                              config=_config(), progress=False)
    return trainer, trainer.fit()


def _gold(data_split, label_map) -> np.ndarray:
    gold = np.zeros((len(data_split), len(label_map)), dtype=bool)
    for i, names in enumerate(data_split.labels):
        gold[i, [label_map.encode(n) for n in names]] = True
    return gold


def test_fit_evaluate_and_predict_agree(trained, data):
    trainer, result = trained
    assert trainer.windows is not None and trainer.train_dataset.total_windows > 2 * len(trainer.train_dataset)
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["test"]["by_threshold"].keys() >= {"per_label"}  # thresholds were tuned on dev
    report = trainer.evaluate(data.test)
    assert report.micro_f1 == pytest.approx(metrics["test"]["micro_f1"])

    saved = textclf.Predictor.from_pretrained(result.output_dir / "best", device="cpu", precision="fp32")
    assert saved.windows == trainer.windows and np.allclose(saved.thresholds, trainer.thresholds.values)
    from_trainer = trainer.predict(data.test.texts)
    from_folder = saved.predict(data.test.texts)
    assert [p.label for p in from_folder] == [p.label for p in from_trainer]
    # evaluate's streaming counts and the Predictor's label sets are the same decisions
    names = trainer.label_map.names
    chosen = np.array([[name in p.label for name in names] for p in from_folder])
    gold = _gold(data.test, trainer.label_map)
    tp, fp, fn = (chosen & gold).sum(), (chosen & ~gold).sum(), (~chosen & gold).sum()
    assert report.micro_f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # the probabilities behind them equal the ones the model gives each text's windows, combined
    assert np.allclose(saved.predict_proba(data.test.texts), trainer.predictor().predict_proba(data.test.texts),
                       atol=1e-6)


def test_onnx_export_predicts_what_the_trained_model_predicts(trained, data, tmp_path):
    pytest.importorskip("onnxruntime")
    from textclf.deploy.export import export_model

    trainer, result = trained
    export_model(result.output_dir / "best", tmp_path / "onnx", log=lambda *_: None)
    parity = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert parity["passed"] and parity["label_agreement"] == 1.0
    exported = textclf.Predictor.from_pretrained(tmp_path / "onnx")
    assert exported.windows == trainer.windows and np.allclose(exported.thresholds, trainer.thresholds.values)
    torch_side = textclf.Predictor.from_pretrained(result.output_dir / "best", device="cpu", precision="fp32")
    texts = data.test.texts
    assert np.allclose(exported.predict_proba(texts), torch_side.predict_proba(texts), atol=1e-4)
    assert [p.label for p in exported.predict(texts)] == [p.label for p in torch_side.predict(texts)]


def test_the_audit_scores_held_out_rows_as_the_fold_models_read_them(tiny_model_dir, data, tmp_path):
    """Out-of-fold probabilities come from each fold's model read through its own windows (not truncated)."""
    texts, labels = data.train.texts[:60], data.train.labels[:60]
    config = _config(epochs=4, lr=1e-2, threshold_tuning="none")
    oof = out_of_fold_probabilities(texts, labels, data.label_map, folds=2, seed=0, method="transformer",
                                    model=str(tiny_model_dir), train_config=config, work_dir=tmp_path)
    folds = [textclf.Predictor.from_pretrained(tmp_path / f"fold-{k}" / "last", device="cpu", precision="fp32")
             for k in (1, 2)]
    assert all(p.windows is not None for p in folds)
    scored = np.stack([p.predict_proba(texts) for p in folds])  # [fold, N, C]
    distance = np.abs(scored - oof[None]).max(-1)  # each row matches the model of the fold that held it out
    assert (distance.min(0) < 1e-6).all()
    truncated = textclf.Predictor(folds[0].model, folds[0].tokenizer, max_length=MAX_LENGTH, device="cpu",
                                  precision="fp32")
    # a tiny model's outputs vary little with the text, but reading the texts truncated moves them far more than 1e-6
    assert np.abs(truncated.predict_proba(texts) - scored[0]).max() > 1e-5
