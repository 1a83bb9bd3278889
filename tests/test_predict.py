"""Predictor: batching and length sorting keep input order and values, top-k, truncation flags, backends."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from textclf.data.labels import LabelMap
from textclf.deploy.predict import Prediction, Predictor
from textclf.errors import ModelLoadError
from textclf.model.classifier import TextClassifier, load_tokenizer

TEXTS = [
    "How far is it from Denver to Aspen?",
    "ok",
    "央行宣布下调存款准备金率0.5个百分点",
    "The committee will publish its final report on the proposed railway line next spring after a long "
    "consultation with residents, businesses and councils about noise, cost and the homes on the route.",
    "Who wrote Hamlet?",
    "物流太慢了",
    "What is the capital of China?",
]


def build_tiny_classifier(encoder_dir, folder, names, max_length=32, multi_label=False, seed=0):
    """A classifier bundle on the tiny random encoder whose predictions vary between texts.

    A random encoder maps every text to nearly the same vector (its CLS pooler output varies by 1e-4), so a
    random head would give one label to all. Here the pooling is the mean of the token vectors and the head
    standardises them over a few calibration texts before a random projection: still random, but decisive,
    so that order and parity checks compare different labels.
    """
    torch.manual_seed(seed)
    label_map = LabelMap(names, multi_label=multi_label)
    model = TextClassifier.from_encoder(str(encoder_dir), label_map, pooling="mean").eval()
    tokenizer = load_tokenizer(str(encoder_dir))
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
        outputs = model.encoder(**batch)
        pooled = model.pool(outputs.last_hidden_state, outputs.pooler_output, batch["attention_mask"])
        mean, std = pooled.mean(0), pooled.std(0) + 1e-6
        weight = torch.randn(len(names), pooled.shape[1]) / std / pooled.shape[1] ** 0.5
        model.head.weight.copy_(weight)
        model.head.bias.copy_(-(weight @ mean))
    model.save_pretrained(folder, tokenizer=tokenizer,
                          extra={"train_config": {"max_length": max_length}, "base_model": "tiny-bert"})
    return folder


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory):
    return build_tiny_classifier(tiny_model_dir, tmp_path_factory.mktemp("clf"), ["a", "b", "c", "d", "e"])


@pytest.fixture(scope="module")
def predictor(bundle):
    return Predictor.from_pretrained(bundle, device="cpu", precision="fp32", batch_size=3)


def test_batched_sorted_prediction_matches_one_at_a_time_in_input_order(predictor):
    batched = predictor.logits(TEXTS, batch_size=3)
    single = np.concatenate([predictor.logits([text], batch_size=1) for text in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    labels = [p.label for p in predictor.predict(TEXTS)]
    assert labels == [predictor.label_map.names[i] for i in single.argmax(1)]
    assert len(set(labels)) > 1  # the tiny model is decisive enough for the order check to mean something


def test_top_k_probabilities_and_single_text(predictor):
    results = predictor.predict(TEXTS, top_k=3)
    for result in results:
        scores = [score for _, score in result.top_k]
        assert len(result.top_k) == 3 and scores == sorted(scores, reverse=True)
        assert (result.label, result.score) == result.top_k[0]
    np.testing.assert_allclose(predictor.predict_proba(TEXTS).sum(1), 1.0, atol=1e-5)
    assert len(predictor.predict(TEXTS[0], top_k=99).top_k) == 5  # clipped to the number of labels
    one = predictor.predict(TEXTS[0])
    assert isinstance(one, Prediction) and one.to_dict()["label"] == one.label
    assert predictor.predict([]) == [] and predictor.logits([]).shape == (0, 5)


def test_truncation_is_flagged_only_for_texts_that_lost_tokens(bundle):
    predictor = Predictor.from_pretrained(bundle, device="cpu", precision="fp32", max_length=8)
    exactly = "one two three four five six"  # 6 word pieces + [CLS] + [SEP] = 8: fits exactly
    flags = [p.truncated for p in predictor.predict([exactly, exactly + " seven", "short"])]
    assert flags == [False, True, False]
    default = Predictor.from_pretrained(bundle, device="cpu", precision="fp32")
    assert default.max_length == 32  # from the bundle's train_config
    assert [p.truncated for p in default.predict(TEXTS)] == [False, False, False, True, False, False, False]


def test_non_string_input_is_a_clear_error(predictor):
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        predictor.predict(["fine", 3])


def test_backend_choice_errors(bundle, tmp_path):
    with pytest.raises(ModelLoadError, match="textclf export"):
        Predictor.from_pretrained(bundle, backend="onnx")
    with pytest.raises(ModelLoadError, match="backend must be one of"):
        Predictor.from_pretrained(bundle, backend="tensorflow")
    with pytest.raises(ModelLoadError, match="not a textclf model folder"):
        Predictor.from_pretrained(tmp_path)


class RecordingBackend:
    """A stand-in backend: logits from the token count, and a log of every batch it saw."""

    name = "recording"
    pad_to_multiple_of = None

    def __init__(self):
        self.batches = []

    def __call__(self, input_ids, attention_mask):
        self.batches.append(attention_mask.sum(1).tolist())
        lengths = attention_mask.sum(1).float()
        return torch.stack([lengths, -lengths], dim=1).numpy()

    def describe(self):
        return {"backend": self.name}


def test_predictor_delegates_only_the_forward_pass_to_the_backend(bundle):
    backend = RecordingBackend()
    predictor = Predictor(backend, load_tokenizer(str(bundle)), LabelMap(["long", "short"]), max_length=32,
                          batch_size=2)
    logits = predictor.logits(TEXTS)
    # Input order restored: row i carries text i's own token count.
    lengths = [len(predictor.tokenizer(t, truncation=True, max_length=32)["input_ids"]) for t in TEXTS]
    assert logits[:, 0].tolist() == lengths
    # Length-sorted batches, longest first, so each batch is padded only to near its own rows.
    seen = [n for batch in backend.batches for n in batch]
    assert seen == sorted(lengths, reverse=True) and max(len(b) for b in backend.batches) == 2
    assert predictor.describe()["labels"] == ["long", "short"] and predictor.model is None


def test_multi_label_predictions(tiny_model_dir, tmp_path):
    folder = build_tiny_classifier(tiny_model_dir, tmp_path / "ml", ["x", "y", "z"], multi_label=True)
    predictor = Predictor.from_pretrained(folder, device="cpu", precision="fp32")
    probabilities = predictor.predict_proba(TEXTS)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    for result, row in zip(predictor.predict(TEXTS), probabilities):
        assert result.label == [name for name, p in zip("xyz", row) if p >= 0.5]


def test_a_huge_text_predicts_as_its_beginning_and_is_flagged_truncated(predictor):
    huge = "what is the capital of china " * 200_000  # 5.8 MB
    start = " ".join(huge.split()[:400])  # far more than the model's max_length tokens
    got, expected = predictor.predict([huge, start])
    assert got.truncated and expected.truncated
    assert got.label == expected.label and got.score == pytest.approx(expected.score, abs=1e-6)


def test_a_model_folder_without_labels_is_one_message_wherever_it_is_loaded(bundle, tmp_path, capsys):
    import shutil

    from textclf import Trainer, load_dataset
    from textclf.cli import main

    folder = shutil.copytree(bundle, tmp_path / "model")
    (folder / "labels.json").unlink()
    (tmp_path / "test.csv").write_text("text,label\nWho wrote Hamlet?,a\nok,b\n", encoding="utf-8")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    named = rf"{re.escape(str(folder))} has no labels\.json: the names of the model's 5 outputs are unknown"
    with pytest.raises(ModelLoadError, match=named):
        Predictor.from_pretrained(folder)
    with pytest.raises(ModelLoadError, match=named):
        Trainer.from_pretrained(folder)
    for argv in (["predict", "--model", str(folder), "Who wrote Hamlet?"],
                 ["evaluate", "--model", str(folder), "--data", str(tmp_path / "test.csv")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert "Traceback" not in err and len(errors) == 1 and re.search(named, errors[0]), err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    # Labelled data names the outputs: such a folder can still be trained on
    data = load_dataset([(f"text {i}", "abcde"[i % 5]) for i in range(20)], test_size=0, dev_size=0.25)
    assert Trainer.from_pretrained(folder, data=data).label_map.names == ["a", "b", "c", "d", "e"]
