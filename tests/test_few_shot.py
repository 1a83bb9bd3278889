"""Few-shot training (``train.recipe = "few-shot"``): the pair sampler, contrastive training in the shared loop, the
head fitted on the embeddings, an ordinary model folder at the end, exact resume, and the errors a user can hit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SignalAt, build_tiny_encoder, make_sentence_encoder

import textclf
from textclf import ModelConfig, TrainConfig, Trainer
from textclf.data.pairs import PairBatches
from textclf.errors import ConfigError
from textclf.train.objectives import fit_linear_head

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1, 0, 2])


# ================================================================================================ the pair sampler

def test_every_row_anchors_equal_numbers_of_same_and_different_label_pairs():
    sampler = PairBatches(LABELS, batch_size=5, pairs_per_row=3, seed=7)
    pairs = sampler.epoch_pairs(0)
    assert len(pairs) == 2 * 3 * len(LABELS)
    same = LABELS[pairs[:, 0]] == LABELS[pairs[:, 1]]
    assert same.sum() == len(pairs) // 2  # balanced exactly
    for row in range(len(LABELS)):  # every row anchors pairs_per_row pairs of each kind
        mine = pairs[:, 0] == row
        assert (mine & same).sum() == 3 and (mine & ~same).sum() == 3
    assert not np.any(pairs[:, 0] == pairs[:, 1])  # a row is never paired with itself
    # every row of a class turns up as a partner over a few epochs (uniform draws, not a fixed neighbour)
    partners = np.concatenate([sampler.epoch_pairs(e)[:, 1] for e in range(5)])
    assert set(partners.tolist()) == set(range(len(LABELS)))


def test_pairs_are_a_pure_function_of_seed_and_epoch():
    a, b = PairBatches(LABELS, 4, 2, seed=1), PairBatches(LABELS, 4, 2, seed=1)
    assert a.epoch_batches(3) == b.epoch_batches(3)
    assert a.epoch_batches(3) != a.epoch_batches(4)
    assert a.epoch_batches(3) != PairBatches(LABELS, 4, 2, seed=2).epoch_batches(3)
    batch = a.epoch_batches(0)[0]  # anchors first, then their partners in the same order
    assert len(batch) == 8 and all(isinstance(row, int) for row in batch)


def test_a_class_labelled_once_pairs_with_itself_and_anchors_as_many_pairs():
    labels = [0, 0, 0, 1]
    pairs = PairBatches(labels, 4, 3, seed=0).epoch_pairs(0)
    same = pairs[np.asarray(labels)[pairs[:, 0]] == np.asarray(labels)[pairs[:, 1]]]
    assert sorted(same[same[:, 0] == 3].tolist()) == [[3, 3]] * 3  # its only same-label partner is itself
    assert all(a != b for a, b in same.tolist() if a != 3)  # every other row still pairs with another row
    assert len(same) == len(pairs) // 2


def test_distributed_ranks_take_disjoint_equal_shares():
    whole = PairBatches(LABELS, 4, 2, seed=1).epoch_batches(0)
    shares = [PairBatches(LABELS, 4, 2, seed=1, rank=r, world_size=2).epoch_batches(0) for r in range(2)]
    assert len(shares[0]) == len(shares[1])
    assert shares[0][0] == whole[0] and shares[1][0] == whole[1]


@pytest.mark.parametrize("labels, message", [
    ([0, 0, 0], "at least 2 classes"),
    ([[1, 0], [0, 1]], "multi-label data is not supported"),
])
def test_data_that_cannot_be_paired_is_refused_clearly(labels, message):
    with pytest.raises(ConfigError, match=message):
        PairBatches(labels, 4, 2)


# ================================================================================================ the head

@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_head_gives_the_probabilities_of_logistic_regression(classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, classes))).argmax(1)  # linearly separable labels
    weight, bias = fit_linear_head(x, y, classes)
    ours = torch.softmax(torch.as_tensor(x) @ torch.as_tensor(weight).T + torch.as_tensor(bias), -1).numpy()
    assert np.allclose(ours, LogisticRegression(max_iter=1000).fit(x, y).predict_proba(x), atol=1e-5)
    linear_w, linear_b = fit_linear_head(x, y, classes, "linear", seed=0)
    assert np.array_equal(linear_w, fit_linear_head(x, y, classes, "linear", seed=0)[0])  # seeded
    accuracy = ((x @ linear_w.T + linear_b).argmax(1) == y).mean()
    assert accuracy > 0.9  # a trained layer, not its random start


def test_a_class_missing_from_the_rows_is_never_predicted():
    x = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    weight, bias = fit_linear_head(x, np.array([0, 2] * 10), 3)
    assert bias[1] == -30.0 and not weight[1].any()


# ================================================================================================ training

def _config(**overrides):
    settings = dict(recipe="few-shot", epochs=2, batch_size=8, pairs_per_row=2, lr=1e-3, max_length=32,
                    device="cpu", precision="fp32", seed=3, log_steps=5, eval_steps=10, save_steps=10)
    return TrainConfig(**{**settings, **overrides})


def test_few_shot_run_gives_an_ordinary_model_folder(tmp_path, tiny_sentence_encoder, tiny_data_dir):
    trainer = Trainer(str(tiny_sentence_encoder), str(tiny_data_dir), tmp_path / "run", _config(), progress=False)
    head_before = trainer.model.head.weight.detach().clone()
    assert not trainer.model.head.weight.requires_grad  # fitted on the embeddings, never by the optimizer
    assert trainer.model_config.pooling == "mean" and trainer.model_config.normalize  # the encoder's own pooling
    assert trainer.total_steps == 2 * (2 * 2 * 200) // 8  # 2 epochs of 800 pairs in batches of 8
    result = trainer.fit()
    assert not torch.equal(head_before, trainer.model.head.weight)
    best = result.output_dir / "best"
    meta = json.loads((best / "textclf.json").read_text())
    assert meta["pooling"] == "mean" and meta["normalize"] is True
    saved = yaml_config(result.output_dir)
    assert saved["train"]["recipe"] == "few-shot" and saved["model"]["normalize"] is True

    texts = ["体育新闻：球队夺冠", "股市今日大涨", "新款手机发布"]
    predictor = textclf.Predictor.from_pretrained(best, device="cpu", precision="fp32")
    assert [p.label for p in predictor.predict(texts)] == [p.label for p in trainer.predict(texts)]
    report = textclf.Trainer.from_pretrained(best, device="cpu", precision="fp32").evaluate(
        textclf.load_dataset(tiny_data_dir).test)
    assert report.accuracy == pytest.approx(result.test["accuracy"])
    # the embeddings learned the labels: dev accuracy beats the 10-class chance level by far
    assert result.dev["accuracy"] > 0.3


def test_few_shot_model_exports_with_parity(tmp_path, tiny_sentence_encoder, tiny_data_dir):
    pytest.importorskip("onnxruntime")
    from textclf.deploy.export import export_model

    result = Trainer(str(tiny_sentence_encoder), str(tiny_data_dir), tmp_path / "run", _config(epochs=1),
                     progress=False).fit()
    export_model(result.output_dir / "best", tmp_path / "onnx", log=lambda *_: None)  # raises on a parity failure
    texts = textclf.load_dataset(tiny_data_dir).test.texts[:20]
    exported = textclf.Predictor.from_pretrained(tmp_path / "onnx").predict(texts)
    original = textclf.Predictor.from_pretrained(result.output_dir / "best", device="cpu",
                                                 precision="fp32").predict(texts)
    assert [p.label for p in exported] == [p.label for p in original]


def test_few_shot_resume_is_bit_identical(tmp_path, tiny_sentence_encoder, tiny_data_dir):
    from safetensors.torch import load_file

    config = _config(epochs=1.5, grad_accum=2)
    reference = Trainer(str(tiny_sentence_encoder), str(tiny_data_dir), tmp_path / "ref", config,
                        progress=False).fit()
    out = tmp_path / "run"
    first = Trainer(str(tiny_sentence_encoder), str(tiny_data_dir), out, config, progress=False,
                    callbacks=[SignalAt(13)]).fit()  # mid-epoch, between evaluations
    assert first.interrupted and first.global_step == 13
    resumed = Trainer(str(tiny_sentence_encoder), str(tiny_data_dir), out, config, progress=False).fit(resume="auto")
    assert (resumed.global_step, resumed.best_step, resumed.dev, resumed.test) == (
        reference.global_step, reference.best_step, reference.dev, reference.test)
    for name in ("best", "last"):
        ours, theirs = (load_file(str(d / name / "model.safetensors")) for d in (out, tmp_path / "ref"))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_an_encoder_without_pooling_information_is_refused(tmp_path, tiny_model_dir, tiny_data_dir):
    with pytest.raises(ConfigError, match="no sentence-transformers pooling information.*minilm"):
        Trainer(str(tiny_model_dir), str(tiny_data_dir), tmp_path / "run", _config(), progress=False)
    max_pooling = make_sentence_encoder(build_tiny_encoder(tmp_path / "max"), pooling="max_tokens")
    with pytest.raises(ConfigError, match="pools its sentence embedding by max_tokens"):
        Trainer(str(max_pooling), str(tiny_data_dir), tmp_path / "run", _config(), progress=False)


def test_few_shot_refuses_windows_and_custom_heads(tmp_path, tiny_sentence_encoder, tiny_data_dir):
    with pytest.raises(ConfigError, match="long_texts=truncate"):
        Trainer(str(tiny_sentence_encoder), str(tiny_data_dir), tmp_path / "a", _config(long_texts="windows"),
                progress=False)
    with pytest.raises(ConfigError, match="custom head"):
        Trainer(str(tiny_sentence_encoder), str(tiny_data_dir), tmp_path / "b", _config(), progress=False,
                head=torch.nn.Sequential(torch.nn.Linear(32, 10)))


def test_few_shot_from_the_command_line(tmp_path, tiny_sentence_encoder, tiny_data_dir, capsys):
    from textclf.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_data_dir), "--model", str(tiny_sentence_encoder), "--output", str(out),
                 "--recipe", "few-shot", "--epochs", "1", "--pairs-per-row", "1", "--batch-size", "16",
                 "--max-length", "32", "--device", "cpu", "--quiet"]) == 0
    assert (out / "best" / "model.safetensors").is_file()
    assert ModelConfig(**yaml_config(out)["model"]).normalize


def yaml_config(run_dir):
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
