"""Seed ensembles: soft voting is the mean of members' probabilities; the folder loads everywhere a model does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_predict import TEXTS, build_tiny_classifier

from textclf.deploy.predict import Predictor
from textclf.errors import ConfigError
from textclf.eval.analysis import record_calibration
from textclf.model.ensemble import EnsembleClassifier, is_ensemble, save_ensemble

NAMES = ["a", "b", "c"]


@pytest.fixture()
def members(tiny_model_dir, tmp_path):
    folders = [build_tiny_classifier(tiny_model_dir, tmp_path / f"m{i}", NAMES, seed=i) for i in range(3)]
    record_calibration(folders[1], {"temperature": 2.5})  # a calibrated member votes with its own temperature
    return folders


def _predictor(folder):
    return Predictor.from_pretrained(folder, device="cpu", precision="fp32", batch_size=3)


def test_ensemble_probabilities_are_the_mean_of_the_members(members, tmp_path):
    ensemble = save_ensemble(members, tmp_path / "ens", names=["seed-1", "seed-2", "seed-3"])
    assert is_ensemble(ensemble) and not is_ensemble(members[0])
    meta = json.loads((ensemble / "textclf.json").read_text(encoding="utf-8"))
    assert meta["ensemble"]["members"] == ["members/seed-1", "members/seed-2", "members/seed-3"]
    each = [_predictor(m).predict_proba(TEXTS) for m in members]
    assert not np.allclose(each[0], each[2], atol=1e-3)  # the members really differ
    predictor = _predictor(ensemble)
    assert isinstance(predictor.model, EnsembleClassifier) and predictor.max_length == 32
    np.testing.assert_allclose(predictor.predict_proba(TEXTS), np.mean(each, axis=0), atol=1e-5)
    labels = [p.label for p in predictor.predict(TEXTS)]
    assert labels == [NAMES[i] for i in np.mean(each, axis=0).argmax(1)]


def test_multi_label_ensemble_averages_sigmoids(tiny_model_dir, tmp_path):
    folders = [build_tiny_classifier(tiny_model_dir, tmp_path / f"ml{i}", NAMES, multi_label=True, seed=i)
               for i in range(2)]
    each = [_predictor(m).predict_proba(TEXTS) for m in folders]
    ensemble = _predictor(save_ensemble(folders, tmp_path / "ens"))
    np.testing.assert_allclose(ensemble.predict_proba(TEXTS), np.mean(each, axis=0), atol=1e-5)


def test_members_must_share_labels(tiny_model_dir, tmp_path):
    a = build_tiny_classifier(tiny_model_dir, tmp_path / "a", ["x", "y"])
    b = build_tiny_classifier(tiny_model_dir, tmp_path / "b", ["x", "z"])
    with pytest.raises(ConfigError, match="different label sets"):
        save_ensemble([a, b], tmp_path / "ens")


def test_service_and_evaluate_load_an_ensemble(members, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from textclf.data.readers import Split
    from textclf.deploy.serve import create_app
    from textclf.train.trainer import Trainer

    ensemble = save_ensemble(members, tmp_path / "ens")
    predictor = _predictor(ensemble)
    with TestClient(create_app(predictor)) as client:
        response = client.post("/classify", json={"texts": TEXTS, "top_k": 3})
        assert response.status_code == 200
        got = response.json()["predictions"]
    expected = predictor.predict(TEXTS, top_k=3)
    assert [p["label"] for p in got] == [p.label for p in expected]
    assert [p["score"] for p in got] == pytest.approx([p.score for p in expected], abs=1e-5)

    gold = [p.label for p in expected[:4]] + ["a", "b", "c"]
    report = Trainer.from_pretrained(ensemble, device="cpu", precision="fp32").evaluate(
        Split("test", TEXTS, gold, "<list>"))
    correct = sum(p.label == y for p, y in zip(expected, gold))
    assert report.accuracy == pytest.approx(correct / len(TEXTS))
    # The evaluation loss is the ensemble's negative log-likelihood of the mean probabilities.
    probs = predictor.predict_proba(TEXTS)
    nll = -np.mean([np.log(probs[i, NAMES.index(y)]) for i, y in enumerate(gold)])
    assert report.loss == pytest.approx(nll, rel=1e-4)


def test_cli_trains_an_ensemble_of_seeds(tiny_model_dir, tiny_data_dir, tmp_path):
    from textclf.cli import main

    out = tmp_path / "ens-run"
    code = main(["train", "--data", str(tiny_data_dir), "--output", str(out), "--model", str(tiny_model_dir),
                 "--seeds", "1,2", "--max-steps", "3", "--batch-size", "16", "--max-length", "32",
                 "--device", "cpu", "--precision", "fp32", "--quiet"])
    assert code == 0
    assert (out / "seed-1" / "best").is_dir() and (out / "seed-2" / "best").is_dir()
    assert is_ensemble(out / "ensemble")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["members"]) == {"1", "2"} and metrics["test"]["num_rows"] == 50
    assert (out / "reliability.png").is_file() and (out / "errors.csv").is_file()
    from textclf.config import RunConfig

    assert [RunConfig.load(out / f"seed-{s}" / "config.yaml").train.seed for s in (1, 2)] == [1, 2]
    assert main(["evaluate", "--model", str(out / "ensemble"), "--data", str(tiny_data_dir / "test.csv"),
                 "--device", "cpu"]) == 0


def test_small_data_example_runs(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "small_data.py"
    spec = importlib.util.spec_from_file_location("small_data_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output",
                           str(tmp_path / "out"), "--max-steps", "2", "--seeds", "1,2", "--rows", "100"])
    assert is_ensemble(result.ensemble_dir) and set(result.members) == {1, 2}
    assert "most confident mistakes:" in capsys.readouterr().out
