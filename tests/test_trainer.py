"""Tests for textclf.train.trainer: the output layout, numerical parity (gradient accumulation, reproducibility,
clipping), the override points, early stopping, precision, callbacks and TensorBoard.

Every run uses the tiny 2-layer BERT from conftest, fp32 on CPU unless precision is under test, and a handful of
optimizer steps; runs without a dev split skip evaluation and keep the final weights in ``trainer.model``.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DATA, build_tiny_encoder

import textclf
from textclf.config import RunConfig
from textclf.data.readers import DatasetSplits
from textclf.errors import ConfigError, DataError, OutputDirError
from textclf.runtime import cpu_supports_bf16
from textclf.train.callbacks import EVENTS, Callback
from textclf.train.optim import lr_factor


def _config(**overrides) -> textclf.TrainConfig:
    # recipe fine-tune: these tests check the loop with exactly these settings (the default, auto, would pick its own)
    values = dict(recipe="fine-tune", max_length=32, batch_size=16, lr=1e-3, precision="fp32", device="cpu", seed=0,
                  log_steps=1)
    values.update(overrides)
    return textclf.TrainConfig(**values)


def _train_only(data: DatasetSplits, rows: int | None = None) -> DatasetSplits:
    """The training split alone (first ``rows`` rows): no evaluation, so fit() ends with the last weights."""
    train = data.train if rows is None else data.train.subset(range(rows))
    return DatasetSplits(train, None, None, data.label_map)


def _fit(model_dir, data, out, config, trainer_class=textclf.Trainer, **kwargs):
    trainer = trainer_class(str(model_dir), data, out, config, progress=False, **kwargs)
    result = trainer.fit()
    return trainer, result


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _train_logs(out) -> list[dict]:
    return [r for r in _log(out) if "train/loss" in r]



@pytest.fixture(scope="module")
def nodrop_model_dir(tmp_path_factory):
    """The tiny encoder with hidden and attention dropout 0: a training step is a pure function of its batch."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert-nodrop"), dropout=0.0)


# ==================================================================================================================
# one full run, shared by the layout, prediction, callback and TensorBoard tests
# ==================================================================================================================


class Recorder(Callback):
    def __init__(self):
        self.events: list[tuple[str, int]] = []
        self.logs: list[dict] = []
        self.reports: list = []

    def on_train_begin(self, trainer):
        self.events.append(("on_train_begin", trainer.state.global_step))

    def on_step_end(self, trainer):
        self.events.append(("on_step_end", trainer.state.global_step))

    def on_log(self, trainer, logs):
        self.events.append(("on_log", trainer.state.global_step))
        self.logs.append(dict(logs))

    def on_evaluate(self, trainer, report):
        self.events.append(("on_evaluate", trainer.state.global_step))
        self.reports.append(report)

    def on_epoch_end(self, trainer):
        self.events.append(("on_epoch_end", trainer.state.global_step))

    def on_train_end(self, trainer):
        self.events.append(("on_train_end", trainer.state.global_step))


FULL_ROWS = 96
FULL_STEPS_PER_EPOCH = 3  # 96 rows / 32
FULL_LOG_STEPS = 2


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    data = textclf.load_dataset(TINY_DATA)
    data = DatasetSplits(data.train.subset(range(FULL_ROWS)), data.dev, data.test, data.label_map)
    recorder = Recorder()
    trainer = textclf.Trainer(str(tiny_model_dir), data, out,
                              _config(epochs=2, batch_size=32, lr=2e-3, log_steps=FULL_LOG_STEPS),
                              model_config=textclf.ModelConfig(pooling="mean"), callbacks=[recorder], progress=False)
    result = trainer.fit()
    return trainer, result, recorder, out, data


def test_fit_writes_the_documented_layout(full_run):
    trainer, result, _, out, _ = full_run
    assert result.global_step == 2 * FULL_STEPS_PER_EPOCH and not result.stopped_early
    for bundle in ("best", "last"):
        files = {p.name for p in (out / bundle).iterdir()}
        assert {"model.safetensors", "config.json", "textclf.json", "labels.json", "tokenizer.json"} <= files, bundle
    # One checkpoint per epoch, except after the last step (last/ holds those weights).
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == [f"step-{FULL_STEPS_PER_EPOCH:06d}"]
    assert (out / "checkpoints" / checkpoints[0] / "trainer_state.json").is_file()
    assert list((out / "runs").glob("events.out.tfevents.*"))
    assert not list(out.glob(".textclf-*"))

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"dev", "test", "best_step", "global_step", "history"} <= set(metrics)
    assert metrics["dev"]["num_rows"] == 50 and metrics["test"]["num_rows"] == 50
    assert metrics["dev"] == result.dev and metrics["test"] == result.test
    assert [h["step"] for h in metrics["history"]] == [FULL_STEPS_PER_EPOCH, 2 * FULL_STEPS_PER_EPOCH]
    assert metrics["best_step"] == result.best_step in (FULL_STEPS_PER_EPOCH, 2 * FULL_STEPS_PER_EPOCH)
    best_history = max(h["macro_f1"] for h in metrics["history"])
    assert metrics["dev"]["macro_f1"] == pytest.approx(best_history, abs=1e-9)  # dev is scored with the best model

    report = (out / "report.txt").read_text(encoding="utf-8")
    assert "== dev (50 rows" in report and "== test (50 rows" in report
    assert all(name in report for name in trainer.label_map.names)
    assert "macro avg" in report and "weighted avg" in report

    config = RunConfig.load(out / "config.yaml")
    assert config.train == trainer.config and config.model.pooling == "mean"
    assert config.run.output == str(out)

    log = _log(out)
    train_steps = [r["step"] for r in log if "train/loss" in r]
    assert train_steps == list(range(FULL_LOG_STEPS, result.global_step + 1, FULL_LOG_STEPS))
    assert [r["step"] for r in log if "dev/macro_f1" in r] == [FULL_STEPS_PER_EPOCH, 2 * FULL_STEPS_PER_EPOCH]


def test_logged_learning_rate_follows_the_schedule(full_run):
    trainer, result, recorder, _, _ = full_run
    total = result.global_step
    warmup = round(trainer.config.warmup_ratio * total)
    steps = list(range(FULL_LOG_STEPS, total + 1, FULL_LOG_STEPS))
    # After s optimizer steps the scheduler has stepped s times: the next step's rate is peak x lr_factor(s).
    expected = [2e-3 * lr_factor(s, total, warmup, "linear") for s in steps]
    assert [logs["train/lr"] for logs in recorder.logs] == pytest.approx(expected, abs=1e-12)
    assert all(logs["train/grad_norm"] > 0 and logs["train/loss"] > 0 for logs in recorder.logs)
    assert all(logs["train/samples_per_second"] > 0 and logs["train/tokens_per_second"] > logs[
        "train/samples_per_second"] for logs in recorder.logs)  # every text has more than one token


def test_best_model_and_predictor_agree_with_metrics(full_run):
    trainer, result, _, out, data = full_run
    # After fit the trainer holds the best weights: evaluating again reproduces metrics.json.
    again = trainer.evaluate()
    assert again.confusion_matrix == result.dev["confusion_matrix"]
    assert again.loss == pytest.approx(result.dev["loss"], rel=1e-6)
    predictor = textclf.Predictor.from_pretrained(out / "best", device="cpu", precision="fp32")
    assert predictor.max_length == 32  # the training max_length travels with the model
    predictions = predictor.predict(data.dev.texts)
    accuracy = sum(p.label == y for p, y in zip(predictions, data.dev.labels)) / len(data.dev)
    assert accuracy == pytest.approx(result.dev["accuracy"])


def test_predictor_returns_probabilities_in_input_order(full_run):
    _, _, _, out, data = full_run
    predictor = textclf.Predictor.from_pretrained(out / "best", device="cpu", precision="fp32", batch_size=4)
    # Lengths deliberately unsorted: the predictor sorts by length internally and must put results back.
    texts = [data.test.texts[i] for i in (3, 0, 17, 8, 41, 25, 9, 33, 2, 48)]
    texts += ["短", "a much longer english text " * 3]
    batched = predictor.predict(texts, top_k=len(predictor.label_map))
    one_by_one = [predictor.predict(text, top_k=len(predictor.label_map)) for text in texts]
    assert [p.label for p in batched] == [p.label for p in one_by_one]
    for a, b in zip(batched, one_by_one):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert sum(score for _, score in a.top_k) == pytest.approx(1.0, abs=1e-5)
        assert a.label == a.top_k[0][0] and a.label in predictor.label_map.names
    probabilities = predictor.predict_proba(texts)
    assert probabilities.shape == (len(texts), len(predictor.label_map))
    assert probabilities.sum(1) == pytest.approx([1.0] * len(texts), abs=1e-5)
    singles = np.stack([predictor.predict_proba([t])[0] for t in texts])
    np.testing.assert_allclose(probabilities, singles, atol=1e-5, rtol=0)
    assert len({tuple(row.round(4)) for row in probabilities}) > 1  # not one constant answer


def test_callback_methods_map_to_events():
    methods = {name for name in vars(Callback) if callable(getattr(Callback, name)) and not name.startswith("_")}
    assert methods - {"state_dict", "load_state_dict"} == set(EVENTS)
    assert len(EVENTS) == len(set(EVENTS))


def test_callback_events_in_order(full_run):
    _, result, recorder, _, _ = full_run
    expected = [("on_train_begin", 0)]
    for step in range(1, result.global_step + 1):
        expected.append(("on_step_end", step))
        if step % FULL_LOG_STEPS == 0 or step == result.global_step:
            expected.append(("on_log", step))
        if step % FULL_STEPS_PER_EPOCH == 0:  # eval_steps unset: evaluate at the end of each epoch
            expected += [("on_evaluate", step), ("on_epoch_end", step)]
    expected.append(("on_train_end", result.global_step))
    assert recorder.events == expected
    assert {event for event, _ in recorder.events} == set(EVENTS)
    keys = {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_second", "train/tokens_per_second"}
    assert all(keys <= set(logs) for logs in recorder.logs)
    assert [r.num_rows for r in recorder.reports] == [50, 50]


def test_tensorboard_scalars_and_confusion_image(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result, recorder, out, _ = full_run
    events = EventAccumulator(str(out / "runs"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_second", "train/tokens_per_second",
                "dev/macro_f1", "dev/accuracy", "dev/loss"):
        assert tag in tags["scalars"], tag
    assert "dev/confusion_matrix" in tags["images"]
    images = events.Images("dev/confusion_matrix")
    assert [i.step for i in images] == [FULL_STEPS_PER_EPOCH, 2 * FULL_STEPS_PER_EPOCH]
    assert images[0].width == images[0].height == 10 * 24  # 10 classes, 24 pixels a cell
    # The scalars are the numbers the callbacks saw.
    loss = events.Scalars("train/loss")
    assert [s.step for s in loss] == list(range(FULL_LOG_STEPS, result.global_step + 1, FULL_LOG_STEPS))
    assert [s.value for s in loss] == pytest.approx([logs["train/loss"] for logs in recorder.logs], rel=1e-6)
    f1 = events.Scalars("dev/macro_f1")
    assert [s.value for s in f1] == pytest.approx([r.macro_f1 for r in recorder.reports], rel=1e-6)


# ==================================================================================================================
# numerical parity
# ==================================================================================================================


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"largest weight difference {worst:.3g} > {atol}"


def _accum_run(model_dir, data, out, batch_size, grad_accum, **extra):
    config = _config(batch_size=batch_size, grad_accum=grad_accum, group_by_length=False, warmup_ratio=0.0,
                     schedule="constant", lr=1e-3, **extra)
    trainer, result = _fit(model_dir, data, out, config, model_config=textclf.ModelConfig(dropout=0.0))
    return trainer, result


def test_grad_accumulation_equals_big_batch(nodrop_model_dir, tiny_data, tmp_path):
    data = _train_only(tiny_data)
    initial = textclf.Trainer(str(nodrop_model_dir), data, tmp_path / "init", _config(),
                              model_config=textclf.ModelConfig(dropout=0.0), progress=False)
    big, big_result = _accum_run(nodrop_model_dir, data, tmp_path / "big", 8, 1, max_steps=4)
    small, small_result = _accum_run(nodrop_model_dir, data, tmp_path / "small", 4, 2, max_steps=4)
    assert big_result.global_step == small_result.global_step == 4
    # fp32 sums of 8 rows and of 2 x 4 rows round differently: 1.7e-6 after 4 Adam steps on an Intel Xeon with
    # AVX-512 bf16 (the earlier 1e-6 held on an AMD EPYC); a wrong accumulation moves weights by about a step (1e-3).
    _assert_same_weights(_weights(big), _weights(small), atol=1e-5)
    # Same gradient at every step, not only similar end points: the pre-clip norms and losses agree.
    big_logs, small_logs = _train_logs(tmp_path / "big"), _train_logs(tmp_path / "small")
    assert [r["train/grad_norm"] for r in small_logs] == pytest.approx([r["train/grad_norm"] for r in big_logs],
                                                                       rel=1e-5)
    assert [r["train/loss"] for r in small_logs] == pytest.approx([r["train/loss"] for r in big_logs], rel=1e-6)
    # The weights did move, far more than the tolerance.
    moved = max((w - _weights(initial)[k]).abs().max().item() for k, w in _weights(big).items())
    assert moved > 1e-4


@pytest.mark.parametrize(("rows", "micro", "accum"), [(48, 4, 5), (50, 4, 3)])
def test_grad_accumulation_with_a_partial_last_window(nodrop_model_dir, tiny_data, tmp_path, rows, micro, accum):
    """One epoch whose last accumulation window is short.

    (48, 4, 5): 12 micro-batches of 4 -> windows of 5, 5 and 2 micro-batches; the big-batch run (20 rows) sees
    20, 20, 8 rows. (50, 4, 3): 12 micro-batches of 4 and one of 2 -> windows 3, 3, 3, 3, 1; big batches 12 x 4 + 2.
    The same permutation feeds both runs, so every optimizer step sees the same rows; the loss is divided by
    the micro-batches actually accumulated (2 or 1, not ``accum``), which makes the step equal to the big
    batch's mean. (Exact equality needs equal-size micro-batches within a window: a window of 4 + 4 + 2 rows
    averages three micro-batch means, which weights the 2 short rows more than one big batch of 10 would.)
    """
    data = _train_only(tiny_data, rows)
    big, big_result = _accum_run(nodrop_model_dir, data, tmp_path / "big", micro * accum, 1, epochs=1)
    small, small_result = _accum_run(nodrop_model_dir, data, tmp_path / "small", micro, accum, epochs=1)
    expected_steps = -(-rows // (micro * accum))
    assert big_result.global_step == small_result.global_step == expected_steps
    assert small.steps_per_epoch == big.steps_per_epoch == expected_steps
    big_norms = [r["train/grad_norm"] for r in _train_logs(tmp_path / "big")]
    small_norms = [r["train/grad_norm"] for r in _train_logs(tmp_path / "small")]
    assert len(small_norms) == expected_steps
    assert small_norms == pytest.approx(big_norms, rel=1e-5)  # includes the partial window's step
    _assert_same_weights(_weights(big), _weights(small), atol=1e-6)


def test_same_seed_is_bit_identical(tiny_model_dir, tiny_data, tmp_path):
    data = _train_only(tiny_data, 96)
    config = _config(max_steps=4, batch_size=16)  # dropout 0.1 and length grouping on: the RNG matters
    first, _ = _fit(tiny_model_dir, data, tmp_path / "a", config)
    second, _ = _fit(tiny_model_dir, data, tmp_path / "b", config)
    a, b = _weights(first), _weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other, _ = _fit(tiny_model_dir, data, tmp_path / "c", _config(max_steps=4, batch_size=16, seed=1))
    c = _weights(other)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class WeightedLossTrainer(textclf.Trainer):
    """Class-weighted cross-entropy through the documented override point."""

    calls = 0

    def compute_loss(self, logits, batch):
        type(self).calls += 1
        weights = torch.arange(1, logits.shape[-1] + 1, dtype=torch.float32, device=logits.device)
        return F.cross_entropy(logits.float(), batch["labels"], weight=weights)


def test_compute_loss_override_changes_training(nodrop_model_dir, tiny_data, tmp_path):
    data = _train_only(tiny_data, 64)
    config = _config(max_steps=3, batch_size=8, grad_accum=2, group_by_length=False)
    base, _ = _fit(nodrop_model_dir, data, tmp_path / "base", config)
    WeightedLossTrainer.calls = 0
    weighted, _ = _fit(nodrop_model_dir, data, tmp_path / "weighted", config, trainer_class=WeightedLossTrainer)
    assert WeightedLossTrainer.calls == 3 * 2  # once per micro-batch
    a, b = _weights(base), _weights(weighted)
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-5
    # Same initial weights and rows: the first logged loss differs only because it is the override's weighted loss.
    first_loss = _train_logs(tmp_path / "weighted")[0]["train/loss"]
    assert first_loss != pytest.approx(_train_logs(tmp_path / "base")[0]["train/loss"], rel=1e-4)


def test_early_stopping_stops(tiny_model_dir, tiny_data, tmp_path):
    data = DatasetSplits(tiny_data.train.subset(range(64)), tiny_data.dev, None, tiny_data.label_map)
    # A learning rate so small that the predictions, hence dev accuracy, cannot change between evaluations.
    config = _config(max_steps=20, batch_size=8, lr=1e-9, eval_steps=1, patience=1, metric="accuracy")
    trainer, result = _fit(tiny_model_dir, data, tmp_path / "run", config)
    assert result.stopped_early
    assert result.global_step == 2 < trainer.total_steps == 20  # best at step 1, no improvement at step 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [1, 2]
    assert result.best_step == 1


def test_gradient_clipping_is_applied_and_pre_clip_norm_reported(tiny_model_dir, tiny_data, tmp_path):
    class SGDTrainer(textclf.Trainer):
        """Plain SGD, so the weight change is exactly -lr x the (clipped) gradient."""

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr)
            return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

        def optimizer_step(self):
            params = dict(self.model.named_parameters())
            self.grads = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
            self.before = {n: p.detach().clone() for n, p in params.items()}
            super().optimizer_step()

    data = _train_only(tiny_data, 32)
    for max_norm, lr in ((0.01, 100.0), (None, 1.0)):
        out = tmp_path / f"clip-{max_norm}"
        trainer, _ = _fit(tiny_model_dir, data, out, _config(max_steps=1, lr=lr, max_grad_norm=max_norm),
                          trainer_class=SGDTrainer)
        grads = trainer.grads
        pre_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
        assert float(trainer.grad_norm) == pytest.approx(float(pre_norm), rel=1e-5)  # reported: before clipping
        assert _train_logs(out)[0]["train/grad_norm"] == pytest.approx(float(pre_norm), rel=1e-5)
        scale = min(1.0, max_norm / float(pre_norm)) if max_norm else 1.0
        after = dict(trainer.model.named_parameters())
        delta = {n: (trainer.before[n] - after[n].detach()) / lr for n in grads}
        error = torch.linalg.vector_norm(torch.cat([(delta[n] - scale * grads[n]).flatten() for n in grads]))
        step_norm = torch.linalg.vector_norm(torch.cat([d.flatten() for d in delta.values()]))
        assert float(error) <= 1e-4 * float(step_norm)
        if max_norm:
            assert float(pre_norm) > 10 * max_norm  # clipping was really active ...
            assert float(step_norm) == pytest.approx(max_norm, rel=1e-4)  # ... and the update has the clipped norm
        else:
            assert float(step_norm) == pytest.approx(float(pre_norm), rel=1e-4)


def test_clipping_matches_clip_grad_norm_bit_for_bit(tiny_model_dir, tiny_data, tmp_path):
    """The loop clips as torch.nn.utils.clip_grad_norm_ does, and skips the pass that would multiply by 1."""

    class Capturing(textclf.Trainer):
        def optimizer_step(self):
            self.raw = [p.grad.detach().clone() for p in self.model.parameters() if p.grad is not None]
            step = self.optimizer.step

            def capture(*args, **kwargs):  # the gradients the optimizer is given
                self.clipped = [p.grad.detach().clone() for p in self.model.parameters() if p.grad is not None]
                return step(*args, **kwargs)

            self.optimizer.step = capture
            super().optimizer_step()
            self.optimizer.step = step

    data = _train_only(tiny_data, 32)
    for max_norm in (0.01, 1e6):  # clipping, and a bound far above the norm
        trainer, _ = _fit(tiny_model_dir, data, tmp_path / f"clip-{max_norm}", _config(max_steps=1,
                          max_grad_norm=max_norm), trainer_class=Capturing)
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in trainer.raw]
        for p, g in zip(params, trainer.raw):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        assert all(torch.equal(c, p.grad) for c, p in zip(trainer.clipped, params))


# ==================================================================================================================
# precision
# ==================================================================================================================


def test_fp16_on_cpu_is_a_config_error(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        textclf.Trainer(str(tiny_model_dir), tiny_data, tmp_path / "run", _config(precision="fp16"), progress=False)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
def test_bf16_trains_as_well_as_fp32(tiny_model_dir, tiny_data, tmp_path):
    class Probe(textclf.Trainer):
        def training_step(self, batch):
            self.widths = getattr(self, "widths", []) + [batch["input_ids"].shape[1]]
            output = super().training_step(batch)
            self.logit_dtype = output.logits.dtype
            return output

    data = _train_only(tiny_data, 60)
    accuracy = {}
    for precision in ("fp32", "bf16"):
        config = _config(epochs=15, batch_size=16, lr=1e-2, warmup_ratio=0.1, precision=precision, log_steps=100)
        trainer, _ = _fit(tiny_model_dir, data, tmp_path / precision, config, trainer_class=Probe,
                          model_config=textclf.ModelConfig(pooling="mean"))
        accuracy[precision] = trainer.evaluate(data.train).accuracy  # memorising 60 rows
        if precision == "bf16":
            assert trainer.runtime.precision == "bf16"
            assert trainer.logit_dtype == torch.bfloat16  # autocast really ran in bf16
            assert any(width % 8 for width in trainer.widths)  # no padding to multiples of 8 on CPU (GPU only)
            assert next(trainer.model.parameters()).dtype == torch.float32  # master weights stay fp32
        else:
            assert trainer.logit_dtype == torch.float32
    assert accuracy["fp32"] >= 0.8, accuracy
    assert accuracy["bf16"] >= accuracy["fp32"] - 0.1, accuracy


# ==================================================================================================================
# errors a user can act on
# ==================================================================================================================


def test_dev_label_absent_from_training_is_named(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(TINY_DATA / "train.csv", folder / "train.csv")
    dev = (TINY_DATA / "dev.csv").read_text(encoding="utf-8").rstrip("\n") + "\n明天多云转晴,weather\n"
    (folder / "dev.csv").write_text(dev, encoding="utf-8")
    with pytest.raises(DataError) as info:
        textclf.load_dataset(folder)
    assert "weather" in str(info.value) and "dev.csv" in str(info.value)


def test_evaluating_a_split_with_an_unknown_label_is_named(tiny_model_dir, tiny_data, tmp_path):
    trainer = textclf.Trainer(str(tiny_model_dir), tiny_data, tmp_path / "run", _config(), progress=False)
    extra = textclf.read_split([("明天多云转晴", "weather"), ("股市大涨", "stocks")], name="extra")
    with pytest.raises(DataError, match="weather"):
        trainer.evaluate(extra)


def test_config_errors_name_the_field(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.grad_accum"):
        _config(grad_accum=0)
    with pytest.raises(ConfigError, match=r"train\.lr"):
        _config(lr="5e-5")
    # The tiny encoder has 128 positions: a longer max_length is refused up front, naming the field.
    with pytest.raises(ConfigError, match=r"train\.max_length"):
        textclf.Trainer(str(tiny_model_dir), tiny_data, tmp_path / "run", _config(max_length=512), progress=False)


def test_output_folder_refuses_to_mix_runs(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "run"
    data = _train_only(tiny_data, 16)
    _fit(tiny_model_dir, data, out, _config(max_steps=1))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutputDirError, match="overwrite"):
        _fit(tiny_model_dir, data, out, _config(max_steps=2))
    assert sorted(p.name for p in out.iterdir()) == before  # refused before touching anything
    assert RunConfig.load(out / "config.yaml").train.max_steps == 1
    # A file of the user's in the run folder: --overwrite refuses too, as the folder is no longer textclf's alone.
    (out / "notes.txt").write_text("written into the first run's folder")
    with pytest.raises(OutputDirError, match="notes.txt"):
        _fit(tiny_model_dir, data, out, _config(max_steps=2), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, "notes.txt"])
    (out / "notes.txt").unlink()
    _, result = _fit(tiny_model_dir, data, out, _config(max_steps=2), overwrite=True)
    assert result.global_step == 2
    assert RunConfig.load(out / "config.yaml").train.max_steps == 2
    assert [r["step"] for r in _train_logs(out)] == [1, 2]  # the log holds the new run only


def test_output_folder_not_written_by_textclf_is_never_deleted(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(OutputDirError, match="thesis.tex"):
            _fit(tiny_model_dir, _train_only(tiny_data, 16), out, _config(max_steps=1), overwrite=overwrite)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_token_budget_batches_train_on_every_row(tiny_model_dir, tiny_data, tmp_path):
    """With max_tokens set, batches follow the token budget and one epoch still covers every row once."""
    config = textclf.TrainConfig(epochs=1, max_tokens=256, precision="fp32", max_length=64)
    trainer = textclf.Trainer(model=str(tiny_model_dir), data=tiny_data, output_dir=tmp_path / "out", config=config,
                              progress=False)
    batches = trainer.train_sampler.epoch_batches(0)
    lengths = trainer.train_dataset.lengths
    assert sorted(row for batch in batches for row in batch) == list(range(len(trainer.train_dataset)))
    assert all(len(b) * max(lengths[b]) <= 256 for b in batches)
    result = trainer.fit()
    assert result.global_step == len(batches)


def test_the_epoch_plan_is_drawn_once_per_epoch_not_per_step(tiny_model_dir, tiny_data, tmp_path):
    """The loop asks for total_steps after every step; answering must not re-plan the epoch (a shuffle and sort of
    every row) each time."""
    config = _config(epochs=2, eval_steps=None)
    trainer = textclf.Trainer(str(tiny_model_dir), _train_only(tiny_data), tmp_path / "out", config, progress=False)
    sampler = trainer.train_sampler
    planned = []
    plan = sampler.epoch_batches
    sampler.epoch_batches = lambda epoch: planned.append(epoch) or plan(epoch)
    result = trainer.fit()
    assert result.global_step == trainer.total_steps > 4
    assert planned == [0, 0, 1]  # the count (once), then each epoch's batches


class _OwnLossTrainer(textclf.Trainer):
    """The documented way to compute a loss by hand: forward, loss, ``self.backward`` (no accumulation arithmetic)."""

    def training_step(self, batch):
        from textclf.train.trainer import StepOutput

        batch = self._to_device(batch)
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        self.backward(loss)
        return StepOutput(loss.detach(), logits.detach(), len(logits), int(batch["attention_mask"].sum()))


def test_an_overriding_training_step_accumulates_through_backward(nodrop_model_dir, tiny_data, tmp_path):
    data = _train_only(tiny_data)
    big, _ = _accum_run(nodrop_model_dir, data, tmp_path / "big", 8, 1, max_steps=3)
    config = _config(batch_size=4, grad_accum=2, group_by_length=False, warmup_ratio=0.0, schedule="constant",
                     lr=1e-3, max_steps=3)
    own = _OwnLossTrainer(str(nodrop_model_dir), data, tmp_path / "own", config,
                          model_config=textclf.ModelConfig(dropout=0.0), progress=False)
    own.fit()
    _assert_same_weights(_weights(big), _weights(own), atol=1e-5)


class _CountingDevPasses(textclf.Trainer):
    """Counts the model's passes over the dev split (a pass that reads kept outputs is not one)."""

    dev_passes = 0

    def inference_batches(self, dataset, every_row: bool = False):
        if dataset is self.dev_dataset:
            self.dev_passes += 1
        return super().inference_batches(dataset, every_row)


class _BestStep(Callback):
    """Declares which evaluation is the best (the last one, or the first), whatever the tiny model scored."""

    def __init__(self, last: bool):
        self.last = last

    def on_evaluate(self, trainer, report):  # the next evaluation improves on this one always, or never
        trainer.state.best_metric = -1.0 if self.last else 2.0


@pytest.mark.parametrize("best_is_last", [True, False])
def test_the_end_of_a_run_scores_dev_once_when_the_best_step_is_the_last(tiny_model_dir, tiny_data, tmp_path,
                                                                          best_is_last):
    trainer, result = _fit(tiny_model_dir, tiny_data, tmp_path / "run", _config(max_steps=2, eval_steps=1),
                           _CountingDevPasses, callbacks=[_BestStep(last=best_is_last)])
    # Two evaluations during training; the final reports read the last one's outputs unless the best is another step
    assert trainer.dev_passes == (2 if best_is_last else 3)
    assert trainer._final_dev_outputs is None  # nothing of the run's outputs is kept afterwards
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    again = textclf.Trainer.from_pretrained(tmp_path / "run" / "best", data=tiny_data, precision="fp32")
    fresh = again.evaluate(tiny_data.dev)
    assert metrics["dev"]["accuracy"] == fresh.accuracy
    assert metrics["dev"]["loss"] == pytest.approx(fresh.loss, rel=1e-5)
    assert metrics["dev"]["confusion_matrix"] == fresh.to_dict()["confusion_matrix"]
    # last/ shares best/'s weight file exactly when they hold the same step, and loads as a model of its own
    best, last = (os.stat(tmp_path / "run" / name / "model.safetensors") for name in ("best", "last"))
    assert (best.st_ino == last.st_ino) == best_is_last and best.st_nlink == (2 if best_is_last else 1)
    steps = [json.loads((tmp_path / "run" / name / "textclf.json").read_text())["step"] for name in ("best", "last")]
    assert steps == ([2, 2] if best_is_last else [1, 2])
    last_model = textclf.Trainer.from_pretrained(tmp_path / "run" / "last", data=tiny_data, precision="fp32")
    assert (last_model.evaluate(tiny_data.dev).accuracy == fresh.accuracy) or not best_is_last


def test_a_linked_weight_file_falls_back_to_a_written_one_where_links_fail(tiny_model_dir, tiny_data, tmp_path,
                                                                          monkeypatch):
    from textclf.model.classifier import TextClassifier

    model = TextClassifier.from_encoder(str(tiny_model_dir), tiny_data.label_map)
    model.save_pretrained(tmp_path / "best")

    def no_links(source, target):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    model.save_pretrained(tmp_path / "last", weights_from=tmp_path / "best")
    best, last = (tmp_path / name / "model.safetensors" for name in ("best", "last"))
    assert os.stat(last).st_nlink == 1 and last.read_bytes() == best.read_bytes()
