"""A run folder written by the 0.x release (``tests/data/legacy``, made by ``tests/helpers/make_legacy_run.py``) still
loads, predicts, evaluates and resumes: later releases may move code, never break the folders users already have."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

import textclf
from textclf.cli import main

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "tests" / "data" / "legacy"


@pytest.fixture
def legacy_run(tmp_path, monkeypatch):
    """A copy of the legacy run (the fixture itself stays untouched), with the working directory at the repository
    root, where its relative paths (encoder, data) were written."""
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "run", run)
    return run


def test_legacy_best_model_predicts_and_evaluates(legacy_run, capsys):
    predictor = textclf.Predictor.from_pretrained(legacy_run / "best", device="cpu")
    titles = [line.split(",", 1)[0] for line in (ROOT / "tests/data/tiny/test.csv").read_text().splitlines()[1:6]]
    predictions = predictor.predict(titles)
    assert len(predictions) == 5 and all(p.label in predictor.label_map.names for p in predictions)
    report = textclf.Trainer.from_pretrained(legacy_run / "best", device="cpu").evaluate(
        textclf.load_dataset("tests/data/tiny").test)
    assert report.num_rows == 50
    assert main(["info", "--model", str(legacy_run / "best")]) == 0
    assert "labels" in capsys.readouterr().out.lower()


def test_legacy_checkpoint_resumes_to_the_weights_of_the_original_run(legacy_run, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "helpers"))
    from make_legacy_run import DATA, ENCODER, train_config

    (legacy_run / "last").rename(legacy_run / "last-original")  # what the original run ended with, at step 4
    trainer = textclf.Trainer(str(ENCODER), str(DATA), legacy_run, train_config(), progress=False)
    result = trainer.fit(resume="auto")
    assert result.global_step == 4
    assert json.loads((legacy_run / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    steps = [json.loads(line)["step"] for line in (legacy_run / "log.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == [1, 2, 3, 4]  # the log continues the original run's, no step twice
    resumed, original = load_file(legacy_run / "last" / "model.safetensors"), load_file(
        legacy_run / "last-original" / "model.safetensors")
    assert resumed.keys() == original.keys()
    # Bit-identical on the machine that wrote the fixture; another CPU may round a few fp32 sums differently.
    worst = max((resumed[k] - original[k]).abs().max().item() for k in resumed)
    assert worst <= 1e-4, worst
    # A checkpoint names the encoder "encoder.*" (the module), a model folder "bert.*" (loadable by Hugging Face).
    at_step_2 = {k.partition(".")[2]: v for k, v in load_file(
        legacy_run / "checkpoints" / "step-000002" / "model.safetensors").items() if k.startswith("encoder.")}
    moved = max((resumed[k] - at_step_2[k.partition(".")[2]]).abs().max().item() for k in resumed
                if k.startswith("bert."))
    assert moved > 1e-3  # steps 3 and 4 did train
