"""What data preparation did is said and kept: held-out dev/test rows and augmented rows land in OUTPUT/data as
CSVs that score again, normalisation reports how many texts it changed, frozen layers show in the start line."""

from __future__ import annotations

import csv
import json

import pytest

import textclf
from textclf.config import DataConfig, ModelConfig, TrainConfig


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{**dict(max_steps=2, batch_size=16, max_length=32, device="cpu", precision="fp32"),
                          **overrides})


def _rows(path):
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def test_splits_held_out_of_the_training_file_are_written_and_score_again(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                           capsys):
    out = tmp_path / "run"
    trainer = textclf.Trainer(str(tiny_model_dir), str(tiny_data_dir / "train.csv"), out, _config(), progress=False)
    result = trainer.fit()
    printed = capsys.readouterr().out
    assert "dev: 20 rows held out of" in printed and "test: 20 rows held out of" in printed
    for name, split in (("dev", trainer.data.dev), ("test", trainer.data.test)):
        rows = _rows(out / "data" / f"{name}.csv")
        assert [r["text"] for r in rows] == split.texts and [r["label"] for r in rows] == split.labels
        assert [int(r["source_line"]) for r in rows] == split.locations  # the line in train.csv
    again = textclf.Trainer.from_pretrained(out / "best", device="cpu", precision="fp32")
    report = again.evaluate(textclf.read_split(str(out / "data" / "test.csv"), "test"))
    assert report.accuracy == pytest.approx(json.loads((out / "metrics.json").read_text())["test"]["accuracy"])
    assert result.test is not None


def test_given_splits_are_not_copied(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    textclf.Trainer(str(tiny_model_dir), str(tiny_data_dir), out, _config(), progress=False).fit()
    assert not (out / "data").exists()
    # splits given in memory share a source name ("<list>") but were not held out of train: not copied either
    data = textclf.load_dataset(tiny_data_dir)
    rows = [(split, list(zip(split.texts, split.labels))) for split in (data.train, data.test)]
    given = textclf.load_dataset(rows[0][1], dev=list(zip(data.dev.texts, data.dev.labels)), test=rows[1][1])
    textclf.Trainer(str(tiny_model_dir), given, tmp_path / "lists", _config(), progress=False).fit()
    assert not (tmp_path / "lists" / "data").exists()


def test_augmented_rows_are_written_with_their_source_line(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "run"
    trainer = textclf.Trainer(str(tiny_model_dir), tiny_data, out, _config(), progress=False,
                              data_config=DataConfig(augment="swap"))
    trainer.fit()
    rows = _rows(out / "data" / "augmented.csv")
    assert len(rows) == trainer.augmented_rows > 0
    assert [r["text"] for r in rows] == trainer.data.train.texts[-len(rows):]
    originals = dict(zip(map(str, tiny_data.train.locations), tiny_data.train.texts))
    assert all(r["source_line"] in originals for r in rows)


def test_normalisation_and_frozen_layers_are_reported(tiny_model_dir, tiny_data, tmp_path, capsys):
    table = tmp_path / "synonyms.csv"
    table.write_text("variant,canonical\n基金,投资基金\n", encoding="utf-8")
    changed = sum("基金" in text for text in tiny_data.train.texts)
    assert changed > 0
    textclf.Trainer(str(tiny_model_dir), tiny_data, tmp_path / "run", _config(), progress=False,
                    data_config=DataConfig(synonyms=str(table)),
                    model_config=ModelConfig(freeze_layers_below=1)).fit()
    printed = capsys.readouterr().out
    assert f"train: normalisation ({table}) changed {changed} of {len(tiny_data.train)} texts" in printed
    start = next(line for line in printed.splitlines() if line.startswith("training on"))
    trainable, total = (int(n.replace(",", "")) for n in
                        start.split("optimizer steps, ")[1].split(" parameters trainable")[0].split(" of "))
    assert 0 < trainable < total


def test_a_gbk_run_evaluates_the_utf8_splits_it_wrote(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    # The model folder keeps the run's reading settings (encoding gbk), which evaluate applies to every file it reads;
    # the held-out splits textclf wrote are UTF-8 with a byte order mark, which says so whatever the setting.
    from textclf import cli

    rows = (tiny_data_dir / "train.csv").read_text(encoding="utf-8").splitlines()
    chinese = [rows[0]] + [f"新闻{i} {line}" for i, line in enumerate(rows[1:])]
    (tmp_path / "gbk.csv").write_bytes("\n".join(chinese).encode("gbk") + b"\n")
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(tmp_path / "gbk.csv"), "--encoding", "gbk", "--model",
                     str(tiny_model_dir), "--output", str(out), "--max-steps", "2", "--device", "cpu",
                     "--precision", "fp32", "--recipe", "fine-tune", "--quiet"]) == 0
    assert (out / "data" / "test.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(out / "best"), "--data", str(out / "data" / "test.csv")]) == 0
    assert "accuracy" in capsys.readouterr().out
    # and the training file itself is still read as GBK
    assert cli.main(["evaluate", "--model", str(out / "best"), "--data", str(tmp_path / "gbk.csv")]) == 0
