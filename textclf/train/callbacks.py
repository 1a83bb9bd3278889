"""Callbacks: plain objects that observe training and may signal ``trainer.should_stop = True``.

A callback implements any of the methods of :class:`Callback`; each is called at one event of
:meth:`textclf.Trainer.fit`. Behaviour changes (losses, optimizer steps) belong in ``Trainer`` overrides,
not here. Callbacks with state that must survive a resume implement ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..eval.metrics import EvalReport
    from .trainer import Trainer

EVENTS = ("on_train_begin", "on_step_end", "on_log", "on_evaluate", "on_epoch_end", "on_train_end")


class Callback:
    """Base class with every event as a no-op; override the ones you need."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first step (also after a resume)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After each optimizer step; ``trainer.state.global_step`` counts optimizer steps."""

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """Every ``log_steps`` optimizer steps, with train loss, learning rate, grad norm and throughput."""

    def on_evaluate(self, trainer: Trainer, report: EvalReport) -> None:
        """After each dev evaluation."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After the last batch of an epoch."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After training stops, for whatever reason."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when the chosen dev metric has not improved for ``patience`` evaluations.

    Args:
        metric: a key of the evaluation report (``macro_f1``, ``accuracy``, ``micro_f1`` or ``loss``).
        patience: evaluations without improvement that are tolerated.
        min_delta: improvement smaller than this does not count.
    """

    def __init__(self, metric: str = "macro_f1", patience: int = 3, min_delta: float = 0.0):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.best = math.inf if metric == "loss" else -math.inf
        self.wait = 0

    def on_evaluate(self, trainer: Trainer, report: EvalReport) -> None:
        value = report[self.metric]
        improved = value < self.best - self.min_delta if self.metric == "loss" else value > self.best + self.min_delta
        if improved:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.should_stop = True
            trainer.print(f"early stopping: {self.metric} has not improved for {self.wait} evaluations "
                          f"(best {self.best:.4f})")

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = state["best"], state["wait"]


class ProgressBar(Callback):
    """A tqdm bar over optimizer steps (``tqdm.auto`` renders as a widget in notebooks)."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.total_steps, initial=trainer.state.global_step, desc="train",
                        unit="step", dynamic_ncols=True, disable=not trainer.runtime.is_main)

    def on_step_end(self, trainer: Trainer) -> None:
        self.bar.update(1)

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self.bar.set_postfix(loss=f"{logs['train/loss']:.4f}", lr=f"{logs['train/lr']:.2e}", refresh=False)

    def on_evaluate(self, trainer: Trainer, report: EvalReport) -> None:
        # trainer.print: tqdm.write above the bar, on rank 0 only (a disabled bar's write still prints)
        loss = f" loss {report.loss:.4f}" if report.loss is not None else ""
        trainer.print(f"step {trainer.state.global_step}: dev accuracy {report.accuracy:.4f} "
                      f"macro-F1 {report.macro_f1:.4f}{loss}")

    def on_train_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class TimeEstimate(Callback):
    """Say once, after the first ``after_steps`` optimizer steps, how long the rest of training will take here.

    The first steps include warm-up costs (kernel selection, allocator growth), so the estimate uses the steps after
    the first one. Printed even without a progress bar: a first run on a laptop should say up front whether it is a
    matter of minutes or of an hour.
    """

    def __init__(self, after_steps: int = 6):
        self.after_steps = max(2, after_steps)
        self.started = self.first_step = None
        self.said = False

    def on_train_begin(self, trainer: Trainer) -> None:
        self.started, self.said = trainer.state.global_step, False

    def on_step_end(self, trainer: Trainer) -> None:
        import time

        step = trainer.state.global_step
        if step == self.started + 1:
            self.first_step = time.perf_counter()
        elif not self.said and step >= self.started + self.after_steps and self.first_step is not None:
            per_step = (time.perf_counter() - self.first_step) / (step - self.started - 1)
            left = trainer.total_steps - step
            minutes, seconds = divmod(round(per_step * left), 60)
            trainer.print(f"about {minutes}:{seconds:02d} min of training left ({left} optimizer steps at "
                          f"{per_step:.2f} s each on {trainer.runtime.device}, evaluations not counted)")
            self.said = True
