"""Every model folder a run saves has a model card (README.md) in the Hugging Face format: metadata the Hub's own
parser reads, the run's scores, the data's SHA-256, the recipe; exports carry it along."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

import textclf
from textclf.model.card import language_of


@pytest.fixture(scope="module")
def run(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "run"
    trainer = textclf.Trainer(str(tiny_model_dir), str(tiny_data_dir), out, progress=False,
                              config=textclf.TrainConfig(max_steps=3, max_length=32, device="cpu", precision="fp32"))
    trainer.fit()
    return trainer, out


def test_best_and_last_get_a_card_the_hub_can_parse(run):
    trainer, out = run
    metrics = json.loads((out / "metrics.json").read_text())
    card = ModelCard.load(out / "best" / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.language == ["zh"]
    assert card.data.license == "other"
    scores = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert scores[("test", "accuracy")] == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    assert scores[("dev", "f1")] == pytest.approx(metrics["dev"]["macro_f1"], abs=1e-4)
    text = card.text
    assert trainer._data_fingerprint()["train_sha256"] in text and f"| lr | {trainer.config.lr} |" in text
    assert all(f"| {name} |" in text for name in trainer.label_map.names)  # per-class scores
    assert ModelCard.load(out / "last" / "README.md").data.pipeline_tag == "text-classification"


def test_an_export_carries_the_card(run, tmp_path):
    pytest.importorskip("onnxruntime")
    from textclf.deploy.export import export_model

    _, out = run
    said = []
    export_model(out / "best", tmp_path / "onnx", log=said.append)
    card = ModelCard.load(tmp_path / "onnx" / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "A `textclf export`" in card.text
    # each long step says what it is doing, and the size is described honestly
    assert any(line.startswith("  traced the graph") for line in said)
    assert any(line.startswith("  checking parity on") for line in said)
    assert any(("x smaller" in line or "x larger" in line or "same size" in line) for line in said)


def test_language_is_guessed_from_the_texts():
    assert language_of(["央行宣布降准", "湖人大胜勇士"]) == "zh" and language_of(["Who wrote Hamlet?"]) == "en"


def test_label_names_cannot_break_the_card_tables(tiny_model_dir, tmp_path):
    """A `|` in a label ended its table cell and shifted every score of its row; a newline (possible from JSONL)
    ended the row. Every label is escaped in the tables and the lists, and renders as written."""
    import re

    from textclf.cli import main

    labels = ["stocks|bonds", "real*estate", "two\nlines", "<none>", "back\\slash"]
    rows = [json.dumps({"text": f"{word} text number {i}", "label": label}, ensure_ascii=False)
            for i in range(20) for word, label in zip("abcde", labels)]
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "train.jsonl"), "--model", str(tiny_model_dir), "--output",
                 str(out), "--max-steps", "1", "--max-length", "16", "--device", "cpu", "--precision", "fp32",
                 "--quiet"]) == 0
    text = ModelCard.load(out / "best" / "README.md").text
    table = [line for line in text.splitlines() if line.startswith("| ") and line.count(" | ") >= 4
             and not line.startswith("| label")]
    assert len(table) == 2 * len(labels)  # dev and test: one row per label, none split over two lines
    cells = [re.split(r"(?<!\\)\|", line)[1:-1] for line in table]
    assert all(len(row) == 5 for row in cells), table
    assert {row[0].strip() for row in cells} == {r"stocks\|bonds", r"real\*estate", r"two\nlines", r"\<none\>",
                                                 r"back\\slash"}
    assert "rows per label: " in text and r"stocks\|bonds 16" in text and "two\\nlines 16" in text
