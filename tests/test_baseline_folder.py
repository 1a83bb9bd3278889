"""The TF-IDF baseline as a model folder: the same probabilities as scikit-learn, no pickle, and every command that
takes a model folder (predict, evaluate, serve) reads it; export says why it needs none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from textclf import cli
from textclf.deploy.predict import Predictor
from textclf.errors import ModelLoadError
from textclf.model.tfidf import TfidfModel
from textclf.tools.baseline import TfidfBaseline

ENGLISH = ["What is the capital of China ?", "Who wrote Hamlet ?", "How many feet are in a mile ?",
           "Where is the Eiffel tower ?", "Who painted the Mona Lisa ?", "How far is the moon ?"]


def _sklearn_probabilities(clf: TfidfBaseline, texts: list[str]) -> np.ndarray:
    """What the fitted scikit-learn objects themselves say, in label-map order."""
    features = clf.vectorizer.transform(texts)
    out = np.zeros((len(texts), len(clf.label_map)))
    if clf.label_map.multi_label:
        return np.asarray(clf.model.predict_proba(features))
    if hasattr(clf.model, "predict_proba"):
        out[:, clf.model.classes_] = clf.model.predict_proba(features)
    else:
        margins = clf.model.decision_function(features)
        margins = np.stack([-margins, margins], axis=1) if margins.ndim == 1 else margins
        margins = np.exp(margins - margins.max(axis=1, keepdims=True))
        out[:, clf.model.classes_] = margins / margins.sum(axis=1, keepdims=True)
    return out


def _cases(tiny_data):
    texts, labels = tiny_data.train.texts, tiny_data.train.labels
    money = {"finance", "stocks", "realty"}
    return {
        "calibrated, 10 classes": (texts, labels),
        "calibrated, 2 classes": (texts, ["money" if y in money else "other" for y in labels]),
        "softmax (a class of one row)": (texts[:40] + ENGLISH[:1], labels[:40] + ["rare"]),
        "softmax, 2 classes": (ENGLISH, ["a", "b", "a", "a", "a", "a"]),
        "multi-label": (texts, [[y, "money"] if y in money else [y] for y in labels]),
    }


def test_saved_folder_answers_as_scikit_learn_does(tiny_data, tmp_path):
    probe = tiny_data.test.texts + ENGLISH
    for i, (name, (texts, labels)) in enumerate(_cases(tiny_data).items()):
        clf = TfidfBaseline().fit(texts, labels)
        expected = _sklearn_probabilities(clf, probe)
        np.testing.assert_allclose(clf.predict_proba(probe), expected, atol=1e-9, err_msg=name)
        folder = clf.save(tmp_path / f"m{i}")
        loaded = TfidfModel.load(folder)
        np.testing.assert_allclose(loaded.predict_proba(probe), expected, atol=1e-5, err_msg=name)
        # Through the Predictor the same probabilities come out of the task's softmax / sigmoid
        predictor = Predictor.from_pretrained(folder)
        np.testing.assert_allclose(predictor.predict_proba(probe), expected, atol=1e-5, err_msg=name)
        decided = predictor.predict(probe)
        if not clf.label_map.multi_label:
            assert [p.label for p in decided] == clf.predict(probe), name


def test_damaged_folder_names_the_file(tiny_data, tmp_path):
    folder = TfidfBaseline().fit(tiny_data.train.texts, tiny_data.train.labels).save(tmp_path / "m")
    settings = json.loads((folder / "tfidf.json").read_text(encoding="utf-8"))
    settings["vocabulary"] = settings["vocabulary"][:-1]
    (folder / "tfidf.json").write_text(json.dumps(settings), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="idf has shape"):
        Predictor.from_pretrained(folder)
    (folder / "tfidf.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(ModelLoadError, match="cannot be read"):
        Predictor.from_pretrained(folder)
    (folder / "tfidf.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="tfidf.safetensors is missing"):
        Predictor.from_pretrained(folder)


def test_cli_baseline_folder_predicts_evaluates_and_refuses_export(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "baseline"
    assert cli.main(["baseline", "--data", str(tiny_data_dir), "--output", str(out)]) == 0
    fitted = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["test"]["accuracy"]
    capsys.readouterr()

    assert cli.main(["predict", "--model", str(out), "--quiet", "上证指数收涨", "湖人队击败勇士"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all(line["label"] in json.loads((out / "labels.json").read_text(encoding="utf-8"))
                                   ["names"] for line in lines)

    report = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--model", str(out), "--data", str(tiny_data_dir / "test.csv"),
                     "--output", str(report)]) == 0
    # the same rows through the saved folder score what the fitted model scored
    assert json.loads(report.read_text(encoding="utf-8"))["accuracy"] == pytest.approx(fitted)

    assert cli.main(["export", "--model", str(out), "--output", str(tmp_path / "export")]) == 2
    assert "needs no export" in capsys.readouterr().err and not (tmp_path / "export").exists()


def test_service_answers_from_a_baseline_folder(tiny_data, tmp_path):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from test_serve import running

    from textclf.deploy.serve import create_app

    folder = TfidfBaseline().fit(tiny_data.train.texts, tiny_data.train.labels).save(tmp_path / "m")
    predictor = Predictor.from_pretrained(folder)
    with running(create_app(predictor)) as (url, _), httpx.Client(base_url=url) as http:
        answer = http.post("/classify", json={"texts": tiny_data.test.texts[:3], "top_k": 2}).json()
        assert http.get("/metadata").json()["backend"] == "tfidf"
    expected = predictor.predict(tiny_data.test.texts[:3], top_k=2)
    assert [a["label"] for a in answer["predictions"]] == [p.label for p in expected]


def test_model_files_are_readable_like_any_file_written_with_open(tiny_data, tiny_model_dir, tmp_path):
    """safetensors writes 0600; a model folder must be readable by the account that serves it."""
    import os

    from textclf.data.labels import LabelMap
    from textclf.model.classifier import TextClassifier

    expected = 0o666 & ~_umask()
    folder = TfidfBaseline().fit(tiny_data.train.texts, tiny_data.train.labels).save(tmp_path / "tfidf")
    assert os.stat(folder / "tfidf.safetensors").st_mode & 0o777 == expected
    TextClassifier.from_encoder(str(tiny_model_dir), LabelMap(["a", "b"])).save_pretrained(tmp_path / "bert")
    assert os.stat(tmp_path / "bert" / "model.safetensors").st_mode & 0o777 == expected


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
