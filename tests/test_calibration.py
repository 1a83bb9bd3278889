"""Calibration: temperature scaling lowers ECE of an over-confident model, ECE arithmetic, PNG output, fit wiring."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch

from textclf.eval.analysis import RunAnalysis
from textclf.eval.calibration import CalibrationBins, expected_calibration_error, fit_temperature, softmax, write_png


def _calibrated_logits(n=3000, classes=4, seed=0):
    """Logits whose softmax is the true label distribution: labels are drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, classes))
    probs = softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_temperature_scaling_undoes_over_confidence():
    logits, labels = _calibrated_logits()
    over_confident = logits * 5  # same argmax, far too sure
    temperature = fit_temperature(over_confident, labels)
    assert 4.0 < temperature < 6.0
    before = expected_calibration_error(softmax(over_confident), labels)
    after = expected_calibration_error(softmax(over_confident, temperature), labels)
    assert before > 0.2 and after < 0.05 and after < before / 4
    # An already calibrated model keeps T close to 1, and an under-confident one gets T < 1.
    assert 0.85 < fit_temperature(logits, labels) < 1.15
    assert fit_temperature(logits / 3, labels) < 0.5


def test_ece_matches_a_hand_computation_and_streams():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins: 0.95 -> two rows, accuracy 0.5, confidence 0.95; 0.6 -> accuracy 1; 0.7 -> accuracy 1.
    expected = (2 * abs(0.5 - 0.95) + abs(1 - 0.6) + abs(1 - 0.7)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    streamed = CalibrationBins()
    streamed.update(probs[:1], labels[:1])
    streamed.update(probs[1:], labels[1:])
    assert streamed.ece == pytest.approx(expected)
    assert sum(streamed.to_dict()["count"]) == 4


def test_write_png_is_a_valid_png(tmp_path):
    image = np.zeros((3, 4, 3), dtype=np.uint8)
    image[1, 2] = (10, 20, 30)
    write_png(tmp_path / "x.png", image)
    data = (tmp_path / "x.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (4, 3)
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8:start - 4])[0]
    raw = zlib.decompress(data[start:start + length])
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(3, 1 + 4 * 3)
    np.testing.assert_array_equal(rows[:, 1:].reshape(3, 4, 3), image)


def test_fit_calibrates_and_predictor_applies_the_temperature(tiny_model_dir, tiny_data, tmp_path):
    import textclf
    from textclf.config import TrainConfig

    trainer = textclf.Trainer(str(tiny_model_dir), tiny_data, tmp_path / "run",
                              TrainConfig(epochs=3, lr=2e-3, batch_size=16, max_length=32, device="cpu",
                                          precision="fp32"), progress=False)
    trainer.fit()
    out = tmp_path / "run"
    meta = json.loads((out / "best" / "textclf.json").read_text(encoding="utf-8"))
    temperature = meta["calibration"]["temperature"]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["dev"]["temperature"] == temperature and metrics["test"]["ece_after"] >= 0
    assert metrics["dev"]["ece_after"] <= metrics["dev"]["ece_before"] + 1e-9 or temperature == 1.0
    assert "calibration: temperature" in (out / "report.txt").read_text(encoding="utf-8")
    for name in ("reliability.png", "confusion.png", "errors.csv"):
        assert (out / name).read_bytes()[:4] in (b"\x89PNG", b"line")

    predictor = textclf.Predictor.from_pretrained(out / "best", device="cpu", precision="fp32")
    assert predictor.temperature == temperature
    texts = tiny_data.test.texts[:10]
    logits = predictor.logits(texts)
    np.testing.assert_allclose(predictor.predict_proba(texts), softmax(logits, temperature), atol=1e-5)
    assert [p.label for p in predictor.predict(texts)] == [predictor.label_map.names[i] for i in logits.argmax(1)]

    # A deliberately over-confident copy of the trained model (head scaled x20) gets T > 1 and a lower ECE.
    with torch.no_grad():
        trainer.model.head.weight.mul_(20)
        trainer.model.head.bias.mul_(20)
    analysis = RunAnalysis(trainer.label_map.names, trainer.task, calibrate=True)
    report = trainer.evaluate(tiny_data.dev, batch_hook=analysis.hook("dev", tiny_data.dev))
    analysis.after("dev", report)
    assert analysis.temperature > 1.5
    # What the temperature is fitted for: a lower dev cross-entropy. (ECE on 50 dev rows is not guaranteed to fall:
    # it moved either way with the training run's batches, 0.041 -> 0.073 in one run.)
    logits = torch.as_tensor(trainer.predictor().logits(tiny_data.dev.texts), dtype=torch.float64)
    targets = torch.tensor([trainer.label_map.encode(name) for name in tiny_data.dev.labels])
    nll = [torch.nn.functional.cross_entropy(logits / t, targets).item() for t in (1.0, analysis.temperature)]
    assert nll[1] < nll[0], nll
    assert report.extra["ece_after"] >= 0 and report.extra["ece_before"] >= 0
