"""Non-finite losses: training stops with an error naming the step and the batch, never with a NaN model.

In fp32 and bf16 a NaN or inf loss stops training at once; the error names the optimizer step, the epoch, the
micro-batch, and a file holding that step's texts. Under fp16 the GradScaler skips an overflowing step (logged,
training goes on) and only a run of more than ``Trainer.max_skipped_steps`` consecutive skips stops training.
fp16 needs CUDA, so the fp16 tests run a real ``torch.amp.GradScaler`` on the CPU: the skipping logic is the same.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from textclf import ModelConfig, TrainConfig, Trainer
from textclf.errors import TrainingError
from textclf.runtime import Runtime


class PoisonedTrainer(Trainer):
    """Multiplies the training loss by ``poison_value`` at the given (optimizer step, micro-batch) pairs."""

    poison: set[tuple[int, int]] = set()
    poison_from: int | None = None  # every micro-batch from this optimizer step on
    poison_value = math.nan

    def training_step(self, batch):
        self._micro = getattr(self, "_micro", 0)
        output = super().training_step(batch)
        self._micro += 1
        return output

    def optimizer_step(self):
        try:
            super().optimizer_step()
        finally:
            self._micro = 0

    def compute_loss(self, *args):
        loss = super().compute_loss(*args)
        if self.model.training:
            step = self.state.global_step + 1
            if (step, getattr(self, "_micro", 0)) in self.poison or (self.poison_from and step >= self.poison_from):
                loss = loss * self.poison_value
        return loss


class SimulatedFp16(Runtime):
    """The CPU in fp32, but with an enabled GradScaler as fp16 on a GPU would have."""

    def grad_scaler(self):
        return torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=True)


def make(tmp_path, model_dir, data_dir, klass=PoisonedTrainer, **overrides):
    config = dict(max_steps=4, batch_size=16, grad_accum=3, save_steps=1, eval_steps=1, lr=1e-3, max_length=32,
                  device="cpu", precision="fp32", seed=1, log_steps=1)
    config.update(overrides)
    return klass(str(model_dir), data=data_dir, output_dir=tmp_path / "run", config=TrainConfig(**config),
                 model_config=ModelConfig(pooling="mean"), progress=False)


def finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


def test_nan_loss_in_fp32_stops_with_the_step_the_batch_and_its_texts(tmp_path, tiny_model_dir, tiny_data_dir):
    class Trainer3(PoisonedTrainer):
        poison = {(3, 1)}  # second micro-batch of the third optimizer step

    trainer = make(tmp_path, tiny_model_dir, tiny_data_dir, Trainer3)
    with pytest.raises(TrainingError) as raised:
        trainer.fit()
    message = str(raised.value)
    dump = tmp_path / "run" / "nonfinite-step-000003.jsonl"
    assert "optimizer step 3 (epoch 0, batches 6-8 of the epoch)" in message
    assert "the loss is nan in micro-batch 2 of 3 of this step (batch 7 of the epoch, 16 rows)" in message
    assert str(dump) in message and "--lr" in message
    records = [json.loads(line) for line in dump.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 48 and sum(r["non_finite"] for r in records) == 16
    flagged = [r for r in records if r["non_finite"]]
    assert {r["micro_batch"] for r in flagged} == {2} and {r["batch_in_epoch"] for r in flagged} == {7}
    assert all(r["text"] == trainer.data.train.texts[r["row"]] and r["label"] for r in records)
    # Nothing NaN was kept: the weights, the checkpoint (step 2, the newest before the bad step) and best/ all
    # predate the bad step.
    assert finite(trainer.model)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000002"]
    assert not (tmp_path / "run" / "last").exists()
    assert json.loads((tmp_path / "run" / "best" / "textclf.json").read_text())["step"] <= 2


def test_inf_loss_in_bf16_stops(tmp_path, tiny_model_dir, tiny_data_dir):
    class Trainer2(PoisonedTrainer):
        poison = {(2, 0)}
        poison_value = math.inf

    trainer = make(tmp_path, tiny_model_dir, tiny_data_dir, Trainer2, precision="bf16", grad_accum=1, max_steps=3)
    with pytest.raises(TrainingError, match=r"optimizer step 2 \(epoch 0, batches 1-1 of the epoch\): the loss is "
                                            r"inf in micro-batch 1 of 1"):
        trainer.fit()
    assert finite(trainer.model)


def test_fp16_overflow_skips_the_step_logs_it_and_training_goes_on(tmp_path, tiny_model_dir, tiny_data_dir):
    class Trainer2(PoisonedTrainer):
        poison = {(2, 0)}
        poison_value = math.inf

    trainer = make(tmp_path, tiny_model_dir, tiny_data_dir, Trainer2, grad_accum=1, eval_steps=None,
                   save_steps=None)
    trainer.runtime = SimulatedFp16(trainer.runtime.device, "fp32")
    result = trainer.fit()
    assert result.global_step == 4 and finite(trainer.model)
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [r for r in logs if "train/loss" in r]
    assert [r["train/skipped_steps"] for r in train] == [0, 1, 1, 1]
    assert train[1]["train/loss_scale"] == train[0]["train/loss_scale"] / 2  # the scaler backed off
    # The schedule follows the optimizer: the skipped step did not advance the learning rate.
    assert train[1]["train/lr"] == train[0]["train/lr"]


def test_too_many_consecutive_fp16_skips_stop_training(tmp_path, tiny_model_dir, tiny_data_dir):
    class Overflowing(PoisonedTrainer):
        poison_from = 2
        poison_value = math.inf
        max_skipped_steps = 2

    trainer = make(tmp_path, tiny_model_dir, tiny_data_dir, Overflowing, grad_accum=1, max_steps=10)
    trainer.runtime = SimulatedFp16(trainer.runtime.device, "fp32")
    with pytest.raises(TrainingError, match=r"optimizer step 4 .*3 consecutive optimizer steps were skipped because "
                                            r"the fp16 gradients overflowed"):
        trainer.fit()
    assert finite(trainer.model)
    assert (tmp_path / "run" / "nonfinite-step-000004.jsonl").is_file()
