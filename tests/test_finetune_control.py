"""Fine-tuning control: layer-wise learning-rate decay, head learning rate, gradual unfreezing (and its resume)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import textclf
from textclf.train.finetune import layerwise_parameter_groups
from textclf.train.optim import parameter_groups


def _trainer(model_dir, data, out, model_config=None, **train):
    config = textclf.TrainConfig(max_length=32, device="cpu", precision="fp32", batch_size=16, **train)
    return textclf.Trainer(str(model_dir), data=data, output_dir=out, config=config, model_config=model_config,
                           progress=False)


def test_layer_lr_decay_and_head_lr_follow_the_geometric_rule(tiny_model_dir, tiny_data, tmp_path):
    trainer = _trainer(tiny_model_dir, tiny_data, tmp_path, lr=1e-3, layer_lr_decay=0.5, head_lr=1e-2,
                       warmup_ratio=0.0, schedule="constant")
    optimizer, scheduler = trainer.configure_optimizers()
    lrs = {}
    for group in optimizer.param_groups:
        lrs.setdefault(group["name"].replace(".no_decay", ""), set()).add(group["lr"])
    assert lrs == {"layer_1": {1e-3}, "layer_0": {5e-4}, "embeddings": {2.5e-4}, "head": {1e-2}}
    assert optimizer.param_groups[0]["lr"] == 1e-3  # the top layer first: the logged lr is the peak one
    model = trainer.model
    head_ids = {id(p) for p in [*model.head.parameters(), *model.encoder.pooler.parameters()]}
    layer0_ids = {id(p) for p in model.encoder_layers()[0].parameters()}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        if group["name"].startswith("head"):
            assert ids <= head_ids
        if group["name"].startswith("layer_0"):
            assert ids <= layer0_ids
    # every trainable parameter exactly once, with the decay / no-decay split of optim.parameter_groups
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    no_decay = {id(p) for p in parameter_groups(model, 0.01)[1]["params"]}
    for group in optimizer.param_groups:
        assert all((id(p) in no_decay) == (group["weight_decay"] == 0.0) for p in group["params"])
    # the schedule scales every group alike
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert [g["lr"] for g in optimizer.param_groups][:2] == [5e-4, 5e-4]
    del scheduler


def test_head_lr_alone_and_frozen_layers(tiny_model_dir, tiny_data, tmp_path):
    trainer = _trainer(tiny_model_dir, tiny_data, tmp_path, lr=1e-3, head_lr=5e-3,
                       model_config=textclf.ModelConfig(freeze_layers_below=1))
    groups = layerwise_parameter_groups(trainer.model, 1e-3, 0.01, None, 5e-3)
    assert {g["name"].split(".")[0]: g["lr"] for g in groups} == {"layer_1": 1e-3, "head": 5e-3}  # frozen left out
    with_frozen = layerwise_parameter_groups(trainer.model, 1e-3, 0.01, None, 5e-3, include_frozen=True)
    assert {g["name"].split(".")[0] for g in with_frozen} == {"layer_1", "layer_0", "embeddings", "head"}


def test_config_validation():
    with pytest.raises(textclf.ConfigError, match="train.layer_lr_decay"):
        textclf.TrainConfig(layer_lr_decay=1.5)
    with pytest.raises(textclf.ConfigError, match="train.head_lr"):
        textclf.TrainConfig(head_lr=0.0)
    with pytest.raises(textclf.ConfigError, match="train.unfreeze_every"):
        textclf.TrainConfig(unfreeze_every=0)


def test_unfreeze_every_needs_freeze_layers_below(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(textclf.ConfigError, match="model.freeze_layers_below"):
        _trainer(tiny_model_dir, tiny_data, tmp_path, unfreeze_every=2)


class Watch(textclf.Callback):
    """Records, after each optimizer step, which parts train and whether their weights moved."""

    def on_train_begin(self, trainer):
        self.rows, self.before = [], {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def on_step_end(self, trainer):
        model = trainer.model
        state = model.state_dict()
        moved = {part: not torch.equal(state[key], self.before[key]) for part, key in (
            ("embeddings", "encoder.embeddings.word_embeddings.weight"),
            ("layer_0", "encoder.encoder.layer.0.attention.self.query.weight"),
            ("layer_1", "encoder.encoder.layer.1.attention.self.query.weight"))}
        self.before = {k: v.clone() for k, v in state.items()}
        trains = {"embeddings": model.encoder.embeddings.word_embeddings.weight.requires_grad,
                  **{f"layer_{i}": next(layer.parameters()).requires_grad
                     for i, layer in enumerate(model.encoder_layers())}}
        self.rows.append((trainer.state.global_step, trains, moved))


def test_gradual_unfreezing_thaws_on_schedule(tiny_model_dir, tiny_data, tmp_path):
    watch = Watch()
    trainer = textclf.Trainer(
        str(tiny_model_dir), data=tiny_data, output_dir=tmp_path,
        config=textclf.TrainConfig(max_steps=8, unfreeze_every=2, lr=5e-3, max_length=32, batch_size=16,
                                   device="cpu", precision="fp32", warmup_ratio=0.0),
        model_config=textclf.ModelConfig(freeze_layers_below=2), callbacks=[watch], progress=False)
    trainer.fit()
    # step s trains the layers >= 2 - s // 2; the embeddings from step 6. A step moves what trained during it,
    # i.e. what the previous step's schedule allowed.
    expected_trains = {1: (False, False, False), 2: (False, False, True), 3: (False, False, True),
                       4: (False, True, True), 5: (False, True, True), 6: (True, True, True), 7: (True, True, True)}
    for step, trains, moved in watch.rows:
        if step in expected_trains:
            assert (trains["embeddings"], trains["layer_0"], trains["layer_1"]) == expected_trains[step], step
        before = expected_trains.get(step - 1, (False, False, False))
        assert (moved["embeddings"], moved["layer_0"], moved["layer_1"]) == before, step


def test_gradual_unfreezing_resumes_exactly(tiny_model_dir, tiny_data, tmp_path):
    def run(out, resume=None):
        trainer = textclf.Trainer(
            str(tiny_model_dir), data=tiny_data, output_dir=out,
            # keep_checkpoints=2: the resume below starts from step 4, which step 8's checkpoint would rotate away
            config=textclf.TrainConfig(max_steps=10, unfreeze_every=3, save_steps=4, keep_checkpoints=2, lr=5e-3,
                                       max_length=32, batch_size=16, device="cpu", precision="fp32",
                                       layer_lr_decay=0.8, head_lr=1e-2),
            model_config=textclf.ModelConfig(freeze_layers_below=2), progress=False)
        trainer.fit(resume=resume)
        return trainer, load_file(str(out / "last" / "model.safetensors"))

    full_trainer, full = run(tmp_path / "full")
    resumed_trainer, resumed = run(tmp_path / "resumed", resume=tmp_path / "full" / "checkpoints" / "step-000004")
    assert all(p.requires_grad for p in resumed_trainer.model.parameters())
    for key, value in full.items():
        assert torch.equal(value, resumed[key]), key
