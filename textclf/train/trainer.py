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

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import DataConfig, ModelConfig, RunConfig, RunPaths, TrainConfig, replaced
from ..data.augment import augment_dataset
from ..data.inputs import input_strategy
from ..data.normalize import TextNormalizer
from ..data.preparation import DATA_DIR, normalise, save_prepared_data
from ..data.readers import DatasetSplits, Split, TextClassificationDataset, load_dataset
from ..deploy.predict import Predictor
from ..errors import ConfigError
from ..eval.metrics import EvalReport
from ..eval.multilabel import (
    Thresholds,
    tune_thresholds,
)
from ..eval.tasks import saved_task, task_for
from ..model import bundle
from ..model.classifier import TextClassifier, check_max_length, count_parameters, load_tokenizer
from ..model.ensemble import load_model, require_labels
from ..model.losses import class_weight_vector
from ..runtime import (
    broadcast_module,
    seed_everything,
)
from . import checkpoint as ckpt
from .callbacks import Callback, EarlyStopping
from .finetune import GradualUnfreezing, build_optimizer
from .loggers import HEADLINE_METRICS, log_evaluation
from .loop import TrainingLoop, TrainState  # noqa: F401 (TrainState: part of the public API)
from .objectives import objective_for
from .optim import build_scheduler
from .recipes import recipe_for_trainer, unreadable_warning
from .report import report_run
from .run_folder import FINE_TUNING_RESUMABLE, check_best_is_not_ahead, fingerprint_differences, rows_fingerprint


@dataclass
class StepOutput:
    """What a step returns. ``loss`` is the batch's mean loss, detached and not divided for accumulation."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    num_rows: int = 0
    num_tokens: int = 0


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


class Trainer(TrainingLoop):
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
        unlabelled: texts a distillation run also learns the teacher on (default: the file data_config.unlabelled).
    """

    # Length-grouped batches keep the class mix of the data (a plain length sort makes them class-homogeneous where
    # length and class correlate, which cost 2-8 accuracy points on small data: docs/benchmarks.md). A checkpoint
    # written before stratification existed resumes with the plain sort it started with, so its epochs stay exact.
    stratify_lengths: bool = True
    # The last step's dev outputs, while the model holds that step's weights (see _evaluation_outputs).
    _final_dev_outputs: list | None = None

    def __init__(self, model: str | TextClassifier = "minilm", data=None, output_dir: str | Path = "runs/textclf",
                 config: TrainConfig | None = None, *, model_config: ModelConfig | None = None,
                 data_config: DataConfig | None = None, tokenizer=None, head: nn.Module | None = None,
                 callbacks: list[Callback] | None = None, overwrite: bool = False, progress: bool = True,
                 normalizer: TextNormalizer | None = None, unlabelled: list[str] | None = None):
        config = config or TrainConfig()
        automatic = [EarlyStopping(config.metric, config.patience)] if config.patience is not None else []
        super().__init__(config, output_dir, overwrite, list(callbacks or []) + automatic, progress)
        self.data_config = data_config or DataConfig()
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "custom"
        self.model_config = replaced(model_config or ModelConfig(), name=name)  # keeps which fields were given

        with self.clock.phase("read data"):
            self.data = (data if isinstance(data, DatasetSplits) or data is None
                         else load_dataset(data, config=self.data_config))
        with self.clock.phase("load model"):
            self.tokenizer = tokenizer or load_tokenizer(self.model_config.name)
        # train.recipe "auto" becomes the recipe chosen for the data, said in one line (textclf.train.recipes)
        recipe = recipe_for_trainer(self.data, self.tokenizer, model, self.model_config, self.config, self.print)
        self.config, self.model_config, self.recipe_reason = recipe.train, recipe.model, recipe.reason
        # What a training batch is and what it costs: rows, few-shot pairs, a teacher's probabilities (objectives.py)
        self.objective = objective_for(self.config, self.model_config.name, unlabelled, self.data_config)
        self.model_config = self.objective.model_config(self.model_config)
        self.inputs = input_strategy(self.config)  # truncation or sliding windows (textclf.data.inputs)
        with self.clock.phase("load model"):
            self.model = self._build_model(model, head)
        self.label_map = self.model.label_map or (self.data.label_map if self.data else None)
        # Single- or multi-label: loss, metrics, decisions (textclf.eval.tasks). Multi-label decision thresholds are
        # 0.5 until tuned on dev (tune_thresholds) and saved with the best model.
        self.task = task_for(self.label_map) if self.label_map is not None else None
        with self.clock.phase("tokenize"):
            self._prepare_data(normalizer, fresh_head=not isinstance(model, nn.Module))
        self.collate = self.inputs.collate(self.tokenizer.pad_token_id or 0, self.runtime.pad_to_multiple_of)

    def _build_model(self, model: str | nn.Module, head: nn.Module | None) -> nn.Module:
        """The model on its device: a fresh classifier over the encoder (or the module given), frozen as configured
        and ready for the input strategy."""
        cfg = self.model_config
        if isinstance(model, nn.Module):  # a TextClassifier, or a loaded EnsembleClassifier (to evaluate it)
            built = model
        elif self.data is None:
            raise ConfigError("Trainer: pass data= so the label set is known before the head is built")
        else:
            built = TextClassifier.from_encoder(cfg.name, self.data.label_map, cfg.pooling, cfg.dropout, head,
                                                cfg.normalize)
        self.objective.configure(built, self.config)
        if cfg.keep_layers is not None:  # a smaller copy of the encoder (a distillation student)
            self.print(f"kept encoder layers {built.keep_layers(cfg.keep_layers, cfg.layer_choice)} of {cfg.name}")
        if cfg.freeze_layers_below is not None:
            built.freeze_layers_below(cfg.freeze_layers_below)
        # train.unfreeze_every: thaws one more layer every N optimizer steps (None: the frozen layers stay frozen)
        unfreezing = GradualUnfreezing.from_config(built, self.model_config, self.config, self.runtime)
        self.callbacks[:0] = [unfreezing] if unfreezing is not None else []  # first: the others see the new layers
        self.inputs.configure(built)  # before .to(device): windows may add a scoring layer
        check_max_length(built, self.config.max_length)
        built.to(self.runtime.device)
        if self.runtime.distributed:  # the same initial weights on every rank, then each rank its own dropout masks
            seed_everything(self.config.seed, self.runtime.rank)
        return built

    def _prepare_data(self, normalizer: TextNormalizer | None, fresh_head: bool) -> None:
        """Normalise and augment the texts, tokenize the splits, start a fresh head at the data, weigh the classes."""
        self.truncated_rows: dict[str, int] = {}  # texts per split read only in part (reported in metrics.json)
        # Texts are normalised (synonym table, width folding) in _tokenize, for every split and every evaluate.
        self.normalizer = normalizer if normalizer is not None else TextNormalizer.from_config(self.data_config)
        self.augmented_rows = 0  # appended to the training rows; written to OUTPUT/data/augmented.csv
        if self.data is not None and self.data_config.augment:  # training rows only; made once, seeded
            rows, self.data = len(self.data.train), augment_dataset(self.data, self.data_config, self.config.seed,
                                                                    log=self.print)
            self.augmented_rows = len(self.data.train) - rows
        if self.data is not None:  # whatever the recipe: an encoder that reads mostly [UNK] cannot learn the data
            warning = unreadable_warning(self.data.train.texts, self.tokenizer, self.model_config.name)
            if warning:
                self.print(warning)
        self.train_split = self.objective.rows(self, self.data.train) if self.data else None  # + unlabelled rows
        self.train_dataset = self.objective.with_columns(self, self._tokenize(self.train_split)) if self.data else None
        self.dev_dataset = self._tokenize(self.data.dev) if self.data and self.data.dev else None
        if fresh_head and self.train_dataset is not None:
            self.task.init_head(self.model, self.train_dataset.labels)
        # train.class_weights as a [C] vector (None: unweighted), from the training labels; see textclf.model.losses
        self.class_weights = (None if self.config.class_weights is None else class_weight_vector(
            self.config.class_weights, self.label_map, getattr(self.train_dataset, "labels", None)
        ).to(self.runtime.device))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "auto", precision: str = "auto",
                        eval_batch_size: int = 128, model_class: type | str | None = None, **kwargs) -> Trainer:
        """A Trainer around a saved model folder, e.g. to ``evaluate`` it on a new file.

        ``max_length`` is the one the model was trained with; ``kwargs`` go to the constructor. ``model_class``: the
        ``TextClassifier`` subclass a custom-head folder was saved from (the class, ``"module:Class"`` or
        ``"file.py:Class"``; imported and run, so only for code you trust: :func:`~textclf.model.ensemble.load_model`).
        """
        return _trainer_for_folder(cls, folder, device, precision, eval_batch_size, model_class, kwargs)

    # ---- fit --------------------------------------------------------------------------------------------------------

    def fit(self, resume: str | Path | None = None) -> FitResult:
        """Train, evaluating on dev and keeping the best model; ``resume="auto"`` continues the newest checkpoint.

        Returns:
            A :class:`FitResult`; ``output_dir`` then holds ``best/``, ``last/``, ``metrics.json``, ``report.txt``.
        """
        if self.train_dataset is None:
            raise ConfigError("Trainer.fit: no training data; pass data= to the Trainer")
        return super().fit(resume)

    def describe_run(self) -> str:
        trainable, total = count_parameters(self.model)  # frozen layers (freeze_layers_below) train later or never
        return (f"training on {self.runtime.device} in {self.runtime.precision}: {len(self.train_dataset)} rows, "
                f"global batch {self.global_batch_size} ({self.config.batch_size} x {self.runtime.world_size} "
                f"device(s) x {self.config.grad_accum} accumulation), {self.total_steps} optimizer steps, "
                f"{trainable:,} of {total:,} parameters trainable")

    # ---- override points --------------------------------------------------------------------------------------------

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW (no decay on biases/LayerNorm) and warmup + linear/cosine decay, stepped per optimizer step."""
        optimizer = build_optimizer(self.model, self.config, self.runtime.device)  # layer-wise rates if asked for
        scheduler = build_scheduler(optimizer, self.total_steps, self.config.warmup_ratio, self.config.schedule)
        return optimizer, scheduler

    def compute_loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of a batch from the model's outputs (logits ``[B, C]``) and the batch's ``labels``.

        Cross-entropy for single-label data, binary cross-entropy for multi-label data, with the class weights,
        focal loss and label smoothing of the config (see :func:`textclf.model.losses.classification_loss`);
        computed in fp32 even under autocast, since the softmax of low-precision logits loses accuracy.
        """
        cfg = self.config
        return self.task.loss(outputs, batch["labels"], self.class_weights, cfg.focal_gamma, cfg.label_smoothing)

    def training_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """Forward, the objective's loss and :meth:`backward` (accumulation and fp16 scaling) of one micro-batch."""
        num_tokens = int(batch["attention_mask"].sum())  # on the host copy: no device sync
        batch = self._to_device(batch)
        loss, logits, rows = self.objective.loss(self, batch)  # forward under autocast, then compute_loss
        self.backward(loss)
        return StepOutput(loss.detach(), logits, rows, num_tokens)

    def evaluation_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """Forward and (when labels are present) loss of one evaluation batch, under autocast."""
        batch = self._to_device(batch)
        with self.runtime.autocast():
            logits = self.model(batch["input_ids"], batch["attention_mask"], **self.inputs.model_inputs(batch))
        loss = self.compute_loss(logits, batch) if "labels" in batch else torch.zeros((), device=logits.device)
        return StepOutput(loss, logits.float(), len(logits))

    # ---- evaluation and prediction ----------------------------------------------------------------------------------

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
        metrics = self.task.metrics(self.runtime.device)  # a confusion matrix, or per-label counts and histograms
        loss_sum = torch.zeros((), device=self.runtime.device)
        for rows, output, labels in self._evaluation_outputs(dataset):
            if batch_hook is not None:  # e.g. error analysis, calibration: rows index the evaluated split
                batch_hook(rows, output.logits, labels)
            metrics.update(output.logits, labels.to(self.runtime.device))
            loss_sum += output.loss.float() * output.num_rows
        if self.runtime.distributed:  # disjoint shards, no padding rows: the sums count every row exactly once
            metrics.all_reduce()
            torch.distributed.all_reduce(loss_sum)
        return metrics.report(self.label_map.names, float(loss_sum))

    def _evaluation_outputs(self, dataset):
        """``(rows, StepOutput, labels)`` per batch: the model's, or for dev after the last step, the outputs that
        step's evaluation kept (the weights are the same: the end of a run scores dev once, not twice)."""
        if dataset is self.dev_dataset and self._final_dev_outputs is not None:
            yield from self._final_dev_outputs
            return
        with self.inference():
            for rows, batch in self.inference_batches(dataset):
                yield rows, self.evaluation_step(batch), batch["labels"]

    def tune_thresholds(self, data: Split | TextClassificationDataset | None = None,
                        save_to: str | Path | None = None) -> Thresholds:
        """Tune the multi-label decision thresholds on ``data`` (default: dev) as ``config.threshold_tuning`` says
        (:mod:`textclf.eval.multilabel`) and apply them from now on; ``save_to`` (a model folder) stores them in its
        ``textclf.json``, where :class:`~textclf.Predictor`, ``textclf evaluate`` and the service find them."""
        if not self.task.has_thresholds:
            raise ConfigError("Trainer.tune_thresholds: thresholds apply to multi-label models only")
        report = self.evaluate(data)
        self.task.thresholds = tune_thresholds(report.histograms, self.config.threshold_tuning,
                                               self.config.threshold_min_positives, f"dev ({report.num_rows} rows)")
        if save_to is not None and self.runtime.is_main:
            self.task.save(save_to, self.label_map.names)
        return self.task.thresholds

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

    # ---- derived quantities -----------------------------------------------------------------------------------------

    @property
    def thresholds(self):
        """The multi-label decision thresholds (:class:`~textclf.eval.multilabel.Thresholds`); None for one label."""
        return self.task.thresholds if self.task is not None else None

    @thresholds.setter
    def thresholds(self, value) -> None:
        self.task.thresholds = value

    @property
    def windows(self):
        """How long texts are read as windows (a :class:`~textclf.data.windows.WindowSpec`; None: truncated)."""
        return self.inputs.spec

    @property
    def train_sampler(self):
        if not hasattr(self, "_train_sampler"):
            self._train_sampler = self.objective.sampler(self)  # rows (length-grouped...), or few-shot pairs
        return self._train_sampler

    # ---- helpers ----------------------------------------------------------------------------------------------------

    def _tokenize(self, split: Split) -> TextClassificationDataset:
        split, normalised = normalise(split, self.normalizer)  # synonym table, width folding: counted
        dataset = self.inputs.dataset(split, self.tokenizer, self.label_map)
        for note in (normalised, self.inputs.describe(dataset, split.name)):
            if note:
                self.print(note)
        self.truncated_rows[split.name] = dataset.num_truncated
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

    # ---- evaluation during training ------------------------------------------------------------------------

    def evaluate_if_due(self, end_of_epoch: bool, last: bool) -> None:
        cfg = self.config
        due = (cfg.eval_steps and self.state.global_step % cfg.eval_steps == 0) or (
            cfg.eval_steps is None and end_of_epoch)
        if self.dev_dataset is not None and (due or last):
            self._evaluate_and_keep_best(last)

    def _evaluate_and_keep_best(self, last: bool = False) -> EvalReport:
        self.objective.prepare_head(self)  # few-shot: the head is fitted on the current embeddings
        self._final_dev_outputs = None  # an earlier evaluation's outputs are not this step's
        if last:  # kept for the final reports and threshold tuning, while the weights stay this step's
            self._final_dev_outputs = list(self._evaluation_outputs(self.dev_dataset))
        report = self.evaluate()
        step = self.state.global_step
        self.state.last_eval_step = step
        value = report[self.config.metric]
        self.state.history.append({"step": step, **{k: report[k] for k in HEADLINE_METRICS}})
        log_evaluation(self.loggers, report, step, "dev")
        best = self.state.best_metric
        improved = best is None or (value < best if self.config.metric == "loss" else value > best)
        if improved:
            self.state.best_metric, self.state.best_step = value, step
            self._save_bundle(self.output_dir / "best", {"step": step, "dev": report.to_dict()})
        self._emit("on_evaluate", report)
        self._interval_start = time.perf_counter()  # evaluation time is not training throughput
        return report

    # ---- output folder, checkpoints, bundles ---------------------------------------------------------------

    RESUMABLE_SETTINGS = FINE_TUNING_RESUMABLE  # what a resumed run may change (textclf.train.run_folder)

    def _data_fingerprint(self) -> dict:
        if getattr(self, "_fingerprint", None) is None:  # the data never changes during a run: hash it once
            self._fingerprint = rows_fingerprint(self.train_dataset.texts, self.train_split.labels, self.label_map)
        return self._fingerprint

    def _data_differences(self, saved: dict) -> list[str]:
        return fingerprint_differences(saved, self._data_fingerprint())

    def _check_resumable(self, checkpoint: Path) -> None:
        super()._check_resumable(checkpoint)
        resumed_at = (ckpt.read_state(checkpoint).get("train_state") or {}).get("global_step", 0)
        check_best_is_not_ahead(self.output_dir, checkpoint, resumed_at, self.total_steps)

    def _checkpoint_extras(self) -> dict:
        return {"batching": "stratified" if self.stratify_lengths else "plain", "labels": self.label_map.to_dict()}

    def _restore_extras(self, state: dict) -> None:
        if state.get("batching", "plain") == "plain" and self.stratify_lengths:  # written by a 0.x release
            self.stratify_lengths = False
            vars(self).pop("_train_sampler", None)  # same number of batches, the order of the plain length sort

    def _row_record(self, row: int) -> dict:
        return {"text": self.train_dataset.texts[row], "label": self.train_split.labels[row]}  # training: labelled

    def input_paths(self) -> dict[str, object]:
        splits = (self.data.train, self.data.dev, self.data.test) if self.data else ()
        return {"--model": self.model_config.name,
                "--data": [s.source for s in splits if s is not None and not s.source.startswith("<")],
                "--teacher": self.config.teacher, "--unlabelled": self.data_config.unlabelled}

    def resolved_config(self) -> dict:
        return self.run_config.to_dict()

    def _save_config(self) -> None:  # with the splits held out of the training file and the augmented rows
        super()._save_config()
        self.objective.save_run_files(self.output_dir)  # distillation: the teacher's probabilities
        for note in save_prepared_data(self.data, self.output_dir / DATA_DIR, self.data_config, self.augmented_rows):
            self.print(note)

    @property
    def run_config(self) -> RunConfig:
        """The resolved configuration, with the data files as read, so ``--config config.yaml`` repeats the run."""
        splits = (self.data.train, self.data.dev, self.data.test) if self.data else (None, None, None)
        return RunConfig(self.data_config, self.model_config, self.config, RunPaths.from_splits(*splits,
                                                                                                self.output_dir))

    def _save_bundle(self, folder: Path, extra: dict, weights_from: Path | None = None) -> None:
        """Write a loadable model folder (``best/`` or ``last/``) atomically, on rank 0 (see model_folder_writer)."""
        if self.runtime.is_main:  # how texts are read and decided travels with the weights (read by Predictor)
            meta = {**extra, "base_model": self.model_config.name, **self.objective.model_meta(),
                    "train_config": dataclasses.asdict(self.config),
                    "windows": self.inputs.to_dict(), "data_reading": self.data_config.reading()}
            write = bundle.model_folder_writer(self.model, self.tokenizer, meta, self.normalizer, weights_from)
            with self.clock.phase(f"save {folder.name}"):
                ckpt.write_atomically(folder, write)

    def _finish(self) -> FitResult:
        """Save ``last/``, reload the best weights, evaluate them on dev and test, write the reports."""
        interrupted = self._interrupt_signal is not None
        stopped_early = self.should_stop and not interrupted
        if interrupted or self.state.best_step != self.state.global_step:  # the best weights are another step's
            self._final_dev_outputs = None
        self._emit("on_train_end")
        if interrupted:
            self._close_loggers()
            self._report_stop()
            return FitResult(self.output_dir, self.state.global_step, self.state.best_step, self.state.best_metric,
                             None, None, stopped_early=False, interrupted=True, signal=self._interrupt_signal)
        self.objective.prepare_head(self)
        best = self.output_dir / "best"  # saved at this very step: last/ links its weight file, nothing is reloaded
        best_is_last = self.state.best_step == self.state.global_step and best.is_dir()
        self._save_bundle(self.output_dir / "last", {"step": self.state.global_step}, best if best_is_last else None)
        if self.runtime.is_main and best.is_dir() and not best_is_last:  # the other ranks take rank 0's weights
            self.model.load_weights(best)  # over the process group: no folder rank 0 may be writing is read
        broadcast_module(self.runtime, self.model)
        if (self.task.has_thresholds and self.config.threshold_tuning != "none" and self.dev_dataset is not None
                and best.is_dir()):
            self.tune_thresholds(save_to=best)
        metrics = report_run(self)  # dev and test scores, calibration, errors.csv, metrics.json, model cards
        self._final_dev_outputs = None
        self._close_loggers()
        return FitResult(self.output_dir, self.state.global_step, self.state.best_step, self.state.best_metric,
                         metrics.get("dev"), metrics.get("test"), stopped_early=stopped_early)


def _trainer_for_folder(cls, folder, device: str, precision: str, eval_batch_size: int, model_class, kwargs: dict):
    """The body of :meth:`Trainer.from_pretrained`."""
    model = load_model(folder, model_class)  # a TextClassifier (or subclass), or an EnsembleClassifier
    if kwargs.get("data") is None:  # only labelled data could name the outputs of a folder without labels.json
        require_labels(folder, model)
    config = TrainConfig.for_evaluation(bundle.read_meta(folder).get("train_config") or {}, device=device,
                                        precision=precision, eval_batch_size=eval_batch_size)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("normalizer", bundle.read_normalizer(folder))  # texts read as in training
    trainer = cls(model, tokenizer=load_tokenizer(str(folder)), config=config, **kwargs)
    if trainer.label_map is not None:
        trainer.task = saved_task(folder, trainer.label_map)  # with the thresholds tuned after training
    return trainer
