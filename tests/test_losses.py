"""Imbalance tools: class weights, focal loss, label smoothing (textclf.model.losses) and the class-balanced and
class-weighted samplers (textclf.data.sampling), including an exact resume with the balanced sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import textclf
from textclf.data.labels import LabelMap
from textclf.data.sampling import WeightedBatches, row_weights
from textclf.model.losses import class_weight_vector, classification_loss

torch.manual_seed(0)
LOGITS = torch.randn(12, 3)
TARGETS = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0, 1, 0, 0])
LABELS = LabelMap(["a", "b", "c"])


def test_class_weights_scale_each_rows_loss_by_its_class_weight():
    weights = torch.tensor([3.0, 1.0, 0.5])
    plain = F.cross_entropy(LOGITS, TARGETS, reduction="none")
    weighted = classification_loss(LOGITS, TARGETS, class_weights=weights)
    assert weighted == pytest.approx(float((plain * weights[TARGETS]).mean()), rel=1e-6)
    only_a = TARGETS == 0  # a batch of class "a" rows only: exactly 3x the unweighted loss
    assert classification_loss(LOGITS[only_a], TARGETS[only_a], class_weights=weights) == pytest.approx(
        3 * float(F.cross_entropy(LOGITS[only_a], TARGETS[only_a])), rel=1e-6)


def test_balanced_and_explicit_class_weight_vectors():
    ids = np.array([0] * 6 + [1] * 3 + [2] * 1)
    balanced = class_weight_vector("balanced", LABELS, ids)
    assert balanced.tolist() == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    assert float((balanced[torch.from_numpy(ids)]).mean()) == pytest.approx(1.0)  # averages 1 over the training rows
    assert class_weight_vector("c=4,a=0.5", LABELS, None).tolist() == [0.5, 1.0, 4.0]
    assert class_weight_vector([1, 2, 3], LABELS, None).tolist() == [1, 2, 3]
    with pytest.raises(textclf.ConfigError, match="unknown label 'd'"):
        class_weight_vector("d=2", LABELS, None)
    with pytest.raises(textclf.ConfigError, match="expected 3 weights"):
        class_weight_vector([1, 2], LABELS, None)
    multi = LabelMap(["x", "y"], multi_label=True)
    hot = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=np.float32)
    assert class_weight_vector("balanced", multi, hot).tolist() == pytest.approx([1 / 3, 3.0])  # negatives/positives


def test_focal_loss_with_gamma_zero_is_cross_entropy_and_follows_the_formula():
    assert classification_loss(LOGITS, TARGETS, focal_gamma=0.0) == pytest.approx(
        float(F.cross_entropy(LOGITS, TARGETS)), rel=1e-6)
    p = LOGITS.softmax(-1)[torch.arange(12), TARGETS]
    expected = (-(1 - p) ** 2 * p.log()).mean()
    assert classification_loss(LOGITS, TARGETS, focal_gamma=2.0) == pytest.approx(float(expected), rel=1e-5)
    weights = torch.tensor([0.25, 1.0, 2.0])  # alpha
    expected_alpha = (-(weights[TARGETS]) * (1 - p) ** 2 * p.log()).mean()
    assert classification_loss(LOGITS, TARGETS, class_weights=weights, focal_gamma=2.0) == pytest.approx(
        float(expected_alpha), rel=1e-5)
    # focal loss down-weights easy rows: always <= cross-entropy
    assert classification_loss(LOGITS, TARGETS, focal_gamma=2.0) < classification_loss(LOGITS, TARGETS)


def test_label_smoothing_equals_torch():
    assert classification_loss(LOGITS, TARGETS, label_smoothing=0.1) == pytest.approx(
        float(F.cross_entropy(LOGITS, TARGETS, label_smoothing=0.1)), rel=1e-6)


def test_multilabel_losses():
    targets = (torch.rand(12, 3, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    pos_weight = torch.tensor([2.0, 1.0, 5.0])
    assert classification_loss(LOGITS, targets, multi_label=True, class_weights=pos_weight) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(LOGITS, targets, pos_weight=pos_weight)), rel=1e-6)
    assert classification_loss(LOGITS, targets, multi_label=True, focal_gamma=0.0) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(LOGITS, targets)), rel=1e-6)
    p = LOGITS.sigmoid()
    p_true = torch.where(targets > 0, p, 1 - p)
    assert classification_loss(LOGITS, targets, multi_label=True, focal_gamma=2.0) == pytest.approx(
        float((-(1 - p_true) ** 2 * p_true.log()).mean()), rel=1e-5)
    smoothed = targets * 0.9 + 0.05
    assert classification_loss(LOGITS, targets, multi_label=True, label_smoothing=0.1) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(LOGITS, smoothed)), rel=1e-6)


def test_config_validation_names_the_field():
    with pytest.raises(textclf.ConfigError, match="train.class_weights"):
        textclf.TrainConfig(class_weights="a:2")
    with pytest.raises(textclf.ConfigError, match="train.label_smoothing.*focal_gamma"):
        textclf.TrainConfig(focal_gamma=2.0, label_smoothing=0.1)
    with pytest.raises(textclf.ConfigError, match="train.sampler"):
        textclf.TrainConfig(sampler="oversample")
    with pytest.raises(textclf.ConfigError, match="train.sampler.*max_tokens"):
        textclf.TrainConfig(sampler="balanced", max_tokens=4096)
    with pytest.raises(textclf.ConfigError, match="train.focal_gamma"):
        textclf.TrainConfig(focal_gamma=-1.0)


def test_trainer_compute_loss_uses_the_configured_class_weights(tiny_model_dir, tiny_data, tmp_path):
    config = textclf.TrainConfig(class_weights="balanced", max_length=32, device="cpu", precision="fp32")
    trainer = textclf.Trainer(str(tiny_model_dir), data=tiny_data, output_dir=tmp_path, config=config,
                              progress=False)
    ids = trainer.train_dataset.labels
    counts = np.bincount(ids, minlength=len(trainer.label_map))
    assert trainer.class_weights.tolist() == pytest.approx((len(ids) / (len(counts) * counts)).tolist())
    logits = torch.randn(4, len(trainer.label_map))
    batch = {"labels": torch.tensor([0, 0, 0, 0])}
    plain = F.cross_entropy(logits, batch["labels"])
    assert trainer.compute_loss(logits, batch) == pytest.approx(float(trainer.class_weights[0] * plain), rel=1e-6)


IMBALANCED = np.array([0] * 900 + [1] * 90 + [2] * 10)


def test_balanced_sampler_draws_classes_about_equally_and_is_a_function_of_seed_and_epoch():
    sampler = WeightedBatches(row_weights(IMBALANCED, 3, "balanced"), batch_size=32, seed=3)
    epoch0 = sampler.epoch_batches(0)
    drawn = Counter(IMBALANCED[[i for b in epoch0 for i in b]].tolist())
    assert sum(drawn.values()) == len(IMBALANCED)
    for c in range(3):
        assert abs(drawn[c] / len(IMBALANCED) - 1 / 3) < 0.06
    assert sampler.epoch_batches(0) == epoch0 and sampler.epoch_batches(1) != epoch0
    ranks = [WeightedBatches(row_weights(IMBALANCED, 3, "balanced"), 32, 3, rank=r, world_size=2).epoch_batches(0)
             for r in (0, 1)]
    assert ranks[0] == epoch0[0::2] and ranks[1] == epoch0[1::2] + epoch0[:1][: len(epoch0) % 2]


def test_weighted_sampler_uses_inverse_square_root_frequency():
    weights = row_weights(IMBALANCED, 3, "weighted")
    shares = np.array([weights[IMBALANCED == c].sum() for c in range(3)]) / weights.sum()
    expected = np.sqrt([900, 90, 10]) / np.sqrt([900, 90, 10]).sum()
    assert shares == pytest.approx(expected)
    lengths = np.random.default_rng(0).integers(5, 60, len(IMBALANCED))
    grouped = WeightedBatches(weights, 32, 0, lengths=lengths).epoch_batches(0)
    assert sum(len(b) for b in grouped) == len(IMBALANCED)
    spread = np.mean([np.ptp(lengths[b]) for b in grouped])
    assert spread < np.mean([np.ptp(lengths[b]) for b in WeightedBatches(weights, 32, 0).epoch_batches(0)])


def test_multilabel_row_weights_follow_the_rarest_label():
    hot = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    assert row_weights(hot, 2, "balanced").tolist() == pytest.approx([0.25, 0.25, 0.25, 1.0, 0.25])


def test_resume_with_the_balanced_sampler_is_exact(tiny_model_dir, tiny_data, tmp_path):
    def run(out, resume=None):
        config = textclf.TrainConfig(epochs=2, batch_size=16, lr=5e-3, max_length=32, device="cpu",
                                     precision="fp32", sampler="balanced", class_weights="balanced", save_steps=9,
                                     keep_checkpoints=2, seed=5)  # resumed from both checkpoints below
        trainer = textclf.Trainer(str(tiny_model_dir), data=tiny_data, output_dir=out, config=config,
                                  progress=False)
        trainer.fit(resume=resume)
        return load_file(str(out / "last" / "model.safetensors"))

    full = run(tmp_path / "full")  # 13 steps per epoch; checkpoint at step 9 is mid-epoch
    resumed = run(tmp_path / "resumed", resume=tmp_path / "full" / "checkpoints" / "step-000018")
    resumed_mid = run(tmp_path / "resumed_mid", resume=tmp_path / "full" / "checkpoints" / "step-000009")
    for key, value in full.items():
        assert torch.equal(value, resumed[key]), key
        assert torch.equal(value, resumed_mid[key]), key
