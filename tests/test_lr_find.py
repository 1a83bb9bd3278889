"""The learning-rate range test: the curve, the suggestion, the trainer left as it was, the command line."""

from __future__ import annotations

import json
import re

import pytest
import torch

from textclf import ModelConfig, TrainConfig, Trainer
from textclf.cli import main
from textclf.errors import ConfigError
from textclf.train.lr_find import suggest


def _easy_data() -> dict:
    """Two classes a tiny random-weights model separates within a few dozen steps."""
    texts = [f"{'good great ' * (1 + i % 3)}movie {i}" for i in range(32)] + \
        [f"{'bad awful ' * (1 + i % 3)}movie {i}" for i in range(32)]
    return {"text": texts, "label": ["pos"] * 32 + ["neg"] * 32}


def _trainer(tiny_model_dir, data, tmp_path, **config):
    return Trainer(str(tiny_model_dir), data, tmp_path / "run", TrainConfig(device="cpu", batch_size=16, epochs=1,
                   seed=3, **config), model_config=ModelConfig(pooling="mean"), progress=False)


def test_the_loss_falls_then_diverges_and_a_rate_is_suggested(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, _easy_data(), tmp_path)
    result = trainer.find_lr(start_lr=1e-4, end_lr=10.0, steps=40, output_dir=tmp_path / "lr")
    assert result.lrs[0] == pytest.approx(1e-4) and all(b > a for a, b in zip(result.lrs, result.lrs[1:]))
    assert len(result.losses) == len(result.lrs) == len(result.smoothed)
    assert min(result.smoothed) < 0.98 * result.smoothed[0]  # it learned at some rate
    assert result.stopped_early and result.lrs[-1] < 10.0  # and diverged before the largest
    lowest = result.lrs[result.smoothed.index(min(result.smoothed))]
    assert result.suggestion == pytest.approx(lowest / 10)
    assert "suggested lr" in result.summary()
    saved = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert saved["suggestion"] == result.suggestion and saved["lrs"] == result.lrs
    assert (tmp_path / "lr" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert any((tmp_path / "lr" / "runs" / "lr_find").iterdir())  # TensorBoard event file


def test_the_trainer_is_left_as_it_was(tiny_model_dir, tiny_data, tmp_path):
    """fit() after find_lr() trains exactly as fit() alone: weights, random states and data order restored."""
    plain = _trainer(tiny_model_dir, tiny_data, tmp_path / "a", calibrate=False)
    plain.fit()
    probed = _trainer(tiny_model_dir, tiny_data, tmp_path / "b", calibrate=False)
    before = {k: v.clone() for k, v in probed.model.state_dict().items()}
    probed.find_lr(start_lr=1e-4, end_lr=1.0, steps=8)
    assert all(torch.equal(before[k], v) for k, v in probed.model.state_dict().items())
    probed.fit()
    for (name, a), b in zip(plain.model.state_dict().items(), probed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_suggestion_rules():
    lrs = [10.0**e for e in range(-6, 1)]
    assert suggest(lrs, [2.0, 1.9, 1.5, 1.0, 0.8, 1.5, 9.0]) == pytest.approx(1e-3)  # a tenth of 1e-2
    assert suggest(lrs, [2.0, 2.0, 1.99, 2.0, 2.1, 3.0, 9.0]) is None  # never fell by 2%


def test_bad_ranges_are_refused(tiny_model_dir, tiny_data, tmp_path):
    trainer = _trainer(tiny_model_dir, tiny_data, tmp_path)
    with pytest.raises(ConfigError, match="start lr < end lr"):
        trainer.find_lr(start_lr=1.0, end_lr=1e-3)
    with pytest.raises(ConfigError, match="at least 5"):
        trainer.find_lr(steps=2)


def test_command_line(tiny_model_dir, tmp_path, capsys):
    data = _easy_data()
    rows = ["text,label"] + [f"{t},{label}" for t, label in zip(data["text"], data["label"])]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "lr"
    argv = ["lr-find", "--data", str(tmp_path / "train.csv"), "--model", str(tiny_model_dir), "--output", str(out),
            "--device", "cpu", "--batch-size", "16", "--pooling", "mean", "--start-lr", "1e-4", "--end-lr", "10",
            "--steps", "40"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "lr-find: suggested lr" in printed and "--lr" in printed
    assert {p.name for p in out.iterdir()} >= {"lr_find.png", "lr_find.json", "runs"}
    assert main(argv) == 2  # an earlier lr-find is kept unless --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert main(argv[:-6] + ["--start-lr", "1", "--end-lr", "1e-3"]) == 2
    assert "must be below --end-lr" in capsys.readouterr().err


def test_few_shot_training_is_left_as_it_was(tiny_sentence_encoder, tmp_path):
    """The range test runs the trainer's objective (contrastive pairs here) and restores the weights and mode."""
    trainer = Trainer(str(tiny_sentence_encoder), _easy_data(), tmp_path / "run",
                      TrainConfig(recipe="few-shot", device="cpu", batch_size=8, pairs_per_row=2), progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.eval()
    result = trainer.find_lr(start_lr=1e-5, end_lr=1.0, steps=6)
    assert len(result.lrs) >= 1 and not trainer.model.training
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def _broken_encoder(tiny_model_dir, folder):
    """The tiny encoder with infinite word embeddings: its loss is NaN before any update, whatever the rate."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    name = next(k for k in weights if "word_embeddings" in k)
    weights[name] = torch.full_like(weights[name], float("inf"))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_a_loss_not_finite_from_the_first_step_is_an_error_not_a_range_to_widen(tiny_model_dir, tmp_path, capsys):
    """It exited 0 with "try a wider range" and wrote NaN into lr_find.json; the start lr cannot cause a loss measured
    before the first update, so the message names what can (the model, the data, the precision)."""
    data = _easy_data()
    (tmp_path / "train.csv").write_text("\n".join(["text,label"] + [f"{t},{label}" for t, label in
                                                                     zip(data["text"], data["label"])]) + "\n")
    out = tmp_path / "lr"
    code = main(["lr-find", "--data", str(tmp_path / "train.csv"), "--model",
                 str(_broken_encoder(tiny_model_dir, tmp_path / "broken")), "--output", str(out), "--device", "cpu",
                 "--precision", "fp32", "--batch-size", "16", "--steps", "10"])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert re.search(r"lr-find: error: lr-find: the training loss was nan at the first step \(start lr 1\.0e-07\), "
                     r"measured before any weight was updated.*likely causes: .*broken already gives non-finite "
                     r"outputs.*the data.*the precision \(fp32", captured.err), captured.err
    assert "wider range" not in captured.out + captured.err
    assert not (out / "lr_find.json").exists()


def test_the_curve_is_strict_json_when_the_loss_diverges(tmp_path):
    """A diverged step is null in lr_find.json: NaN and Infinity are not JSON (browsers and jq refuse them)."""
    from textclf.train.lr_find import LRFindResult, write_outputs

    result = LRFindResult([1e-5, 1e-4, 1e-3], [2.0, 1.0, float("inf")], [2.0, 1.5, float("nan")], None, True)
    write_outputs(result, tmp_path)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    saved = json.loads((tmp_path / "lr_find.json").read_text(), parse_constant=refuse)
    assert saved["losses"] == [2.0, 1.0, None] and saved["smoothed"] == [2.0, 1.5, None]
    assert (tmp_path / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert "became inf at lr 1.0e-03 (step 3) before it fell" in result.summary()
