"""K-fold cross-validation: folds partition train+dev, every fold is a scored run, mean ± std are right."""

from __future__ import annotations

import json

import numpy as np
import pytest

from textclf import TrainConfig, cli
from textclf.errors import ConfigError, DataError, OutputDirError
from textclf.tools.crossval import cross_validate

TINY_RECIPE = dict(max_steps=2, batch_size=16, precision="fp32", device="cpu", eval_batch_size=64)


def test_cross_validate_tiny(tiny_data, tiny_model_dir, tmp_path):
    # save_steps=1: every fold writes a checkpoint (at step 1), which must be gone once the fold is scored
    result = cross_validate(tiny_data, 3, str(tiny_model_dir), tmp_path / "cv",
                            TrainConfig(**TINY_RECIPE, save_steps=1), baseline=True, progress=False, printer=None)
    assert len(result.folds) == 3
    # the held-out folds partition the 200 train + 50 dev rows; each fold trains on the rest
    assert sum(f["held_out_rows"] for f in result.folds) == 250
    assert all(f["train_rows"] + f["held_out_rows"] == 250 for f in result.folds)
    for k, fold in enumerate(result.folds, start=1):
        assert (tmp_path / "cv" / f"fold-{k}" / "last").is_dir()
        assert not (tmp_path / "cv" / f"fold-{k}" / "best").exists()  # no held-out row picks a checkpoint
        # a fold is never resumed: its checkpoints (3x the weights each) would only take disk
        assert not (tmp_path / "cv" / f"fold-{k}" / "checkpoints").exists()
        assert not list((tmp_path / "cv" / f"fold-{k}").glob(".textclf-*"))
        assert fold["held_out"]["num_rows"] == fold["held_out_rows"] and fold["test"]["num_rows"] == 50
    saved = json.loads((tmp_path / "cv" / "cv.json").read_text(encoding="utf-8"))
    for part in ("held_out", "test", "baseline held_out", "baseline test"):
        values = [f["baseline"][part.split()[1]] if part.startswith("baseline") else f[part]
                  for f in result.folds]
        accuracy = [v["accuracy"] for v in values]
        assert saved["summary"][part]["accuracy"]["mean"] == pytest.approx(np.mean(accuracy))
        assert saved["summary"][part]["accuracy"]["std"] == pytest.approx(np.std(accuracy, ddof=1))
    # stratified: each held-out fold of 20+5 rows per class holds 8 or 9 rows of every class
    assert all(min(sum(row) for row in f["held_out"]["confusion_matrix"]) >= 8 for f in result.folds)
    assert "± " in result.format()
    with pytest.raises(OutputDirError, match="already holds a cross-validation"):
        cross_validate(tiny_data, 3, str(tiny_model_dir), tmp_path / "cv", TrainConfig(**TINY_RECIPE),
                       progress=False, printer=None)


def test_bad_k(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="folds must be an integer >= 2"):
        cross_validate(tiny_data, 1, output_dir=tmp_path)
    tiny_data.train = tiny_data.train.subset([0, 1])
    tiny_data.dev = None
    with pytest.raises(DataError, match="too few for 5 folds"):
        cross_validate(tiny_data, 5, output_dir=tmp_path)


def test_cli_train_cv(tiny_data_dir, tiny_model_dir, tmp_path, capsys):
    code = cli.main(["train", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output",
                     str(tmp_path / "cv"), "--cv", "2", "--max-steps", "1", "--batch-size", "16",
                     "--precision", "fp32", "--device", "cpu", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "== held_out ==" in out and "cv.json" in out
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["k"] == 2
    assert cli.main(["train", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output",
                     str(tmp_path / "cv2"), "--cv", "2", "--resume", "auto"]) == 2
