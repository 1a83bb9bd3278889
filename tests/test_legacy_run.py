"""A run folder written by the 0.x release (``tests/data/legacy``, made by ``tests/helpers/make_legacy_run.py``) still
loads, predicts, evaluates and resumes: later releases may move code, never break the folders users already have."""

from __future__ import annotations

import json
import re
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


DAMAGE = [
    ("config.json", r"best is damaged: its config\.json cannot be used"),
    ("textclf.json", r"best/textclf\.json cannot be read .*the model folder is damaged"),
    ("textclf.json:null", r"best/textclf\.json holds a JSON NoneType, not an object"),
    ("labels.json:fewer", r"best/labels\.json lists 2 labels but the model's head has 10 outputs"),
]
# info reads textclf.json and labels.json only (it builds no model), so config.json and the head do not concern it
DAMAGE_CASES = [(command, damage, message) for command in ("info", "evaluate", "predict")
                for damage, message in DAMAGE if command != "info" or damage.startswith("textclf.json")]


@pytest.mark.parametrize(("command", "damage", "message"), DAMAGE_CASES)
def test_a_damaged_model_folder_is_named_in_one_error(legacy_run, capsys, damage, message, command):
    best = legacy_run / "best"
    name, _, how = damage.partition(":")
    if how == "null":
        (best / name).write_text("null")
    elif how == "fewer":
        labels = json.loads((best / name).read_text())
        labels["names"] = labels["names"][:2]
        (best / name).write_text(json.dumps(labels))
    else:
        (best / name).write_text("{ not json")
    args = {"info": ["info", "--model", str(best)],
            "evaluate": ["evaluate", "--model", str(best), "--data", "tests/data/tiny/test.csv", "--device", "cpu"],
            "predict": ["predict", "--model", str(best), "--device", "cpu", "a title"]}[command]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and re.search(message, err), err


def test_a_resume_from_a_checkpoint_whose_state_is_null_is_refused(legacy_run, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "helpers"))
    from make_legacy_run import DATA, ENCODER, train_config

    checkpoint = legacy_run / "checkpoints" / "step-000002"
    (checkpoint / "trainer_state.json").write_text("null")
    with pytest.raises(textclf.TrainingError, match=r"trainer_state\.json holds a JSON NoneType, not the state of a "
                                                    r"run; delete .*step-000002"):
        textclf.Trainer(str(ENCODER), str(DATA), legacy_run, train_config(), progress=False).fit(resume=checkpoint)


def test_a_pickled_encoder_is_refused_without_running_it(tmp_path, capsys):
    import pickle
    import shutil as sh

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    encoder = tmp_path / "encoder"
    sh.copytree(LEGACY / "encoder", encoder)
    (encoder / "model.safetensors").unlink()
    (encoder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": Payload()}))
    code = main(["train", "--data", str(ROOT / "tests/data/tiny"), "--output", str(tmp_path / "out"), "--model",
                 str(encoder), "--device", "cpu", "--max-steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "cannot be loaded" in err, err
    assert not marker.exists()  # the pickle never ran
    assert not (tmp_path / "out").exists()
