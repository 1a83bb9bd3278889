"""Tests for textclf.train.optim: the learning-rate schedule as numbers, and the weight-decay parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from textclf.train.optim import build_adamw, build_scheduler, lr_factor, parameter_groups

# ---- lr_factor ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_warmup_starts_at_zero_and_peaks_at_end_of_warmup(schedule):
    assert lr_factor(0, 100, 10, schedule) == 0.0
    assert lr_factor(5, 100, 10, schedule) == pytest.approx(0.5)  # linear warmup, whatever the decay
    assert lr_factor(9, 100, 10, schedule) == pytest.approx(0.9)
    assert lr_factor(10, 100, 10, schedule) == pytest.approx(1.0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decay_reaches_zero_after_the_last_step(schedule):
    total, warmup = 100, 10
    assert lr_factor(total, total, warmup, schedule) == pytest.approx(0.0, abs=1e-12)
    # The last optimizer step (0-based total-1) still learns a little, and nothing goes below 0 afterwards.
    assert 0.0 < lr_factor(total - 1, total, warmup, schedule) < 0.05
    assert lr_factor(total + 7, total, warmup, schedule) == pytest.approx(0.0, abs=1e-12)


def test_linear_decay_values():
    # warmup 10, decay over 100 steps: halfway through the decay is step 60.
    assert lr_factor(60, 110, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(35, 110, 10, "linear") == pytest.approx(0.75)
    assert lr_factor(85, 110, 10, "linear") == pytest.approx(0.25)


def test_cosine_decay_values():
    assert lr_factor(60, 110, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(35, 110, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # 0.8536
    assert lr_factor(85, 110, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 4)))  # 0.1464
    # Cosine stays above linear in the first half of the decay and below it in the second.
    assert lr_factor(35, 110, 10, "cosine") > lr_factor(35, 110, 10, "linear")
    assert lr_factor(85, 110, 10, "cosine") < lr_factor(85, 110, 10, "linear")


def test_constant_and_no_warmup():
    assert [lr_factor(s, 50, 5, "constant") for s in (5, 20, 49, 50)] == [1.0, 1.0, 1.0, 1.0]
    assert lr_factor(0, 50, 0, "linear") == 1.0  # without warmup the first step runs at the peak rate
    assert lr_factor(25, 50, 0, "linear") == pytest.approx(0.5)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedule_is_monotonic_after_warmup(schedule):
    values = [lr_factor(s, 40, 4, schedule) for s in range(4, 41)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))
    warm = [lr_factor(s, 40, 4, schedule) for s in range(0, 5)]
    assert warm == sorted(warm) and len(set(warm)) == 5


# ---- build_scheduler ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_build_scheduler_matches_lr_factor(schedule):
    peak, total, warmup_ratio = 1e-3, 20, 0.1
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak)
    scheduler = build_scheduler(optimizer, total, warmup_ratio, schedule)
    warmup_steps = 2  # round(0.1 * 20)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])  # the rate this optimizer step runs at
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    expected = [peak * lr_factor(s, total, warmup_steps, schedule) for s in range(total)]
    assert seen == pytest.approx(expected, abs=1e-15)
    assert seen[0] == 0.0 and seen[warmup_steps] == pytest.approx(peak)
    # After the last step the rate is where the schedule ends: 0 for the decaying ones.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(peak * lr_factor(total, total, warmup_steps, schedule))


# ---- parameter groups -------------------------------------------------------------------------------------------


@pytest.fixture()
def classifier(tiny_model_dir):
    from transformers import AutoModel

    from textclf.model.classifier import TextClassifier

    return TextClassifier(AutoModel.from_pretrained(str(tiny_model_dir)), num_labels=4)


def _names(model: nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_no_decay_on_biases_and_layernorm(classifier):
    decay, no_decay = parameter_groups(classifier, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    decay_names, no_decay_names = _names(classifier, decay["params"]), _names(classifier, no_decay["params"])
    all_names = {name for name, _ in classifier.named_parameters()}
    assert decay_names.isdisjoint(no_decay_names)
    assert decay_names | no_decay_names == all_names
    assert len(decay["params"]) + len(no_decay["params"]) == len(all_names)  # no parameter twice

    expected_no_decay = {n for n in all_names if n.endswith("bias") or "LayerNorm" in n}
    assert no_decay_names == expected_no_decay
    # Spot checks on names that matter.
    assert "encoder.embeddings.LayerNorm.weight" in no_decay_names
    assert "encoder.encoder.layer.0.attention.output.LayerNorm.weight" in no_decay_names
    assert "head.bias" in no_decay_names
    assert "head.weight" in decay_names
    assert "encoder.embeddings.word_embeddings.weight" in decay_names
    assert "encoder.encoder.layer.1.intermediate.dense.weight" in decay_names


def test_frozen_parameters_are_excluded(classifier):
    classifier.freeze_layers_below(1)
    frozen = {name for name, p in classifier.named_parameters() if not p.requires_grad}
    assert frozen  # the embeddings and layer 0
    groups = parameter_groups(classifier, 0.01)
    in_groups = set().union(*(_names(classifier, g["params"]) for g in groups))
    assert in_groups.isdisjoint(frozen)
    assert in_groups == {name for name, p in classifier.named_parameters() if p.requires_grad}


def test_build_adamw_uses_the_groups(classifier):
    optimizer = build_adamw(classifier, lr=3e-5, weight_decay=0.05, device=torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 3e-5 for g in optimizer.param_groups)
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == len(list(classifier.parameters()))


def test_no_decay_for_bias_only_model():
    # A model whose only trainable parameters are biases gets no empty decay group in AdamW.
    model = nn.Linear(4, 2)
    model.weight.requires_grad_(False)
    optimizer = build_adamw(model, lr=1e-3, weight_decay=0.1, device=torch.device("cpu"))
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["weight_decay"] == 0.0
    assert optimizer.param_groups[0]["params"] == [model.bias]
