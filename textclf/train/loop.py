"""The training loop, written out once for fine-tuning (:class:`~textclf.Trainer`) and MLM pretraining
(:class:`~textclf.Pretrainer`).

:meth:`TrainingLoop.fit` reads top to bottom: take the run folder (or the checkpoint to resume), build the optimizer,
scaler and (under DDP) the wrapped model, then run epochs of micro-batches until the step budget, a callback or a
signal ends training, and hand over to :meth:`_finish`. One optimizer step is an accumulation window of
micro-batches (:meth:`_train_one_epoch`), after which :meth:`_after_optimizer_step` logs, evaluates and checkpoints at
their cadences. Everything that can go wrong on the way -- a non-finite loss, fp16 overflows, out-of-memory, a full
disk, SIGTERM -- is handled here, once, with the same message for both kinds of run.

What differs between fine-tuning and pretraining is a handful of hooks, each documented below:

* :attr:`train_sampler` -- which rows make up each micro-batch of an epoch;
* :meth:`prepare_batch` -- a batch's last preparation on the host (MLM masking; nothing for fine-tuning);
* :meth:`training_step` and :meth:`compute_loss` -- forward, loss, backward;
* :meth:`evaluate_if_due` -- dev evaluation and best-model keeping (fine-tuning);
* :meth:`resolved_config`, :meth:`_data_fingerprint`, :meth:`_data_differences` -- what a checkpoint must agree with;
* :meth:`_row_record` -- what the dump of a non-finite step says about one row;
* :meth:`_finish` -- the final outputs.

Users subclass :class:`~textclf.Trainer` or :class:`~textclf.Pretrainer`, never this class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import outputs
from ..config import TrainConfig, save_mapping
from ..data.collate import count_optimizer_steps, sequential_shard
from ..errors import OutputDirError, TrainingError
from ..runtime import gather_to_main, on_main_process, rng_state, seed_everything, set_rng_state, setup_runtime
from . import checkpoint as ckpt
from .callbacks import Callback, ProgressBar
from .loggers import JsonlLogger, TensorBoardLogger
from .optim import build_adamw, build_scheduler
from .phases import clock_for_run
from .run_folder import disk_full_error, is_disk_full, setting_changes, truncate_log
from .speedups import training_speedups, zero_grad


@dataclass
class TrainState:
    """Progress counters; saved in every checkpoint so a resume continues exactly where training stopped."""

    global_step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    best_metric: float | None = None
    best_step: int | None = None
    last_eval_step: int | None = None
    skipped_steps: int = 0  # consecutive fp16 steps skipped by the GradScaler
    stop_requested: bool = False  # set by a callback (early stopping); survives a resume
    history: list[dict] = field(default_factory=list)  # one entry per dev evaluation (pretraining: per log line)


class TrainingLoop:
    """The loop and the run folder it writes; see the module docstring for the hooks a subclass supplies.

    Args:
        config: the optimisation recipe.
        output_dir: the run folder.
        overwrite: replace an existing run in ``output_dir``.
        callbacks: the callbacks, in the order they are called; a progress bar is added last when ``progress``.
        progress: show a progress bar.
    """

    # More consecutive fp16 steps skipped by the GradScaler than this stops training (the loss keeps overflowing).
    max_skipped_steps: int = 25
    # DDP's find_unused_parameters: a subclass whose custom head or loss leaves some trainable parameter without a
    # gradient sets True (else DDP stops with "Expected to have finished reduction in the prior iteration"); it costs
    # one walk of the autograd graph per step. The built-in model uses every parameter (mean pooling drops the pooler).
    ddp_find_unused_parameters: bool = False
    layout: outputs.Layout = outputs.RUN  # what this kind of run writes into its folder
    saved_outputs: tuple[str, ...] = ("best", "last")  # model folders whose presence means the run saved something
    # Settings a resumed run may change (prefixes of "section.field"); any other difference would make the
    # checkpoint's data position or optimizer state mean something else.
    RESUMABLE_SETTINGS: tuple[str, ...] = ()

    def __init__(self, config: TrainConfig | None, output_dir: str | Path, overwrite: bool,
                 callbacks: list[Callback], progress: bool):
        self.config = config or TrainConfig()
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.clock = clock_for_run()  # seconds per phase, written to timings.json (textclf.train.phases)
        with self.clock.phase("runtime"):
            self.runtime = setup_runtime(self.config.device, self.config.precision)
        seed_everything(self.config.seed)
        self.state = TrainState()
        self.callbacks: list[Callback] = list(callbacks) + ([ProgressBar()] if progress else [])
        self.loggers: list = []
        self.optimizer = self.scheduler = self.scaler = None
        self._sparse_grads = None  # set by fit() while train.speedups keeps an embedding-gradient buffer
        self._interrupt_signal: int | None = None
        self._skipped_total = 0  # fp16 steps the scaler skipped in this run (logged)
        # How to continue after a signal; the command line sets its exact command (same flags, --resume auto).
        self.resume_hint: str | None = None
        self._resumed_meters: dict | None = None

    # ==================================================================================================
    # fit
    # ==================================================================================================

    def fit(self, resume: str | Path | None = None):
        """Train; ``resume="auto"`` continues the newest checkpoint. Returns what :meth:`_finish` returns."""
        # Before the lock (which creates the folder): a run never writes over, into or around what it reads.
        outputs.check_not_input(self.output_dir, self.input_paths())
        created = not self.output_dir.exists()
        # One process writes a run folder at a time (a second one stops at once, naming this one's PID).
        with outputs.locked(self.output_dir) if self.runtime.is_main else contextlib.nullcontext():
            self._interrupt_signal = None  # a notebook may call fit(resume="auto") again after a Ctrl-C
            with self.clock.phase("prepare run"):
                # Rank 0 checks and prepares the folder; the other ranks take its answer (deciding would race).
                checkpoint = on_main_process(self.runtime, self._prepare_output_dir, resume)
                self.optimizer, self.scheduler = self.configure_optimizers()
                self.scaler = self.runtime.grad_scaler()
                self.ddp_model = self._wrap_distributed(self.model)
                if checkpoint is not None:
                    self._restore(checkpoint)  # restores RNG states last, right before the first step
                self._open_loggers()
            self._emit("on_train_begin")
            self.print(self.describe_run())
            try:
                with self._stop_on_signals(), training_speedups(self.model, self.config.speedups,
                                                                self.runtime.distributed) as self._sparse_grads:
                    while not self._done():
                        with self.clock.phase(f"epoch {self.state.epoch + 1}"):
                            self._train_one_epoch()
                result = self._finish()
                if self.runtime.is_main:
                    self.clock.write(self.output_dir)
                self._leave_process_group()
                return result
            except torch.OutOfMemoryError as exc:
                raise self._out_of_memory(exc, created) from None
            except Exception as exc:  # safetensors reports a full disk as its own error type, not an OSError
                if not is_disk_full(exc):
                    raise
                raise self._disk_full(exc, created) from None

    def find_lr(self, start_lr: float = 1e-7, end_lr: float = 1.0, steps: int = 100, diverge: float = 4.0,
                output_dir: str | Path | None = None):
        """The learning-rate range test: ``steps`` optimizer steps at exponentially growing learning rates, the loss
        of each, and a suggested rate (:mod:`textclf.train.lr_find`). Call it before :meth:`fit`: the weights,
        random states and data order are restored afterwards, so the run that follows is the run it would have
        been. With ``output_dir``, writes ``lr_find.png``, ``lr_find.json`` and TensorBoard scalars there.

        Returns:
            An :class:`~textclf.train.lr_find.LRFindResult` (``.suggestion``, ``.lrs``, ``.losses``).
        """
        from .lr_find import find_lr

        return find_lr(self, start_lr, end_lr, steps, diverge, output_dir)

    def _train_one_epoch(self) -> None:
        """Run the rest of the current epoch, from ``state.batch_in_epoch`` (non-zero after a resume)."""
        self.model.train()
        batches = self.train_sampler.epoch_batches(self.state.epoch)
        accum = self.config.grad_accum
        for i, batch in enumerate(self._loader(batches[self.state.batch_in_epoch:]), self.state.batch_in_epoch):
            step_start = i - i % accum
            self.accumulated = min(accum, len(batches) - step_start)  # micro-batches in this optimizer step
            is_step = i + 1 == step_start + self.accumulated
            self._current_rows = batches[step_start : i + 1]
            if i == step_start:
                self._step_losses = []
            batch = self.prepare_batch(batch, self.state.epoch, i)
            with self._no_sync_unless(is_step):
                output = self.training_step(batch)
            self._step_losses.append(output.loss)  # stays on the device; read only if the step is not finite
            self._track(output)
            if not is_step:
                continue
            self.optimizer_step()
            self.state.global_step += 1
            end_of_epoch = i + 1 == len(batches)
            # The position is recorded before any checkpoint is written, so a resume starts at the next batch.
            self.state.epoch, self.state.batch_in_epoch = (self.state.epoch + 1, 0) if end_of_epoch else (
                self.state.epoch, i + 1)
            self._after_optimizer_step(end_of_epoch)
            if self._done():
                return

    def _done(self) -> bool:
        return self.state.global_step >= self.total_steps or self.should_stop or self._interrupt_signal is not None

    def _after_optimizer_step(self, end_of_epoch: bool) -> None:
        """Log, evaluate and checkpoint at their cadences; then let callbacks react."""
        step, cfg = self.state.global_step, self.config
        last = step >= self.total_steps
        self._emit("on_step_end")
        self._agree_on_interrupt()
        if step % cfg.log_steps == 0 or last:
            self._log_training()
        with self.clock.phase("evaluate dev"):
            self.evaluate_if_due(end_of_epoch, last)
        if end_of_epoch:
            self._emit("on_epoch_end")
        save_due = (cfg.save_steps and step % cfg.save_steps == 0) or (cfg.save_steps is None and end_of_epoch)
        # The last step needs no checkpoint (the final outputs follow at once), unless a signal stops us before them.
        if (save_due and not last) or self._interrupt_signal is not None:
            with self.clock.phase("checkpoints"):
                self.save_checkpoint()

    # ==================================================================================================
    # override points and hooks
    # ==================================================================================================

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW (no decay on biases/LayerNorm) and warmup + linear/cosine decay, stepped per optimizer step."""
        optimizer = build_adamw(self.model, self.config.lr, self.config.weight_decay, self.runtime.device)
        scheduler = build_scheduler(optimizer, self.total_steps, self.config.warmup_ratio, self.config.schedule)
        return optimizer, scheduler

    def prepare_batch(self, batch: dict[str, torch.Tensor], epoch: int, index: int) -> dict[str, torch.Tensor]:
        """The last preparation of micro-batch ``index`` of ``epoch`` on the host, before :meth:`training_step`."""
        return batch

    def training_step(self, batch: dict[str, torch.Tensor]):
        """Forward, loss and backward of one micro-batch (:meth:`backward`); returns a step output with ``loss``,
        ``num_rows``, ``num_tokens``."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        """The backward pass of one micro-batch's mean ``loss``: divided by the micro-batches in this accumulation
        window, so the summed gradients equal one big batch's, and scaled for fp16. A ``training_step`` that
        computes its own loss calls this and repeats none of the arithmetic."""
        self.scaler.scale(loss / self.accumulated).backward()

    def optimizer_step(self) -> None:
        """Unscale, clip, step (skipped by the scaler on fp16 overflow), update, zero grads, step the schedule."""
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.max_grad_norm or math.inf
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        self.grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], foreach=True)
        # One host sync per optimizer step, on purpose: a non-finite gradient must never reach the weights.
        norm = float(self.grad_norm)
        if not math.isfinite(norm) and not self.scaler.is_enabled():
            self._raise_non_finite()
        # Scaled by max_norm / (norm + 1e-6) when that is below 1 (clip_grad_norm_'s rule); a pass over every
        # gradient that multiplies by exactly 1 is skipped, so the updates are bit for bit clip_grad_norm_'s.
        if math.isfinite(norm) and norm + 1e-6 > max_norm:
            torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, self.grad_norm, foreach=True)
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)  # skips the update when fp16 gradients overflowed
        self.scaler.update()
        self.zero_grad()
        if scale_before is not None and self.scaler.get_scale() < scale_before:  # the scaler skipped this step
            self.state.skipped_steps += 1
            self._skipped_total += 1
            if self.state.skipped_steps > self.max_skipped_steps:
                self._raise_non_finite(f"{self.state.skipped_steps} consecutive optimizer steps were skipped because "
                                       f"the fp16 gradients overflowed (loss scale now {self.scaler.get_scale():g})")
            return  # the schedule follows the optimizer: no update, no learning-rate step
        self.state.skipped_steps = 0
        self.scheduler.step()

    def zero_grad(self) -> None:
        """Drop the gradients after a step; the sparse-gradient embedding's buffer is zeroed and kept (speedups)."""
        zero_grad(self.optimizer, self._sparse_grads)

    def evaluate_if_due(self, end_of_epoch: bool, last: bool) -> None:
        """Evaluate on dev when due (called after every optimizer step); pretraining has no dev split."""

    def describe_run(self) -> str:
        """The line printed when training starts."""
        return (f"training on {self.runtime.device} in {self.runtime.precision}: {len(self.train_dataset)} rows, "
                f"{self.total_steps} optimizer steps")

    def resolved_config(self) -> dict:
        """What ``config.yaml`` holds; a resume compares it with the checkpoint's (:attr:`RESUMABLE_SETTINGS`)."""
        raise NotImplementedError

    def _data_fingerprint(self) -> dict:
        """What identifies the training data; saved in every checkpoint."""
        raise NotImplementedError

    def _data_differences(self, saved: dict) -> list[str]:
        """How the checkpoint's data fingerprint ``saved`` differs from this run's, one phrase per difference."""
        raise NotImplementedError

    def _row_record(self, row: int) -> dict:
        """What the dump of a non-finite step writes about training row ``row``."""
        return {"text": self.train_dataset.texts[row]}

    def _checkpoint_extras(self) -> dict:
        """More entries for a checkpoint's state (read back by :meth:`_restore_extras`)."""
        return {}

    def _restore_extras(self, state: dict) -> None:
        """Read back what :meth:`_checkpoint_extras` saved."""

    def _checkpoint_module(self) -> nn.Module:
        """The module whose weights a checkpoint holds."""
        return self.model

    def _finish(self):
        """Write the final outputs and return the result of :meth:`fit`."""
        raise NotImplementedError

    # ==================================================================================================
    # derived quantities
    # ==================================================================================================

    @property
    def should_stop(self) -> bool:
        """Callbacks set ``trainer.should_stop = True`` to end training after the current step."""
        return self.state.stop_requested

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.state.stop_requested = bool(value)

    @functools.cached_property
    def batches_per_epoch(self) -> int:
        # Counted once: planning an epoch shuffles and sorts every row (about 0.1 s per 100k rows), and the loop
        # asks for total_steps after every step.
        return len(self.train_sampler.epoch_batches(0))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.config.grad_accum)

    @property
    def total_steps(self) -> int:
        cfg = self.config
        return count_optimizer_steps(self.batches_per_epoch, cfg.grad_accum, cfg.epochs, cfg.max_steps)

    @property
    def global_batch_size(self) -> int:
        return self.config.batch_size * self.runtime.world_size * self.config.grad_accum

    # ==================================================================================================
    # helpers
    # ==================================================================================================

    def print(self, message: str, file=None) -> None:
        """Print on rank 0 only (above the progress bar)."""
        if self.runtime.is_main:
            from tqdm.auto import tqdm

            tqdm.write(message, file=file)

    def _emit(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def _loader(self, batches: list[list[int]], dataset=None) -> DataLoader:
        # A private generator: without one, every new DataLoader iterator draws its worker base seed from the
        # global torch RNG, so an evaluation (or the fresh iterator a resume starts) would shift every later
        # dropout mask, and a resumed run would no longer match an uninterrupted one bit for bit.
        return DataLoader(dataset or self.train_dataset, batch_sampler=batches, collate_fn=self.collate,
                          num_workers=self.config.num_workers, pin_memory=self.runtime.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.config.seed))

    @contextlib.contextmanager
    def inference(self):
        """The model in eval mode under ``torch.inference_mode`` for the block; its mode is restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)

    def inference_batches(self, dataset, every_row: bool = False):
        """``(rows, batch)`` pairs over ``dataset`` (which has per-row ``lengths``) in evaluation batches of similar
        length: this rank's disjoint share of the rows, or with ``every_row`` all of them (on every rank)."""
        rank, world = (0, 1) if every_row else (self.runtime.rank, self.runtime.world_size)
        batches = sequential_shard(len(dataset), self.config.eval_batch_size, rank, world, dataset.lengths)
        return zip(batches, self._loader(batches, dataset))

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        non_blocking = self.runtime.device.type == "cuda"  # pinned host memory lets the copy overlap compute
        return {k: v.to(self.runtime.device, non_blocking=non_blocking) for k, v in batch.items()}

    def _wrap_distributed(self, model: nn.Module) -> nn.Module:
        if not self.runtime.distributed:
            return model
        device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                   find_unused_parameters=self.ddp_find_unused_parameters)

    def _leave_process_group(self) -> None:
        """Let every rank leave :meth:`fit` together, holding nothing of the process group.

        Without the barrier, rank 1 exits while rank 0 still writes the reports, and tears its process group down
        under a live peer; a DDP wrapper kept alive past ``fit`` (by the caller's reference to the trainer) would
        keep gloo's worker threads and their tensors until interpreter shutdown, where freeing them needs a GIL
        that is gone, and the process aborts ("terminate called without an active exception") after a run that
        succeeded.
        """
        if self.runtime.distributed and self._interrupt_signal is None:  # a stopped run's ranks may be apart
            torch.distributed.barrier()
        self.ddp_model = self.model

    def _no_sync_unless(self, is_step: bool):
        """Skip DDP's gradient all-reduce on accumulation micro-steps; sync once per optimizer step."""
        if self.runtime.distributed and not is_step:
            return self.ddp_model.no_sync()
        return contextlib.nullcontext()

    # ---- meters and logging ----------------------------------------------------------------------------

    def _open_loggers(self) -> None:
        self._reset_meters()
        if self._resumed_meters:  # a resume continues the log interval the checkpoint was written in
            self._load_meters(self._resumed_meters)
            self._resumed_meters = None
        if self.runtime.is_main:
            purge = self.state.global_step + 1 if self.state.global_step else None
            self.loggers = [TensorBoardLogger(self.output_dir / "runs", purge),
                            JsonlLogger(self.output_dir / "log.jsonl")]

    def _close_loggers(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []

    def _reset_meters(self) -> None:
        self._loss_sum = torch.zeros((), device=self.runtime.device)
        self._micro_batches = self._rows = self._tokens = 0
        self._interval_start = time.perf_counter()

    def _track(self, output) -> None:
        self._loss_sum += output.loss  # stays on the device: no sync until the next log
        self._micro_batches += 1
        self._rows += output.num_rows
        self._tokens += output.num_tokens

    def _meter_state(self) -> dict:
        """The open log interval, so the first train/loss logged after a resume is the uninterrupted one."""
        return {"loss_sum": float(self._loss_sum), "micro_batches": self._micro_batches, "rows": self._rows,
                "tokens": self._tokens, "skipped_total": self._skipped_total}

    def _load_meters(self, meters: dict) -> None:
        self._loss_sum += meters["loss_sum"]
        self._micro_batches, self._tokens = meters["micro_batches"], meters["tokens"]
        self._rows = meters.get("rows", 0)
        self._skipped_total = meters.get("skipped_total", 0)

    def _training_logs(self, elapsed: float) -> dict[str, float]:
        """The log line of the interval that ends now (its one host sync)."""
        loss_sum, micro_batches, rows, tokens = float(self._loss_sum), self._micro_batches, self._rows, self._tokens
        if self.runtime.distributed:  # the whole job's interval, not rank 0's share: one small all-reduce
            totals = torch.tensor([loss_sum, micro_batches, rows, tokens], dtype=torch.float64,
                                  device=self.runtime.device)
            torch.distributed.all_reduce(totals)
            loss_sum, micro_batches, rows, tokens = totals.tolist()
        logs = {
            "train/loss": loss_sum / max(1, micro_batches),
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": float(self.grad_norm),
            "train/samples_per_second": rows / elapsed,
            "train/tokens_per_second": tokens / elapsed,
            "train/epoch": self.state.epoch
            + self.state.batch_in_epoch / max(1, self.steps_per_epoch * self.config.grad_accum),
        }
        if self.scaler.is_enabled():
            logs["train/loss_scale"] = self.scaler.get_scale()
            logs["train/skipped_steps"] = self._skipped_total
        return logs

    def _log_training(self) -> dict[str, float]:
        logs = self._training_logs(max(time.perf_counter() - self._interval_start, 1e-9))
        for logger in self.loggers:
            logger.log_metrics(logs, self.state.global_step)
        self._emit("on_log", logs)
        self._reset_meters()
        return logs

    # ---- the run folder --------------------------------------------------------------------------------

    def input_paths(self) -> dict[str, object]:
        """What the run reads from disk, by the flag that names it (``{"--data": [paths]}``); the output folder may
        not be, contain or lie inside any of them (:func:`textclf.outputs.check_not_input`)."""
        return {}

    def _prepare_output_dir(self, resume) -> Path | None:
        """Refuse to mix runs; find the checkpoint to resume from; write the resolved config.

        Every check runs before anything is created or deleted, so a refused call leaves the folder as it was.
        ``resume="auto"`` without a checkpoint starts fresh, over the leftovers of the same run only.
        """
        out = self.output_dir
        checkpoint = None
        if resume == "auto":
            checkpoint = ckpt.latest_checkpoint(out / "checkpoints")
        elif resume:
            checkpoint = Path(resume)
            if not (checkpoint / ckpt.STATE_FILE).is_file():
                raise OutputDirError(f"--resume {resume}: not a checkpoint folder (no {ckpt.STATE_FILE}); "
                                     f"use --resume auto or a folder under {out / 'checkpoints'}")
        if checkpoint is not None:
            self._check_resumable(checkpoint)
            elsewhere = checkpoint.resolve().parent.parent != out.resolve()  # --resume OTHER_RUN/checkpoints/...
            if elsewhere and outputs.has_content(out):
                raise OutputDirError(f"--resume {checkpoint}: the output folder {out} holds another run; continue "
                                     "in the checkpoint's own output folder or in a new, empty one")
            self.print(f"resuming from {checkpoint}")
        elif outputs.has_content(out):
            outputs.check_replaceable(out, self.layout)  # never delete a folder textclf did not write, not even now
            changed = self._setting_changes(_read_yaml(out / "config.yaml")) if resume == "auto" else None
            if not self.overwrite and changed != []:
                if resume == "auto":
                    raise OutputDirError(f"output folder {out} holds a different run and no checkpoint to resume "
                                         f"(settings that differ: {'; '.join(changed)}); pass --overwrite "
                                         "(overwrite=True) to replace it, or choose another folder")
                raise OutputDirError(f"output folder {out} already holds a run; pass --overwrite (overwrite=True) "
                                     "to replace it, --resume auto to continue it, or choose another folder")
            self.print(f"no checkpoint in {out}; starting fresh" if resume == "auto" else f"replacing {out}")
            if self.runtime.is_main:
                outputs.replace(out, self.layout)
        elif out.exists() and not out.is_dir():
            raise OutputDirError(f"{out} exists and is not a folder; choose another --output")
        if self.runtime.is_main and checkpoint is None:  # a resume writes only once the checkpoint has loaded
            outputs.claim(out, self.layout)
            self._save_config()
        return checkpoint

    def _save_config(self) -> None:
        save_mapping(self.resolved_config(), self.output_dir / "config.yaml")

    def _setting_changes(self, saved: dict | None) -> list[str]:
        """``"section.field: then -> now"`` for every setting that differs from ``saved`` and matters to a resume."""
        return setting_changes(self.resolved_config(), saved, self.RESUMABLE_SETTINGS)

    def _check_resumable(self, checkpoint: Path) -> None:
        """Refuse a checkpoint of other data or other settings, naming what differs."""
        state = ckpt.read_state(checkpoint)
        problems = self._setting_changes(state.get("config")) + self._data_differences(state.get("data") or {})
        if state.get("world_size", 1) != self.runtime.world_size:
            problems.append(f"processes: {state.get('world_size', 1)} -> {self.runtime.world_size}")
        if problems:
            raise OutputDirError(
                f"cannot resume from {checkpoint}: this run differs from the one that wrote it "
                f"({'; '.join(problems)}). Resume with the original data and settings (see "
                f"{self.output_dir / 'config.yaml'}), or pass --overwrite without --resume to start over"
            )

    # ---- checkpoints -----------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write the full training state to ``checkpoints/step-NNNNNN`` (rank 0), then rotate old ones."""
        folder = self.output_dir / "checkpoints" / ckpt.checkpoint_name(self.state.global_step)
        meters = self._meter_state()
        # Under DDP each rank has its own RNG streams (dropout) and its own share of the log interval: rank 0
        # collects every rank's, so each rank resumes exactly its own. Everything else is the same on every rank.
        per_rank = gather_to_main(self.runtime, (rng_state(), meters))
        if self.runtime.is_main:
            state = {
                "train_state": dataclasses.asdict(self.state),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                # by class, so adding or removing a stateless callback between runs cannot misassign a state
                "callbacks": [{"class": type(cb).__name__, "state": cb.state_dict()} for cb in self.callbacks],
                "meters": meters,
                "config": self.resolved_config(),
                "data": self._data_fingerprint(),
                "world_size": self.runtime.world_size,  # each process's share of an epoch depends on it
                **self._checkpoint_extras(),
            }
            rng = per_rank[0][0]
            if self.runtime.distributed:
                rng = [rank_rng for rank_rng, _ in per_rank]
                state["meters_other_ranks"] = {str(r): m for r, (_, m) in enumerate(per_rank) if r}
            ckpt.save_checkpoint(folder, self._checkpoint_module(), self.optimizer, rng, state)
            ckpt.rotate_checkpoints(folder.parent, self.config.keep_checkpoints)
        if self.runtime.distributed:
            torch.distributed.barrier()
        return folder

    def _restore(self, folder: Path) -> None:
        """Load everything a checkpoint holds; the RNG states go last, so the next step draws what it would have."""
        # Every rank loads the checkpoint (weights and optimizer are the same for all), with its own RNG states.
        state, rng = ckpt.load_checkpoint(folder, self._checkpoint_module(), self.optimizer, self.runtime.device,
                                          self.runtime.rank)
        self.state = TrainState(**state["train_state"])
        self._restore_extras(state)
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        saved: dict[str, list[dict]] = {}
        for entry in state.get("callbacks", []):
            saved.setdefault(entry["class"], []).append(entry["state"])
        for callback in self.callbacks:
            if saved.get(type(callback).__name__):
                callback.load_state_dict(saved[type(callback).__name__].pop(0))
        self._resumed_meters = state.get("meters")
        if self.runtime.rank:  # this rank's own share of the open log interval
            self._resumed_meters = state.get("meters_other_ranks", {}).get(str(self.runtime.rank))
        if self.runtime.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)  # --resume DIR may point outside the output folder
            ckpt.recover_bundles(self.output_dir, self.saved_outputs)
            truncate_log(self.output_dir / "log.jsonl", self.state.global_step)
            self._save_config()
        set_rng_state(rng)

    # ---- failures --------------------------------------------------------------------------------------

    def _report_stop(self) -> None:
        """Say, once and on stderr, that a signal ended training and how to continue from the checkpoint it wrote."""
        name = signal.Signals(self._interrupt_signal).name
        how = self.resume_hint or f"{type(self).__name__}.fit(resume='auto') (or the same command with --resume auto)"
        self.print(f"stopped by {name} after optimizer step {self.state.global_step}; the checkpoint "
                   f"{self.output_dir / 'checkpoints' / ckpt.checkpoint_name(self.state.global_step)} holds "
                   f"everything. To continue exactly where it stopped, run:\n  {how}", file=sys.stderr)

    def _raise_non_finite(self, reason: str | None = None) -> None:
        """Stop with an error naming the step and the batch, and dump the step's texts for inspection.

        Called before the optimizer applies the step, so no weight, checkpoint or model folder ever holds it.
        """
        step, epoch, first = self.state.global_step + 1, self.state.epoch, self.state.batch_in_epoch
        micro_batches = getattr(self, "_current_rows", [])  # row indices of each micro-batch of this step
        # The loss of each micro-batch stayed on the device; we are stopping, so this sync costs nothing.
        losses = [float(loss) for loss in getattr(self, "_step_losses", [])]
        bad = [j for j, loss in enumerate(losses) if not math.isfinite(loss)]
        if reason is None:
            if bad:
                j = bad[0]
                reason = (f"the loss is {losses[j]} in micro-batch {j + 1} of {len(micro_batches)} of this step "
                          f"(batch {first + j} of the epoch, {len(micro_batches[j])} rows)")
            else:
                reason = f"the loss is finite but the gradient norm is {float(self.grad_norm)}"
        dump = self.output_dir / f"nonfinite-step-{step:06d}.jsonl"
        if self.runtime.is_main:
            with open(dump, "w", encoding="utf-8") as handle:
                for j, rows in enumerate(micro_batches):
                    for row in rows:
                        record = {"row": row, "micro_batch": j + 1, "batch_in_epoch": first + j,
                                  "loss": str(losses[j]) if j < len(losses) else None, "non_finite": j in bad,
                                  **self._row_record(row)}
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        last = first + len(micro_batches) - 1
        raise TrainingError(
            f"training stopped at optimizer step {step} (epoch {epoch}, batches {first}-{last} of the epoch): "
            f"{reason}. The texts of this step are in {dump} (\"non_finite\": true marks the micro-batch at "
            f"fault). Lower the learning rate (--lr, now {self.config.lr:g}), keep gradient clipping "
            f"on (--max-grad-norm), train in fp32 (--precision fp32) if you use bf16/fp16, or fix those rows. "
            "No weights were updated by this step and no model was saved from it."
        )

    def _drop_unsaved_run(self, created: bool) -> bool:
        """After a failure: remove half-written folders, and the output folder itself when this call created it and
        nothing was saved yet (only config and logs: the corrected command then needs no --overwrite)."""
        self._close_loggers()
        if not self.runtime.is_main:
            return False
        ckpt.recover_bundles(self.output_dir, self.saved_outputs)  # scratch copies from the failed write
        for leftover in outputs.scratch_glob(self.output_dir / "checkpoints", kind="tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
        saved = any((self.output_dir / name).exists() for name in self.saved_outputs) or bool(
            ckpt.list_checkpoints(self.output_dir / "checkpoints"))
        if created and not saved:
            shutil.rmtree(self.output_dir, ignore_errors=True)
            return True
        return False

    def _disk_full(self, exc: Exception, created: bool) -> TrainingError:
        dropped = self._drop_unsaved_run(created)
        resume = ("nothing was saved, so the same command starts afresh" if dropped else
                  "the last complete checkpoint is intact: continue with --resume auto")
        return disk_full_error(exc, self.output_dir, self.state.global_step, self.config.keep_checkpoints, resume)

    def _out_of_memory(self, exc: BaseException, created: bool) -> TrainingError:
        """Translate an out-of-memory error into the knobs that fix it; drop an output folder holding nothing."""
        self._drop_unsaved_run(created)
        cfg = self.config
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return TrainingError(
            f"out of GPU memory at optimizer step {self.state.global_step + 1} (epoch {self.state.epoch}) on "
            f"{self.runtime.device} ({first_line}). Lower --batch-size (now {cfg.batch_size}) and raise --grad-accum "
            f"(now {cfg.grad_accum}) to keep the same effective batch, lower --max-length (now {cfg.max_length}), "
            f"lower --eval-batch-size (now {cfg.eval_batch_size}) if it failed while evaluating, or use "
            "--precision bf16 (or fp16) to halve activation memory."
        )

    def _agree_on_interrupt(self) -> None:
        """Under DDP, stop every rank at the same step when any got a signal (else the others wait forever)."""
        if not self.runtime.distributed:
            return
        flag = torch.tensor([self._interrupt_signal or 0], device=self.runtime.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # one tiny collective per step
        if int(flag) and self._interrupt_signal is None:
            self._interrupt_signal = int(flag)

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """On SIGTERM/SIGINT: finish the current optimizer step, write a checkpoint, and return cleanly."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._interrupt_signal is not None:  # a second signal: stop at once (the last checkpoint stays)
                for sig, old in previous.items():
                    signal.signal(sig, old)
                raise KeyboardInterrupt
            self._interrupt_signal = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
