"""The training loop, written out by hand.

:meth:`Trainer.fit` reads top to bottom; the work of one step is in a few documented override points:

* :meth:`Trainer.configure_optimizers` -- optimizer and learning-rate schedule;
* :meth:`Trainer.compute_loss` -- ``(logits, batch) -> loss``: override for class weights, focal loss...;
* :meth:`Trainer.training_step` -- forward, loss, backward of one micro-batch;
* :meth:`Trainer.optimizer_step` -- unscale, clip, step, update the scaler, zero grads, step the schedule;
* :meth:`Trainer.evaluation_step` -- forward and loss of one evaluation batch.

Step methods take ``batch: dict[str, Tensor]`` and return a :class:`StepOutput`, so new fields never break
an override. Callbacks (``callbacks.py``) observe; they never change what a step does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import outputs
from ..config import DataConfig, ModelConfig, RunConfig, RunPaths, TrainConfig
from ..data.augment import augment_dataset
from ..data.collate import count_optimizer_steps, length_strata, make_collate, sequential_shard, training_batches
from ..data.normalize import TextNormalizer
from ..data.readers import DatasetSplits, Split, TextClassificationDataset, load_dataset
from ..data.sampling import WeightedBatches, row_weights
from ..data.windows import WindowedTextDataset, WindowSpec, describe_windows, make_window_collate
from ..deploy.predict import Predictor
from ..errors import ConfigError, OutputDirError, TrainingError
from ..eval.analysis import RunAnalysis, RunReport
from ..eval.metrics import ConfusionMatrix, EvalReport, report_from_confusion
from ..eval.multilabel import (
    MultiLabelMetrics,
    Thresholds,
    init_prior_bias,
    read_thresholds,
    save_thresholds,
    tune_thresholds,
)
from ..model import bundle
from ..model.classifier import TextClassifier, load_tokenizer
from ..model.ensemble import load_model
from ..runtime import (
    broadcast_module,
    gather_to_main,
    on_main_process,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_runtime,
)
from . import checkpoint as ckpt
from .callbacks import Callback, EarlyStopping, ProgressBar
from .finetune import GradualUnfreezing, build_finetune_adamw, uses_finetune_control
from .loggers import JsonlLogger, TensorBoardLogger
from .losses import class_weight_vector, classification_loss
from .optim import build_adamw, build_scheduler
from .run_folder import disk_full_error, is_disk_full, setting_changes, truncate_log
from .speedups import training_speedups, zero_grad


@dataclass
class StepOutput:
    """What a step returns. ``loss`` is the batch's mean loss, detached and not divided for accumulation."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    num_rows: int = 0
    num_tokens: int = 0


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
    history: list[dict] = field(default_factory=list)  # one entry per dev evaluation


@dataclass
class FitResult:
    """Summary of :meth:`Trainer.fit`."""

    output_dir: Path
    global_step: int
    best_step: int | None
    best_metric: float | None
    dev: dict | None
    test: dict | None
    stopped_early: bool = False
    interrupted: bool = False
    signal: int | None = None  # the signal (SIGINT, SIGTERM) that interrupted training; exit status 128 + signal


class Trainer:
    """Fine-tunes a :class:`~textclf.model.classifier.TextClassifier` on a dataset.

    Args:
        model: a model name (hub name, local folder, or ``"minilm"``) or a ready ``TextClassifier``.
        data: a :class:`~textclf.data.readers.DatasetSplits` (see :func:`textclf.load_dataset`) or anything
            ``load_dataset`` accepts (a folder, a file, a DataFrame...).
        output_dir: where models, checkpoints, logs and reports go.
        config: the training recipe (:class:`TrainConfig`).
        model_config: pooling, dropout, freezing (:class:`ModelConfig`); ``model`` overrides its ``name``.
        data_config: how to read ``data`` when it is not loaded yet (:class:`DataConfig`).
        tokenizer: a fast tokenizer; by default the model's own.
        head: a custom ``nn.Module`` head from pooled vectors to logits.
        callbacks: extra callbacks; early stopping (when ``config.patience`` is set) and the progress bar are
            added automatically.
        overwrite: replace an existing run in ``output_dir``.
    """

    # More consecutive fp16 steps skipped by the GradScaler than this stops training (the loss keeps overflowing).
    max_skipped_steps: int = 25
    # DDP's find_unused_parameters: a subclass whose custom head or loss leaves some trainable parameter without a
    # gradient sets True (else DDP stops with "Expected to have finished reduction in the prior iteration"); it costs
    # one walk of the autograd graph per step. The built-in model uses every parameter (mean pooling drops the pooler).
    ddp_find_unused_parameters: bool = False
    # Length-grouped batches keep the class mix of the data (a plain length sort makes them class-homogeneous where
    # length and class correlate, which cost 2-8 accuracy points on small data: docs/benchmarks.md). A checkpoint
    # written before stratification existed resumes with the plain sort it started with, so its epochs stay exact.
    stratify_lengths: bool = True

    def __init__(self, model: str | TextClassifier = "minilm", data=None, output_dir: str | Path = "runs/textclf",
                 config: TrainConfig | None = None, *, model_config: ModelConfig | None = None,
                 data_config: DataConfig | None = None, tokenizer=None, head: nn.Module | None = None,
                 callbacks: list[Callback] | None = None, overwrite: bool = False, progress: bool = True,
                 normalizer: TextNormalizer | None = None):
        self.config = config or TrainConfig()
        self.data_config = data_config or DataConfig()
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "custom"
        self.model_config = dataclasses.replace(model_config or ModelConfig(), name=name)
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.runtime = setup_runtime(self.config.device, self.config.precision)
        seed_everything(self.config.seed)

        self.data = (data if isinstance(data, DatasetSplits) or data is None
                     else load_dataset(data, config=self.data_config))
        self.tokenizer = tokenizer or load_tokenizer(self.model_config.name)
        if isinstance(model, nn.Module):  # a TextClassifier, or a loaded EnsembleClassifier (to evaluate it)
            self.model = model
        else:
            if self.data is None:
                raise ConfigError("Trainer: pass data= so the label set is known before the head is built")
            self.model = TextClassifier.from_encoder(self.model_config.name, self.data.label_map,
                                                     self.model_config.pooling, self.model_config.dropout, head)
        if self.model_config.freeze_layers_below is not None:
            self.model.freeze_layers_below(self.model_config.freeze_layers_below)
        # train.unfreeze_every: thaws one more layer every N optimizer steps (None: the frozen layers stay frozen)
        self.unfreezing = GradualUnfreezing.from_config(self.model, self.model_config, self.config, self.runtime)
        self.windows = WindowSpec.from_config(self.config)  # None: long texts are truncated
        if self.windows is not None:
            self.model.configure_windows(self.windows.aggregation)  # before .to(device): may add window_scorer
        self._check_max_length()
        self.model.to(self.runtime.device)
        if self.runtime.distributed:  # the same initial weights on every rank, then each rank its own dropout masks
            seed_everything(self.config.seed, self.runtime.rank)
        self.label_map = self.model.label_map or (self.data.label_map if self.data else None)
        # Multi-label decision thresholds: 0.5 until tuned on dev (tune_thresholds); saved with the best model.
        self.thresholds = Thresholds.fixed(len(self.label_map)) if self.label_map is not None else None

        # Texts are normalised (synonym table, width folding) in _tokenize, for every split and every evaluate.
        self.normalizer = normalizer if normalizer is not None else TextNormalizer.from_config(self.data_config)
        if self.data is not None and self.data_config.augment:  # training rows only; made once, seeded
            self.data = augment_dataset(self.data, self.data_config, self.config.seed, log=self.print)
        self.train_dataset = self._tokenize(self.data.train) if self.data else None
        self.dev_dataset = self._tokenize(self.data.dev) if self.data and self.data.dev else None
        if not isinstance(model, nn.Module) and self.label_map.multi_label and self.train_dataset is not None:
            init_prior_bias(self.model, self.train_dataset.labels)  # a fresh head starts at the label priors
        # train.class_weights as a [C] vector (None: unweighted), from the training labels; see textclf.train.losses
        self.class_weights = (None if self.config.class_weights is None else class_weight_vector(
            self.config.class_weights, self.label_map, getattr(self.train_dataset, "labels", None)
        ).to(self.runtime.device))
        self.collate = (make_window_collate if self.windows else make_collate)(self.tokenizer.pad_token_id or 0,
                                                                                self.runtime.pad_to_multiple_of)

        self.state = TrainState()
        self.callbacks: list[Callback] = list(callbacks or [])
        if self.config.patience is not None:
            self.callbacks.append(EarlyStopping(self.config.metric, self.config.patience))
        if progress:
            self.callbacks.append(ProgressBar())
        self.loggers: list = []
        self.optimizer = self.scheduler = self.scaler = None
        self._sparse_grads = None  # set by fit() while train.speedups keeps an embedding-gradient buffer
        self._interrupt_signal: int | None = None

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "auto", precision: str = "auto",
                        eval_batch_size: int = 128, **kwargs) -> Trainer:
        """A Trainer around a saved model folder, e.g. to ``evaluate`` it on a new file.

        ``max_length`` is the one the model was trained with; ``kwargs`` go to the constructor.
        """
        model = load_model(folder)  # a TextClassifier, or an EnsembleClassifier for an ensemble folder
        trained = bundle.read_meta(folder).get("train_config") or {}
        windowed = {k: trained[k] for k in ("long_texts", "window_overlap", "window_aggregation", "max_windows")
                    if k in trained}  # evaluate reads long texts the way the model was trained to
        config = TrainConfig(max_length=trained.get("max_length", 128), device=device, precision=precision,
                             eval_batch_size=eval_batch_size, **windowed)
        kwargs.setdefault("progress", False)
        kwargs.setdefault("normalizer", bundle.read_normalizer(folder))  # texts read as in training
        trainer = cls(model, tokenizer=load_tokenizer(str(folder)), config=config, **kwargs)
        if trainer.label_map is not None and trainer.label_map.multi_label:
            trainer.thresholds = read_thresholds(folder, trainer.label_map.names)
        return trainer

    # ==================================================================================================
    # fit
    # ==================================================================================================

    def fit(self, resume: str | Path | None = None) -> FitResult:
        """Train, evaluating on dev and keeping the best model; ``resume="auto"`` continues the newest checkpoint.

        Returns:
            A :class:`FitResult`; ``output_dir`` then holds ``best/``, ``last/``, ``metrics.json``, ``report.txt``.
        """
        if self.train_dataset is None:
            raise ConfigError("Trainer.fit: no training data; pass data= to the Trainer")
        created = not self.output_dir.exists()
        # One process writes a run folder at a time (a second one stops at once, naming this one's PID).
        with outputs.locked(self.output_dir) if self.runtime.is_main else contextlib.nullcontext():
            self._interrupt_signal = None  # a notebook may call fit(resume="auto") again after a Ctrl-C
            # Rank 0 checks and prepares the folder; the other ranks take its answer (deciding themselves would race
            # it).
            checkpoint = on_main_process(self.runtime, self._prepare_output_dir, resume)
            self.optimizer, self.scheduler = self.configure_optimizers()
            self.scaler = self.runtime.grad_scaler()
            self.ddp_model = self._wrap_distributed(self.model)
            if checkpoint is not None:
                self._restore(checkpoint)  # restores RNG states last, right before the first step
            if self.unfreezing is not None:  # which layers train is a function of the step: a resume thaws the same
                self.unfreezing.apply(self.state.global_step)
            self._open_loggers()
            self._emit("on_train_begin")
            self.print(f"training on {self.runtime.device} in {self.runtime.precision}: {len(self.train_dataset)} "
                       f"rows, global batch {self.global_batch_size} "
                       f"({self.config.batch_size} x {self.runtime.world_size} device(s) x {self.config.grad_accum} "
                       f"accumulation), {self.total_steps} optimizer steps")
            try:
                with self._stop_on_signals(), training_speedups(self.model, self.config.speedups,
                                                                self.runtime.distributed) as self._sparse_grads:
                    while not self._done():
                        self._train_one_epoch()
                return self._finish()
            except torch.OutOfMemoryError as exc:
                raise self._out_of_memory(exc, created) from None
            except Exception as exc:  # safetensors reports a full disk as its own error type, not an OSError
                if not is_disk_full(exc):
                    raise
                raise self._disk_full(exc, created) from None

    def _train_one_epoch(self) -> None:
        """Run the rest of the current epoch, from ``state.batch_in_epoch`` (non-zero after a resume)."""
        self.model.train()
        batches = self.train_sampler.epoch_batches(self.state.epoch)
        accum = self.config.grad_accum
        for i, batch in enumerate(self._loader(batches[self.state.batch_in_epoch:]), self.state.batch_in_epoch):
            window_start = i - i % accum
            self.accumulated = min(accum, len(batches) - window_start)  # micro-batches in this step's window
            is_step = i + 1 == window_start + self.accumulated
            self._current_rows = batches[window_start : i + 1]
            if i == window_start:
                self._window_losses = []
            with self._no_sync_unless(is_step):
                output = self.training_step(batch)
            self._window_losses.append(output.loss)  # stays on the device; read only if the step is not finite
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
        if self.unfreezing is not None and self.unfreezing.apply(step):
            frozen = self.unfreezing.frozen_below(step)
            self.print(f"step {step}: " + (f"encoder layers below {frozen} and the embeddings stay frozen"
                                           if frozen >= 0 else "every layer trains now"))
        last = step >= self.total_steps
        self._emit("on_step_end")
        self._agree_on_interrupt()
        if step % cfg.log_steps == 0 or last:
            self._log_training()
        eval_due = (cfg.eval_steps and step % cfg.eval_steps == 0) or (cfg.eval_steps is None and end_of_epoch)
        if self.dev_dataset is not None and (eval_due or last):
            self._evaluate_and_keep_best()
        if end_of_epoch:
            self._emit("on_epoch_end")
        save_due = (cfg.save_steps and step % cfg.save_steps == 0) or (cfg.save_steps is None and end_of_epoch)
        # The last step needs no checkpoint (last/ and best/ follow at once), unless a signal stops us before them.
        if (save_due and not last) or self._interrupt_signal is not None:
            self.save_checkpoint()

    # ==================================================================================================
    # override points
    # ==================================================================================================

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW (no decay on biases/LayerNorm) and warmup + linear/cosine decay, stepped per optimizer step."""
        if uses_finetune_control(self.config):  # layer-wise / head learning rates, or frozen layers to thaw later
            optimizer = build_finetune_adamw(self.model, self.config, self.runtime.device)
        else:
            optimizer = build_adamw(self.model, self.config.lr, self.config.weight_decay, self.runtime.device)
        scheduler = build_scheduler(optimizer, self.total_steps, self.config.warmup_ratio, self.config.schedule)
        return optimizer, scheduler

    def compute_loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of a batch from the model's outputs (logits ``[B, C]``) and the batch's ``labels``.

        Cross-entropy for single-label data, binary cross-entropy for multi-label data, with the class weights,
        focal loss and label smoothing of the config (see :func:`textclf.train.losses.classification_loss`);
        computed in fp32 even under autocast, since the softmax of low-precision logits loses accuracy.
        """
        cfg = self.config
        return classification_loss(outputs, batch["labels"], self.label_map is not None and self.label_map.multi_label,
                                   self.class_weights, cfg.focal_gamma, cfg.label_smoothing)

    def training_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """Forward, loss and backward of one micro-batch.

        The loss is divided by the number of micro-batches in this accumulation window
        (``self.accumulated``), so the summed gradients equal those of one big batch.
        """
        num_tokens = int(batch["attention_mask"].sum())  # on the host copy: no device sync
        batch = self._to_device(batch)
        with self.runtime.autocast():
            logits = self.ddp_model(batch["input_ids"], batch["attention_mask"], **_window_inputs(batch))
        loss = self.compute_loss(logits, batch)
        self.scaler.scale(loss / self.accumulated).backward()
        return StepOutput(loss.detach(), logits.detach(), len(logits), num_tokens)  # rows = texts, not windows

    def optimizer_step(self) -> None:
        """Unscale, clip, step (skipped by the scaler on fp16 overflow), update, zero grads, step the schedule."""
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.max_grad_norm or math.inf
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # One host sync per optimizer step, on purpose: a non-finite gradient must never reach the weights.
        finite = bool(torch.isfinite(self.grad_norm))
        if not finite and not self.scaler.is_enabled():
            self._raise_non_finite()
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)  # skips the update when fp16 gradients overflowed
        self.scaler.update()
        self.zero_grad()
        if scale_before is not None and self.scaler.get_scale() < scale_before:  # the scaler skipped this step
            self.state.skipped_steps += 1
            self._skipped_total = getattr(self, "_skipped_total", 0) + 1
            if self.state.skipped_steps > self.max_skipped_steps:
                self._raise_non_finite(f"{self.state.skipped_steps} consecutive optimizer steps were skipped because "
                                       f"the fp16 gradients overflowed (loss scale now {self.scaler.get_scale():g})")
            return  # the schedule follows the optimizer: no update, no learning-rate step
        self.state.skipped_steps = 0
        self.scheduler.step()

    def zero_grad(self) -> None:
        """Drop the gradients after a step; the sparse-gradient embedding's buffer is zeroed and kept (speedups)."""
        zero_grad(self.optimizer, self._sparse_grads)

    def evaluation_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """Forward and (when labels are present) loss of one evaluation batch, under autocast."""
        batch = self._to_device(batch)
        with self.runtime.autocast():
            logits = self.model(batch["input_ids"], batch["attention_mask"], **_window_inputs(batch))
        loss = self.compute_loss(logits, batch) if "labels" in batch else torch.zeros((), device=logits.device)
        return StepOutput(loss, logits.float(), len(logits))

    # ==================================================================================================
    # evaluation and prediction
    # ==================================================================================================

    def evaluate(self, data: Split | TextClassificationDataset | None = None, batch_hook=None) -> EvalReport:
        """Accuracy, macro/micro F1, per-class scores and confusion matrix on ``data`` (default: dev).

        Predictions stream into a confusion matrix; no logits are kept. Under distributed training each rank
        evaluates its own rows and the matrices are summed.

        Args:
            data: a labelled :class:`Split` or dataset (default: the dev split).
            batch_hook: called after each batch as ``batch_hook(rows, logits, labels)``: ``rows`` are the
                batch's row indices into ``data``, ``logits`` ``[B, C]`` float32 on the device, ``labels`` the
                batch's labels; used by error analysis and calibration (:mod:`textclf.eval.analysis`).
        """
        dataset = self.dev_dataset if data is None else self._as_dataset(data)
        if dataset is None:
            raise ConfigError("Trainer.evaluate: no dev split; pass a Split or dataset to evaluate")
        was_training = self.model.training
        self.model.eval()
        multi_label = self.label_map.multi_label  # per-label counts at the decision thresholds + histograms
        matrix = (MultiLabelMetrics(len(self.label_map), self.thresholds.candidates(), self.runtime.device)
                  if multi_label else ConfusionMatrix(len(self.label_map), self.runtime.device))
        loss_sum = torch.zeros((), device=self.runtime.device)
        batches = sequential_shard(len(dataset), self.config.eval_batch_size, self.runtime.rank,
                                   self.runtime.world_size, dataset.lengths)
        with torch.inference_mode():
            for rows, batch in zip(batches, self._loader(batches, dataset)):
                output = self.evaluation_step(batch)
                if batch_hook is not None:  # e.g. error analysis, calibration: rows index the evaluated split
                    batch_hook(rows, output.logits, batch["labels"])
                matrix.update(output.logits if multi_label else output.logits.argmax(-1),
                              batch["labels"].to(self.runtime.device))
                loss_sum += output.loss.float() * output.num_rows
        if self.runtime.distributed:  # disjoint shards, no padding rows: the sums count every row exactly once
            matrix.all_reduce()
            torch.distributed.all_reduce(loss_sum)
        self.model.train(was_training)
        if multi_label:
            return matrix.report(self.label_map.names, float(loss_sum) / max(1, int(matrix.num_rows)))
        counts = matrix.numpy()
        return report_from_confusion(counts, self.label_map.names, float(loss_sum) / max(1, int(counts.sum())))

    def tune_thresholds(self, data: Split | TextClassificationDataset | None = None,
                        save_to: str | Path | None = None) -> Thresholds:
        """Tune the multi-label decision thresholds on ``data`` (default: dev) and apply them from now on.

        ``config.threshold_tuning`` picks one global threshold (maximising micro F1) or one per label (each
        maximising its F1; labels with fewer than ``config.threshold_min_positives`` positives keep the global
        one); see :mod:`textclf.eval.multilabel`. ``save_to`` (a model folder) stores them in its ``textclf.json``,
        where :class:`~textclf.Predictor`, ``textclf evaluate`` and the service find them.
        """
        if not self.label_map.multi_label:
            raise ConfigError("Trainer.tune_thresholds: thresholds apply to multi-label models only")
        report = self.evaluate(data)
        self.thresholds = tune_thresholds(report.histograms, self.config.threshold_tuning,
                                          self.config.threshold_min_positives, f"dev ({report.num_rows} rows)")
        if save_to is not None and self.runtime.is_main:
            save_thresholds(save_to, self.thresholds, self.label_map.names)
        return self.thresholds

    def predict(self, texts: list[str], top_k: int = 1, batch_size: int | None = None):
        """Predict labels and probabilities for raw texts with the current weights (see :class:`Predictor`)."""
        return self.predictor().predict(texts, top_k=top_k, batch_size=batch_size or self.config.eval_batch_size)

    def predictor(self) -> Predictor:
        """A :class:`Predictor` over the current weights that reads texts as this trainer does (length, windows,
        normaliser, thresholds): what cross-validation and the label audit score held-out rows with."""
        return Predictor(self.model, self.tokenizer, self.label_map, device=self.runtime.device,
                         max_length=self.config.max_length, precision=self.runtime.precision,
                         thresholds=self.thresholds, windows=self.windows, batch_size=self.config.eval_batch_size,
                         normalizer=self.normalizer)

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

    @property
    def train_sampler(self):
        if not hasattr(self, "_train_sampler"):
            cfg, rt = self.config, self.runtime
            # Length grouping is stratified by class: every batch keeps the class mix (docs/benchmarks.md).
            strata = length_strata(self.train_dataset.labels) if self.stratify_lengths else None
            if cfg.sampler != "random":  # class-balanced or class-weighted draws (textclf.data.sampling)
                weights = row_weights(self.train_dataset.labels, len(self.label_map), cfg.sampler)
                lengths = self.train_dataset.lengths if cfg.group_by_length else None
                self._train_sampler = WeightedBatches(weights, cfg.batch_size, cfg.seed, lengths, rank=rt.rank,
                                                      world_size=rt.world_size, strata=strata)
            else:
                self._train_sampler = training_batches(self.train_dataset.lengths, cfg.batch_size, cfg.seed,
                                                       cfg.max_tokens, cfg.group_by_length, rt.rank, rt.world_size,
                                                       strata)
        return self._train_sampler

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

    def print(self, message: str) -> None:
        """Print on rank 0 only."""
        if self.runtime.is_main:
            from tqdm.auto import tqdm

            tqdm.write(message)

    def _emit(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def _tokenize(self, split: Split) -> TextClassificationDataset:
        if getattr(self, "normalizer", None) is not None:
            split = self.normalizer.apply_split(split)
        label_map = self.label_map if hasattr(self, "label_map") else self.data.label_map
        if self.windows is not None:
            dataset = WindowedTextDataset.from_split(split, self.tokenizer, self.windows, label_map)
            self.print(describe_windows(dataset, split.name))
        else:
            dataset = TextClassificationDataset.from_split(split, self.tokenizer, self.config.max_length, label_map)
        if dataset.num_truncated and self.windows is None:
            share = dataset.num_truncated / len(dataset)
            # Above one text in ten, truncation is likely to cost accuracy: point at the remedy.
            hint = (f"; {share:.0%} of the texts lose their end: consider --long-texts windows "
                    "(see docs/long-texts.md)") if share > 0.1 else ""
            self.print(f"{split.name}: {dataset.num_truncated} of {len(dataset)} texts are longer than "
                       f"max_length={self.config.max_length} tokens and were truncated{hint}")
        self.truncated_rows = {**getattr(self, "truncated_rows", {}), split.name: dataset.num_truncated}
        return dataset

    def _as_dataset(self, data) -> TextClassificationDataset:
        if isinstance(data, TextClassificationDataset):
            return data
        if isinstance(data, Split):
            if data.labels is None:
                raise ConfigError(f"{data.source}: the {data.name} split has no labels, so it cannot be evaluated")
            self.label_map.check_known(data.labels, data.name, data.source, where=data.where)
            return self._tokenize(data)
        raise ConfigError("Trainer.evaluate: expected a Split or TextClassificationDataset, "
                          f"got {type(data).__name__}")

    def _check_max_length(self) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if self.model.config.model_type in ("roberta", "xlm-roberta", "camembert") and limit:
            limit -= 2  # these reserve two positions for the padding offset
        if limit and self.config.max_length > limit:
            raise ConfigError(f"train.max_length: {self.config.max_length} exceeds the model's limit of {limit} "
                              f"tokens; use --max-length {limit} or less")

    def _loader(self, batches: list[list[int]], dataset: TextClassificationDataset | None = None) -> DataLoader:
        # A private generator: without one, every new DataLoader iterator draws its worker base seed from the
        # global torch RNG, so an evaluation (or the fresh iterator a resume starts) would shift every later
        # dropout mask, and a resumed run would no longer match an uninterrupted one bit for bit.
        return DataLoader(dataset or self.train_dataset, batch_sampler=batches, collate_fn=self.collate,
                          num_workers=self.config.num_workers, pin_memory=self.runtime.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.config.seed))

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        non_blocking = self.runtime.device.type == "cuda"  # pinned host memory lets the copy overlap compute
        return {k: v.to(self.runtime.device, non_blocking=non_blocking) for k, v in batch.items()}

    def _wrap_distributed(self, model: nn.Module) -> nn.Module:
        if not self.runtime.distributed:
            return model
        device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                   find_unused_parameters=self.ddp_find_unused_parameters)

    def _no_sync_unless(self, is_step: bool):
        """Skip DDP's gradient all-reduce on accumulation micro-steps; sync once per optimizer step."""
        if self.runtime.distributed and not is_step:
            return self.ddp_model.no_sync()
        return contextlib.nullcontext()

    # ---- logging ---------------------------------------------------------------------------------------

    def _open_loggers(self) -> None:
        self._reset_meters()
        meters = getattr(self, "_resumed_meters", None)
        if meters:  # a resume continues the log interval the checkpoint was written in
            self._loss_sum += meters["loss_sum"]
            self._micro_batches, self._rows, self._tokens = meters["micro_batches"], meters["rows"], meters["tokens"]
            self._skipped_total = meters["skipped_total"]
            self._resumed_meters = None
        if self.runtime.is_main:
            purge = self.state.global_step + 1 if self.state.global_step else None
            self.loggers = [TensorBoardLogger(self.output_dir / "runs", purge),
                            JsonlLogger(self.output_dir / "log.jsonl")]

    def _reset_meters(self) -> None:
        self._loss_sum = torch.zeros((), device=self.runtime.device)
        self._micro_batches = self._rows = self._tokens = 0
        self._interval_start = time.perf_counter()

    def _track(self, output: StepOutput) -> None:
        self._loss_sum += output.loss  # stays on the device: no sync until the next log
        self._micro_batches += 1
        self._rows += output.num_rows
        self._tokens += output.num_tokens

    def _log_training(self) -> None:
        elapsed = max(time.perf_counter() - self._interval_start, 1e-9)
        loss_sum, micro_batches = float(self._loss_sum), self._micro_batches  # the log interval's one sync
        rows, tokens = self._rows, self._tokens
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
            logs["train/skipped_steps"] = getattr(self, "_skipped_total", 0)
        for logger in self.loggers:
            logger.log_metrics(logs, self.state.global_step)
        self._emit("on_log", logs)
        self._reset_meters()

    # ---- evaluation during training ------------------------------------------------------------------------

    def _evaluate_and_keep_best(self) -> EvalReport:
        report = self.evaluate()
        step = self.state.global_step
        self.state.last_eval_step = step
        value = report[self.config.metric]
        self.state.history.append({"step": step,
                                   **{k: report[k] for k in ("accuracy", "macro_f1", "micro_f1", "loss")}})
        for logger in self.loggers:
            logger.log_metrics({f"dev/{k}": report[k] for k in ("accuracy", "macro_f1", "micro_f1", "loss")}, step)
            if report.confusion_matrix:  # multi-label reports carry per-label counts instead
                logger.log_confusion(report.confusion_matrix, report.label_names, step, "dev")
        best = self.state.best_metric
        improved = best is None or (value < best if self.config.metric == "loss" else value > best)
        if improved:
            self.state.best_metric, self.state.best_step = value, step
            self._save_bundle(self.output_dir / "best", {"step": step, "dev": report.to_dict()})
        self._emit("on_evaluate", report)
        self._interval_start = time.perf_counter()  # evaluation time is not training throughput
        return report

    # ---- output folder, checkpoints, bundles ---------------------------------------------------------------

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
            outputs.check_replaceable(out, outputs.RUN)  # never delete a folder textclf did not write, not even now
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
                outputs.replace(out, outputs.RUN)
        elif out.exists() and not out.is_dir():
            raise OutputDirError(f"{out} exists and is not a folder; choose another --output")
        if self.runtime.is_main and checkpoint is None:  # a resume writes only once the checkpoint has loaded
            outputs.claim(out, outputs.RUN)
            self.run_config.save(out / "config.yaml")
        return checkpoint

    # Settings a resumed run may change: where things are, how the data is read (the training rows themselves are
    # compared by fingerprint), how fast evaluation runs, how long training goes on. Any other difference would
    # make the checkpoint's data position or optimizer state mean something else.
    RESUMABLE_SETTINGS = ("run.", "data.", "train.device", "train.precision", "train.num_workers",
                          "train.eval_batch_size", "train.log_steps", "train.epochs", "train.max_steps",
                          "train.patience", "train.eval_steps", "train.save_steps", "train.keep_checkpoints",
                          "train.calibrate")

    def _setting_changes(self, saved: dict) -> list[str]:
        """``"section.field: then -> now"`` for every setting that differs from ``saved`` and matters to a resume."""
        return setting_changes(self.run_config.to_dict(), saved, self.RESUMABLE_SETTINGS)

    def _data_fingerprint(self) -> dict:
        """What a checkpoint must agree with: the label set and the exact training rows (order included)."""
        if getattr(self, "_fingerprint", None) is None:  # the data never changes during a run: hash it once
            digest = hashlib.sha256()
            labels = self.data.train.labels if self.data is not None else None
            for i, text in enumerate(self.train_dataset.texts):
                digest.update(f"{text}\x1f{labels[i] if labels is not None else ''}\x1e".encode())
            self._fingerprint = {"labels": self.label_map.to_dict(), "train_rows": len(self.train_dataset),
                                 "train_sha256": digest.hexdigest()}
        return self._fingerprint

    def _check_resumable(self, checkpoint: Path) -> None:
        """Refuse a checkpoint of other data or other settings, naming what differs."""
        state = ckpt.read_state(checkpoint)
        problems = self._setting_changes(state.get("config"))
        then, now = state.get("data", {}), self._data_fingerprint()
        if then.get("labels") != now["labels"]:
            problems.append(f"labels: {(then.get('labels') or {}).get('names')} -> {now['labels'].get('names')}")
        elif then.get("train_sha256") != now["train_sha256"]:
            same_size = then.get("train_rows") == now["train_rows"]
            problems.append(f"training data: {then.get('train_rows')} rows -> {now['train_rows']} rows"
                            + (" with different texts or labels" if same_size else ""))
        if state.get("world_size", 1) != self.runtime.world_size:
            problems.append(f"processes: {state.get('world_size', 1)} -> {self.runtime.world_size}")
        if problems:
            raise OutputDirError(
                f"cannot resume from {checkpoint}: this run differs from the one that wrote it "
                f"({'; '.join(problems)}). Resume with the original data and settings (see "
                f"{self.output_dir / 'config.yaml'}), or pass --overwrite without --resume to start over"
            )
        self._check_best_is_not_ahead(checkpoint, (state.get("train_state") or {}).get("global_step", 0))

    def _check_best_is_not_ahead(self, checkpoint: Path, resumed_at: int) -> None:
        """Refuse a resume that would end before the step that wrote ``best/``.

        A run killed after saving ``best/`` at step 16 but before its next checkpoint (12) resumes at 12; it writes
        ``best/`` again at 16 only if it gets there. Ending earlier would report one best step in metrics.json and
        keep another one's weights in ``best/``.
        """
        best = self.output_dir / "best"
        best_step = bundle.read_meta(best).get("step") if bundle.has_meta(best) else None
        if isinstance(best_step, int) and resumed_at < best_step and self.total_steps < best_step:
            raise OutputDirError(
                f"cannot resume from {checkpoint} (step {resumed_at}) with {self.total_steps} optimizer steps: {best} "
                f"was saved at step {best_step} by the run that was interrupted, and this run would end before it "
                f"(best/ would hold weights its own metrics never saw). Resume with --max-steps {best_step} or more "
                "(or the original --epochs), or pass --overwrite without --resume to start over")

    @property
    def run_config(self) -> RunConfig:
        """The resolved configuration, with the data files as read, so ``--config config.yaml`` repeats the run."""
        def file(split):
            return split.source if split is not None and not split.source.startswith("<") else None

        train = self.data.train if self.data else None
        # A split carved out of the training file has the training file as source: record it as "not given".
        dev, test = ((file(s) if s is not None and file(s) != file(train) else None)
                     for s in ((self.data.dev, self.data.test) if self.data else (None, None)))
        paths = RunPaths(data=file(train), dev=dev, test=test, output=str(self.output_dir))
        return RunConfig(self.data_config, self.model_config, self.config, paths)

    def save_checkpoint(self) -> Path | None:
        """Write the full training state to ``checkpoints/step-NNNNNN`` (rank 0), then rotate old ones."""
        folder = self.output_dir / "checkpoints" / ckpt.checkpoint_name(self.state.global_step)
        # the open log interval, so the first train/loss logged after a resume is the uninterrupted one
        meters = {"loss_sum": float(self._loss_sum), "micro_batches": self._micro_batches, "rows": self._rows,
                  "tokens": self._tokens, "skipped_total": getattr(self, "_skipped_total", 0)}
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
                "batching": "stratified" if self.stratify_lengths else "plain",
                "meters": meters,
                "config": self.run_config.to_dict(),
                "labels": self.label_map.to_dict(),
                "data": self._data_fingerprint(),
                "world_size": self.runtime.world_size,  # each process's share of an epoch depends on it
            }
            rng = per_rank[0][0]
            if self.runtime.distributed:
                rng = [rank_rng for rank_rng, _ in per_rank]
                state["meters_other_ranks"] = {str(r): m for r, (_, m) in enumerate(per_rank) if r}
            ckpt.save_checkpoint(folder, self.model, self.optimizer, rng, state)
            ckpt.rotate_checkpoints(folder.parent, self.config.keep_checkpoints, self.state.best_step)
        if self.runtime.distributed:
            torch.distributed.barrier()
        return folder

    def _restore(self, folder: Path) -> None:
        """Load everything a checkpoint holds; the RNG states go last, so the next step draws what it would have."""
        # Every rank loads the checkpoint (weights and optimizer are the same for all), with its own RNG states.
        state, rng = ckpt.load_checkpoint(folder, self.model, self.optimizer, self.runtime.device, self.runtime.rank)
        self.state = TrainState(**state["train_state"])
        if state.get("batching", "plain") == "plain" and self.stratify_lengths:  # written by a 0.x release
            self.stratify_lengths = False
            vars(self).pop("_train_sampler", None)  # same number of batches, the order of the plain length sort
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        saved: dict[str, list[dict]] = {}
        for entry in state["callbacks"]:
            saved.setdefault(entry["class"], []).append(entry["state"])
        for callback in self.callbacks:
            if saved.get(type(callback).__name__):
                callback.load_state_dict(saved[type(callback).__name__].pop(0))
        self._resumed_meters = state.get("meters")
        if self.runtime.rank:  # this rank's own share of the open log interval
            self._resumed_meters = state.get("meters_other_ranks", {}).get(str(self.runtime.rank))
        if self.runtime.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)  # --resume DIR may point outside the output folder
            ckpt.recover_bundles(self.output_dir)
            truncate_log(self.output_dir / "log.jsonl", self.state.global_step)
            self.run_config.save(self.output_dir / "config.yaml")
        set_rng_state(rng)

    def _save_bundle(self, folder: Path, extra: dict) -> None:
        """Write a loadable model folder (``best/`` or ``last/``) atomically, on rank 0."""
        if self.runtime.is_main:
            extra = {**extra, "base_model": self.model_config.name, "train_config": dataclasses.asdict(self.config),
                     "windows": self.windows.to_dict() if self.windows else None}  # read by Predictor
            if self.normalizer is not None:
                extra["normalizer"] = "normalizer.json"  # read back by Predictor and Trainer.from_pretrained

            def write(tmp):
                self.model.save_pretrained(tmp, self.tokenizer, extra)
                if self.normalizer is not None:
                    bundle.write_normalizer(tmp, self.normalizer)

            ckpt.write_atomically(folder, write)

    def _finish(self) -> FitResult:
        """Save ``last/``, reload the best weights, evaluate them on dev and test, write the reports."""
        interrupted = self._interrupt_signal is not None
        stopped_early = self.should_stop and not interrupted
        self._emit("on_train_end")
        if interrupted:
            self._close_loggers()
            name = signal.Signals(self._interrupt_signal).name
            self.print(f"stopped by {name} after optimizer step {self.state.global_step}; the checkpoint "
                       f"{self.output_dir / 'checkpoints' / ckpt.checkpoint_name(self.state.global_step)} holds "
                       "everything. Continue with Trainer.fit(resume='auto'), or run the same textclf train "
                       "command with --resume auto")
            return FitResult(self.output_dir, self.state.global_step, self.state.best_step, self.state.best_metric,
                             None, None, stopped_early=False, interrupted=True, signal=self._interrupt_signal)
        self._save_bundle(self.output_dir / "last", {"step": self.state.global_step})
        # Rank 0 wrote best/ and reloads it; the other ranks take its weights over the process group, so none
        # reads a folder rank 0 may still be writing, and no filesystem shared between nodes is needed.
        if self.runtime.is_main and (self.output_dir / "best").is_dir():
            self.model.load_weights(self.output_dir / "best")
        broadcast_module(self.runtime, self.model)
        if (self.label_map.multi_label and self.config.threshold_tuning != "none" and self.dev_dataset is not None
                and (self.output_dir / "best").is_dir()):
            self.tune_thresholds(save_to=self.output_dir / "best")
        run_report = RunReport(best_step=self.state.best_step, global_step=self.state.global_step,
                               metric=self.config.metric, history=self.state.history)
        # Temperature fitted on dev, ECE, errors.csv and the plots (textclf.eval.analysis); labels are unchanged.
        analysis = RunAnalysis(self.label_map.names, self.label_map.multi_label, self.config.calibrate)
        for name, dataset in (("dev", self.dev_dataset),
                              ("test", self._tokenize(self.data.test) if self.data.test else None)):
            if dataset is not None:
                report = self.evaluate(dataset, batch_hook=analysis.hook(name, getattr(self.data, name)))
                note = analysis.after(name, report)
                run_report.add(name, report, f"== {name} ({report.num_rows} rows, best model from step "
                                             f"{self.state.best_step}) ==\n{report.format()}\n{note}")
        metrics = run_report.metrics
        if self.runtime.is_main:
            best = self.output_dir / "best"
            metrics["calibration"] = analysis.finish(self.output_dir, best if best.is_dir() else None)
        # texts per split longer than max_length (windows: needing more than max_windows windows)
        metrics["truncated_rows"] = dict(getattr(self, "truncated_rows", {}))
        if self.runtime.is_main:
            run_report.write(self.output_dir)
        self._close_loggers()
        return FitResult(self.output_dir, self.state.global_step, self.state.best_step, self.state.best_metric,
                         metrics.get("dev"), metrics.get("test"), stopped_early=stopped_early)

    def _close_loggers(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []

    # ---- failures --------------------------------------------------------------------------------------

    def _raise_non_finite(self, reason: str | None = None) -> None:
        """Stop with an error naming the step and the batch, and dump the step's texts for inspection.

        Called before the optimizer applies the step, so no weight, checkpoint or model folder ever holds it.
        """
        step, epoch, first = self.state.global_step + 1, self.state.epoch, self.state.batch_in_epoch
        micro_batches = getattr(self, "_current_rows", [])  # row indices of each micro-batch of this step
        # The loss of each micro-batch stayed on the device; we are stopping, so this sync costs nothing.
        losses = [float(loss) for loss in getattr(self, "_window_losses", [])]
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
            labels = self.data.train.labels if self.data is not None else None
            with open(dump, "w", encoding="utf-8") as handle:
                for j, rows in enumerate(micro_batches):
                    for row in rows:
                        record = {"row": row, "micro_batch": j + 1, "batch_in_epoch": first + j,
                                  "loss": str(losses[j]) if j < len(losses) else None, "non_finite": j in bad,
                                  "text": self.train_dataset.texts[row],
                                  "label": labels[row] if labels is not None else None}
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
        ckpt.recover_bundles(self.output_dir)  # .tmp-best-PID and the like, from the write that failed
        for leftover in (self.output_dir / "checkpoints").glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        saved = any((self.output_dir / name).exists() for name in ("best", "last")) or bool(
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
        """Translate a CUDA out-of-memory error into the knobs that fix it; drop an output folder holding nothing."""
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


def _window_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's extra input for windowed batches: ``num_windows`` ``[N]`` (see windows.py); none otherwise."""
    return {"num_windows": batch["num_windows"]} if "num_windows" in batch else {}


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
