"""The learning-rate range test (Smith, 2017, "Cyclical Learning Rates for Training Neural Networks"; the "lr finder"
of fastai and PyTorch Lightning): train for a few dozen optimizer steps while the learning rate grows exponentially
from tiny to huge, watch the loss, and suggest a rate a tenth of the one where it was lowest.

:func:`find_lr` runs the steps through the trainer's own ``training_step`` (so its objective, precision, custom
loss and head take part) and optimizer groups, and leaves the trainer exactly as it found it: weights, random
states and the data order of the run to come. ``Trainer.find_lr()`` and ``textclf lr-find`` call it.

A loss that is not finite at the very first step (measured before any update, at the start rate) says nothing about
learning rates: the model, the data or the precision is broken, and no range would help. That is a
:class:`~textclf.errors.TrainingError`, not a curve. A loss that becomes non-finite later is the divergence the test
looks for; ``lr_find.json`` records such a step as ``null`` (strict JSON has no ``NaN`` or ``Infinity``).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import outputs
from ..errors import ConfigError, TrainingError
from ..eval.calibration import draw_safely
from ..runtime import rng_state, set_rng_state

# Smoothing of the loss curve (an exponential moving average with bias correction, as fastai's): one noisy batch
# must not end the test or move the suggestion.
SMOOTHING = 0.9


@dataclass
class LRFindResult:
    """The curve and the suggestion.

    Attributes:
        lrs: the learning rate of each step.
        losses: the training loss of each step, as measured.
        smoothed: ``losses`` smoothed (what the suggestion and the stopping rule read).
        suggestion: a tenth of the learning rate at the lowest smoothed loss (None when the loss never fell).
        stopped_early: the loss diverged (passed ``diverge`` times its best) before the last step.
        files: what was written (``lr_find.png``, ``lr_find.json``).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    stopped_early: bool = False
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the console."""
        if self.suggestion is None and self.losses and not math.isfinite(self.losses[-1]):
            return (f"lr-find: the loss became {self.losses[-1]} at lr {self.lrs[-1]:.1e} (step {len(self.lrs)}) "
                    f"before it fell; start lower (--start-lr below {self.lrs[0]:.1e}) or lower --end-lr")
        if self.suggestion is None:
            return (f"lr-find: the loss did not fall between {self.lrs[0]:.1e} and {self.lrs[-1]:.1e}; try a wider "
                    "range (--start-lr, --end-lr) or more steps")
        stopped = ", stopped when the loss diverged" if self.stopped_early else ""
        return (f"lr-find: suggested lr {self.suggestion:.1e} (a tenth of the lowest-loss rate; {len(self.lrs)} "
                f"steps from {self.lrs[0]:.1e} to {self.lrs[-1]:.1e}{stopped})")


def find_lr(trainer, start_lr: float = 1e-7, end_lr: float = 1.0, steps: int = 100, diverge: float = 4.0,
            output_dir: str | Path | None = None) -> LRFindResult:
    """Run the range test on ``trainer`` (a :class:`~textclf.Trainer` before ``fit``) and restore it afterwards.

    Args:
        start_lr, end_lr: the learning rates of the first and the last step (the rate of the top layer; groups
            with their own rate, such as ``head_lr`` or layer-wise decay, keep their ratio to it).
        steps: optimizer steps (each of ``batch_size x grad_accum`` rows, cycling through the epochs' batches).
        diverge: stop once the smoothed loss exceeds this many times its lowest value.
        output_dir: where ``lr_find.png``, ``lr_find.json`` and TensorBoard scalars (``runs/lr_find``) go;
            None writes nothing.
    """
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr-find: need 0 < start lr < end lr, got {start_lr:g} and {end_lr:g}")
    if steps < 5:
        raise ConfigError(f"lr-find: steps must be at least 5 to draw a curve, got {steps}")
    if trainer.train_dataset is None:
        raise ConfigError("lr-find trains for a few steps; the trainer needs training data (data=...)")
    saved_weights = copy.deepcopy(trainer.model.state_dict())
    saved_rng, was_training = rng_state(), trainer.model.training
    saved = (trainer.optimizer, trainer.scheduler, trainer.scaler, getattr(trainer, "accumulated", None),
             getattr(trainer, "ddp_model", None))
    lrs, losses = [], []
    try:
        trainer.optimizer, _ = trainer.configure_optimizers()
        trainer.scaler = trainer.runtime.grad_scaler()
        trainer.ddp_model = trainer.model  # each process tests on its own rows: no gradient all-reduce
        # the schedule set the groups' rates to their warmup start (0); their peak rates keep the ratios between them
        ratios = [group.get("initial_lr", group["lr"]) / trainer.config.lr for group in trainer.optimizer.param_groups]
        trainer.model.train()
        for lr, batches in zip(_rates(start_lr, end_lr, steps), _step_batches(trainer, steps)):
            for group, ratio in zip(trainer.optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            try:
                loss = _one_step(trainer, batches)
            except torch.OutOfMemoryError:
                raise TrainingError(f"lr-find ran out of {trainer.runtime.device.type} memory at batch size "
                                    f"{trainer.config.batch_size}; lower --batch-size (and raise --grad-accum to "
                                    "keep the effective batch)") from None
            if not lrs and not math.isfinite(loss):
                raise TrainingError(_first_step_message(trainer, lr, loss))
            lrs.append(lr)
            losses.append(loss)
            smoothed = _smooth(losses)
            if not math.isfinite(loss) or smoothed[-1] > diverge * min(smoothed):
                break
    finally:
        trainer.model.load_state_dict(saved_weights)
        trainer.model.zero_grad(set_to_none=True)
        trainer.model.train(was_training)
        trainer.optimizer, trainer.scheduler, trainer.scaler, trainer.accumulated, trainer.ddp_model = saved
        set_rng_state(saved_rng)
    smoothed = _smooth(losses)
    result = LRFindResult(lrs, losses, smoothed, suggest(lrs, smoothed), stopped_early=len(lrs) < steps)
    if output_dir is not None and trainer.runtime.is_main:
        result.files = write_outputs(result, Path(output_dir))
    return result


def _first_step_message(trainer, lr: float, loss: float) -> str:
    """Why a loss can be non-finite before any update, and what to try (a wider range of rates cannot help)."""
    precision = trainer.runtime.precision
    model = getattr(getattr(trainer, "model_config", None), "name", None) or "the model"
    causes = [f"{model} already gives non-finite outputs (damaged or diverged weights: try its original checkpoint)",
              "the data (look for unusual rows: the first batches of the training split)"]
    if precision == "fp16":  # the most common cause where it applies
        causes.insert(0, "fp16 overflow (retry with --precision bf16 or --precision fp32)")
    else:
        causes.append(f"the precision ({precision}; try --precision fp32)")
    return (f"lr-find: the training loss was {loss} at the first step (start lr {lr:.1e}), measured before any "
            "weight was updated, so the start lr cannot have caused it and no range of rates can give a curve; "
            "likely causes: " + "; ".join(causes) + ". textclf train with the same settings stops at such a step "
            "and saves its texts (nonfinite-step-*.jsonl) to look at")


def _rates(start: float, end: float, steps: int):
    for i in range(steps):
        yield start * (end / start) ** (i / (steps - 1))


def _step_batches(trainer, steps: int):
    """Groups of ``grad_accum`` micro-batches, through the epochs' batches in order, for ``steps`` steps."""
    accum, group, epoch, made = trainer.config.grad_accum, [], 0, 0
    while made < steps:
        batches = trainer.train_sampler.epoch_batches(epoch)
        if not batches:
            raise ConfigError("lr-find: the training data gives no batches")
        for index, batch in enumerate(trainer._loader(batches)):
            group.append(trainer.prepare_batch(batch, epoch, index))  # e.g. the masking of MLM pretraining
            if len(group) == accum:
                yield group
                group, made = [], made + 1
                if made == steps:
                    return
        epoch += 1


def _one_step(trainer, batches: list[dict]) -> float:
    """Forward and backward of the micro-batches, unscale, clip, step; the mean loss (one host sync per step: the
    curve is what this is for)."""
    trainer.accumulated = len(batches)
    total = 0.0
    for batch in batches:
        total += float(trainer.training_step(batch).loss)
    trainer.scaler.unscale_(trainer.optimizer)
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.max_grad_norm or math.inf)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.zero_grad()
    return total / len(batches)


def _smooth(losses: list[float]) -> list[float]:
    average, smoothed = 0.0, []
    for i, loss in enumerate(losses, 1):
        average = SMOOTHING * average + (1 - SMOOTHING) * (loss if math.isfinite(loss) else 1e30)
        smoothed.append(average / (1 - SMOOTHING**i))
    return smoothed


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """A tenth of the learning rate at the lowest smoothed loss (fastai's ``lr_min / 10``): the loss still falls
    there, safely below the rates where it turns; None when the loss never fell by 2%.

    The steepest fall, the other common rule, sits where the moving average lags the raw loss most; on MiniLM and
    TREC it lands near 1e-3, where fine-tuning diverges, while a tenth of the minimum gives 1.7e-4, beside the 1e-4
    that trains it best (docs/small-data.md).
    """
    if len(lrs) < 3:
        return None
    lowest = int(np.argmin(smoothed))
    if smoothed[lowest] > 0.98 * smoothed[0]:
        return None
    return float(lrs[lowest]) / 10


def write_outputs(result: LRFindResult, folder: Path) -> list[Path]:
    """``lr_find.json`` (the curve), ``lr_find.png`` (loss against lr, the suggestion marked) and TensorBoard scalars
    under ``runs/lr_find`` (loss against step; the lr of each step beside it)."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "lr_find.json"
    # a diverged step's loss is null: NaN and Infinity are not JSON, and strict readers (browsers, jq) refuse them
    curve = {"lrs": result.lrs, "losses": [_finite_or_none(v) for v in result.losses],
             "smoothed": [_finite_or_none(v) for v in result.smoothed], "suggestion": result.suggestion}
    outputs.write_file_atomically(data, json.dumps(curve, indent=1, allow_nan=False) + "\n")
    picture = folder / "lr_find.png"
    # the curve is in lr_find.json already: a picture that fails is a warning
    draw_safely(picture, lambda path: plot(result, path), numbers_in=data.name)
    writer = SummaryWriter(str(folder / "runs" / "lr_find"))
    try:
        for step, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed)):
            writer.add_scalar("lr_find/lr", lr, step)
            writer.add_scalar("lr_find/loss", loss, step)
            writer.add_scalar("lr_find/loss_smoothed", smooth, step)
    finally:
        writer.close()
    return [picture, data, folder / "runs" / "lr_find"]


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def plot(result: LRFindResult, path: Path) -> None:
    """Loss (measured and smoothed) against the learning rate on a log axis, the suggestion as a vertical line."""
    from ..eval.calibration import pyplot, write_png

    plt = pyplot()
    if plt is None:  # no matplotlib: the smoothed curve alone, without axes
        write_png(path, _curve_image(result.smoothed))
        return
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    axis.plot(result.lrs, result.losses, color="#bbbbbb", linewidth=1, label="loss")
    axis.plot(result.lrs, result.smoothed, color="#1f77b4", linewidth=2, label="smoothed")
    if result.suggestion is not None:
        axis.axvline(result.suggestion, color="#d62728", linestyle="--", label=f"suggested {result.suggestion:.1e}")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:  # the diverging tail would flatten the part that matters
        low, high = min(finite), min(max(finite), 4 * min(finite) if min(finite) > 0 else max(finite))
        axis.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.05 * (high - low + 1e-9))
    axis.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(str(path))
    plt.close(figure)


def _curve_image(values: list[float], width: int = 300, height: int = 200) -> np.ndarray:
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    finite = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0, posinf=0.0)
    if len(finite) < 2:
        return image
    low, high = finite.min(), finite.max()
    xs = np.linspace(0, width - 1, len(finite)).astype(int)
    ys = (height - 1 - (finite - low) / max(high - low, 1e-12) * (height - 1)).astype(int)
    image[ys, xs] = (31, 119, 180)
    return image
