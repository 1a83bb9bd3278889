"""Text normalisation: width folding, longest-match synonym replacement, table errors, save/load round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_predict import build_tiny_classifier

from textclf.data.normalize import TextNormalizer, fold_width
from textclf.deploy.predict import Predictor
from textclf.errors import ConfigError, DataError
from textclf.model.bundle import NORMALIZER_FILE


def test_fold_width_keeps_cjk():
    assert fold_width("ＣＴ检查，结果１２３　ｏｋ！。、①") == "CT检查,结果123 ok!。、①"


def test_longest_match_wins_and_canonical_forms_stay():
    normalizer = TextNormalizer({"心梗": "心肌梗死", "急性心梗": "急性心肌梗死", "梗": "阻塞"})
    # "急性心梗" is matched as a whole (not "心梗" inside it); the inserted canonical form is not rescanned.
    assert normalizer("急性心梗后又心梗，心肌梗死") == "急性心肌梗死后又心肌梗死，心肌梗死"


def test_ascii_terms_match_whole_words_only():
    normalizer = TextNormalizer({"mi": "myocardial infarction", "BP": "blood pressure"})
    assert normalizer(["mi in mind", "BP,BPM"]) == ["myocardial infarction in mind", "blood pressure,BPM"]


def test_table_is_folded_like_the_texts(tmp_path):
    table = tmp_path / "syn.csv"
    table.write_text("variant,canonical\nＣＴ,计算机断层扫描\n# a comment\n\n心梗,心肌梗死\n", encoding="utf-8")
    normalizer = TextNormalizer(table, fold_width=True)
    assert normalizer.synonyms == {"CT": "计算机断层扫描", "心梗": "心肌梗死"}
    assert normalizer("做了ＣＴ，排除心梗") == "做了计算机断层扫描,排除心肌梗死"


@pytest.mark.parametrize("content, message", [
    ("心梗,心肌梗死\n心梗\n", "line 2: expected two non-empty fields"),
    ("心梗,心肌梗死\n心梗,心绞痛\n", "line 2: '心梗' is mapped to '心肌梗死' (line 1) and to '心绞痛'"),
    ("心梗,心肌梗死\n心肌梗死,MI\n", "is itself a variant"),
    ("a,b,c\n", "line 1"),
])
def test_bad_tables_name_file_and_line(tmp_path, content, message):
    table = tmp_path / "syn.csv"
    table.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="syn.csv") as error:
        TextNormalizer(table)
    assert message in str(error.value)


def test_missing_table_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        TextNormalizer(tmp_path / "nope.csv")


def test_config_validates_augmentation_fields():
    from textclf.config import DataConfig

    with pytest.raises(ConfigError, match="data.augment:"):
        DataConfig(augment="delete,shuffle")
    with pytest.raises(ConfigError, match="data.augment_synonyms"):
        DataConfig(augment="synonym")
    with pytest.raises(ConfigError, match="data.augment_prob"):
        DataConfig(augment="delete", augment_prob=0.0)


def test_synonym_table_round_trips_through_training_predictor_and_export(tiny_model_dir, tiny_data_dir, tmp_path):
    import textclf
    from textclf.config import DataConfig, TrainConfig

    table = tmp_path / "syn.csv"
    table.write_text("股市,股票市场\n", encoding="utf-8")
    data_config = DataConfig(synonyms=str(table), fold_width=True)
    trainer = textclf.Trainer(str(tiny_model_dir), tiny_data_dir, tmp_path / "run",
                              TrainConfig(max_steps=2, batch_size=16, max_length=32, device="cpu", precision="fp32",
                                          calibrate=False),
                              data_config=data_config, progress=False)
    assert "股票市场" in " ".join(trainer.train_dataset.texts)  # training texts were normalised
    assert not any("股市" in text or "（" in text for text in trainer.train_dataset.texts)
    trainer.fit()
    best = tmp_path / "run" / "best"
    meta = json.loads((best / "textclf.json").read_text(encoding="utf-8"))
    assert meta["normalizer"] == NORMALIZER_FILE
    saved = json.loads((best / NORMALIZER_FILE).read_text(encoding="utf-8"))
    assert saved["synonyms"] == {"股市": "股票市场"} and saved["fold_width"] is True

    predictor = Predictor.from_pretrained(best, device="cpu", precision="fp32")
    assert predictor.normalizer.synonyms == {"股市": "股票市场"} and predictor.normalizer.fold_width
    variants = ["股市下跌１２３点", "股票市场下跌123点"]
    logits = predictor.logits(variants)
    np.testing.assert_array_equal(logits[0], logits[1])  # the same text once normalised
    reloaded = textclf.Trainer.from_pretrained(best, device="cpu", precision="fp32")
    assert reloaded.normalizer.to_dict() == predictor.normalizer.to_dict()

    from textclf.deploy.export import export_model

    export_model(best, tmp_path / "onnx", format="onnx", log=lambda *_: None)
    exported = Predictor.from_pretrained(tmp_path / "onnx")
    assert exported.normalizer.synonyms == {"股市": "股票市场"}
    np.testing.assert_allclose(exported.logits(variants), logits, atol=1e-3)


def test_predictor_without_normalizer_is_unchanged(tiny_model_dir, tmp_path):
    folder = build_tiny_classifier(tiny_model_dir, tmp_path / "m", ["a", "b"])
    predictor = Predictor.from_pretrained(folder, device="cpu", precision="fp32")
    assert predictor.normalizer is None and predictor.temperature == 1.0
    assert not (folder / NORMALIZER_FILE).exists()
