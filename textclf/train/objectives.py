"""What a training batch is and what it costs: the objective of a fine-tuning run (``train.recipe``).

* :class:`Classification` (``fine-tune``) -- rows -> logits -> the task's loss (cross-entropy, with the config's
  class weights, focal loss, label smoothing), through :meth:`Trainer.compute_loss`.
* :class:`ContrastivePairs` (``few-shot``) -- SetFit's method: batches of row pairs (:class:`~textclf.data.pairs.
  PairBatches`) -> pooled embeddings -> the squared distance of each pair's cosine similarity from its target (1 for
  the same label, 0 for different labels). The head does not train with the encoder; it is fitted on the tuned
  embeddings of the training rows before every evaluation and before a model folder is saved, so ``best/`` and
  ``last/`` are ordinary model folders (Predictor, evaluate, export, serve).
* :class:`Distillation` (``distill``) -- labelled and unlabelled rows -> logits -> the distance of their softened
  probabilities from a teacher's (computed once per run and cached in it), plus the task's loss on the labelled rows.

The :class:`~textclf.Trainer` asks its objective for the rows to train on and what each batch carries, the epoch's
batches, the loss of a batch, and to make the head ready before evaluating; everything else (precision,
accumulation, checkpoints, resume, logging, callbacks) is the shared loop's.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..config import DataConfig, ModelConfig, TrainConfig
from ..data.pairs import PairBatches
from ..data.readers import Split, read_unlabelled
from ..data.sampling import training_sampler
from ..errors import ConfigError
from ..model.classifier import sentence_pooling


class Objective:
    """What the Trainer asks of an objective. Each objective has its own batches (``sampler``) and ``loss``; the
    other methods default to what plain fine-tuning needs (nothing).

    An objective also declares itself to the rest of textclf, so that nothing else branches on ``train.recipe``:
    ``recipe`` (the value that selects it, in :data:`OBJECTIVES`), :meth:`from_run` (built from a run's settings),
    :meth:`refusal` (who may use it: the automatic recipe and ``textclf tune`` consider it only where this is None),
    and its search space for ``tune``: ``searched`` (a trial may pick it), ``lr_range`` and :meth:`most_epochs`.
    """

    recipe = ""
    searched = False
    lr_range = (1e-5, 3e-4)

    @classmethod
    def from_run(cls, config: TrainConfig, model_name: str, unlabelled: list[str] | None = None,
                 data_config: DataConfig | None = None) -> Objective:
        """The objective of a run with these settings."""
        return cls()

    @classmethod
    def refusal(cls, shape, train: TrainConfig) -> str | None:
        """Why this objective cannot train data of ``shape`` (a :class:`~textclf.train.recipes.DataShape`) with
        ``train``, in words a user can act on; None when it can."""
        return None

    @classmethod
    def most_epochs(cls, base: TrainConfig) -> int:
        """The top of ``tune``'s epochs range, from the search's starting settings: up to twice their epochs."""
        return max(4, min(20, 2 * math.ceil(base.epochs)))

    @classmethod
    def steps_per_epoch(cls, rows: int, train: TrainConfig) -> int | None:
        """Optimizer steps in an epoch over ``rows`` labelled rows, for the automatic recipe's line (None: not
        known before the run, and not said)."""
        return math.ceil(math.ceil(rows / train.batch_size) / train.grad_accum)

    def model_config(self, model_config: ModelConfig) -> ModelConfig:
        """The model settings this objective trains with (by default those given)."""
        return model_config

    def configure(self, model: nn.Module, config: TrainConfig) -> None:
        """Prepare a freshly built model for training (by default nothing to do)."""

    def sampler(self, trainer):
        """The batch sampler of the training rows (``epoch_batches(epoch)``, resumable)."""
        raise NotImplementedError

    def loss(self, trainer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """``(mean loss, logits or None, rows)`` of a batch already on the device."""
        raise NotImplementedError

    def prepare_head(self, trainer) -> None:
        """Make the head ready before an evaluation or a saved model folder (by default it trains with the
        encoder and is always ready)."""

    def rows(self, trainer, split: Split) -> Split:
        """The rows an epoch trains on, from the labelled training split (by default that split)."""
        return split

    def with_columns(self, trainer, dataset):
        """The tokenized training rows with the per-row tensors every batch carries besides tokens and labels
        (``dataset.columns``; by default none)."""
        return dataset

    def save_run_files(self, output_dir) -> None:
        """Write what the objective keeps in the run folder (by default nothing); rank 0, once it is claimed."""

    def model_meta(self) -> dict:
        """What a saved model folder's ``textclf.json`` records of how it was trained (by default nothing)."""
        return {}


class Classification(Objective):
    """Full fine-tuning: every batch is rows with labels, the loss is the task's (``train.recipe = "fine-tune"``)."""

    recipe = "fine-tune"
    searched = True

    def sampler(self, trainer):
        dataset, rt = trainer.train_dataset, trainer.runtime
        return training_sampler(dataset.labels, dataset.lengths, len(trainer.label_map), trainer.config, rt.rank,
                                rt.world_size, trainer.stratify_lengths)

    def loss(self, trainer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(mean loss, logits, rows)`` of a batch already on the device."""
        logits = self.logits(trainer, batch)
        return trainer.compute_loss(logits, batch), logits.detach(), len(logits)  # rows = texts, not windows

    @staticmethod
    def logits(trainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training forward pass of a batch: logits ``[B, C]`` under autocast, through the DDP wrapper."""
        with trainer.runtime.autocast():
            return trainer.ddp_model(batch["input_ids"], batch["attention_mask"], **trainer.inputs.model_inputs(batch))


class ContrastivePairs(Objective):
    """Few-shot training of a sentence encoder on pairs of rows, then a head fitted on its embeddings.

    Args:
        model_name: the encoder; its sentence-transformers pooling config says how it pools (and must exist).
    """

    recipe = "few-shot"
    searched = True
    lr_range = (5e-6, 1e-4)
    # What the automatic recipe sets for it: one epoch of pairs is many steps (pairs_per_row pairs per row).
    AUTO_SETTINGS = {"epochs": 1, "lr": 2e-5, "batch_size": 16, "warmup_ratio": 0.1}

    @classmethod
    def from_run(cls, config, model_name, unlabelled=None, data_config=None) -> ContrastivePairs:
        return cls(model_name)

    @classmethod
    def refusal(cls, shape, train: TrainConfig) -> str | None:
        if not shape.sentence_encoder:
            return ("few-shot training tunes a sentence encoder, and this encoder has no sentence-transformers mean "
                    "pooling; use one trained as a sentence embedder, such as minilm")
        if shape.multi_label:
            return "few-shot training pairs rows of one label each; multi-label data is fine-tuned"
        if shape.classes < 2:
            return "few-shot training needs at least 2 classes in the training rows"
        if train.long_texts != "truncate":
            return "few-shot training reads each text once, truncated to max_length (long_texts=truncate)"
        return None

    @classmethod
    def most_epochs(cls, base: TrainConfig) -> int:
        return 3  # an epoch of pairs is already many steps

    @classmethod
    def steps_per_epoch(cls, rows: int, train: TrainConfig) -> None:
        return None  # pairs, not rows: the pair sampler sizes the epoch

    def __init__(self, model_name: str):
        self._fitted_at_step: int | None = None  # the optimizer step whose embeddings the head was last fitted on
        self.pooling = sentence_pooling(model_name)
        if self.pooling is None:
            raise ConfigError(f"train.recipe: few-shot training tunes a sentence encoder, and {model_name} has no "
                              "sentence-transformers pooling information (modules.json and 1_Pooling/config.json); "
                              "use an encoder trained as a sentence embedder, such as minilm (all-MiniLM-L6-v2), "
                              "or --recipe fine-tune")

    def model_config(self, model_config: ModelConfig) -> ModelConfig:
        """The encoder's own sentence pooling: its embeddings are what the pairs tune."""
        from dataclasses import replace

        return replace(model_config, pooling=self.pooling["pooling"], normalize=self.pooling["normalize"])

    def configure(self, model: nn.Module, config: TrainConfig) -> None:
        if config.long_texts != "truncate":
            raise ConfigError("train.long_texts: few-shot training reads each text once, truncated to max_length; "
                              "use long_texts=truncate with --recipe few-shot")
        if not isinstance(getattr(model, "head", None), nn.Linear):
            raise ConfigError("train.recipe: few-shot training fits a linear head on the embeddings; a custom head "
                              "cannot be fitted that way (use --recipe fine-tune)")
        for param in model.head.parameters():  # fitted on the embeddings, never by the optimizer
            param.requires_grad_(False)

    def sampler(self, trainer):
        cfg, rt = trainer.config, trainer.runtime
        return PairBatches(trainer.train_dataset.labels, cfg.batch_size, cfg.pairs_per_row, cfg.seed, rt.rank,
                           rt.world_size)

    def loss(self, trainer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None, int]:
        """The batch holds ``B`` anchors, then their ``B`` partners: one forward pass embeds both sides."""
        with trainer.runtime.autocast():
            embeddings = trainer.ddp_model(batch["input_ids"], batch["attention_mask"], return_embeddings=True)
        first, second = embeddings.float().chunk(2)  # fp32: a cosine of bf16 vectors is too coarse for the loss
        labels = batch["labels"]
        target = (labels[: len(first)] == labels[len(first):]).float()
        similarity = nn.functional.cosine_similarity(first, second, dim=-1)
        return nn.functional.mse_loss(similarity, target), None, len(first)

    def prepare_head(self, trainer) -> None:
        """Fit the head on the current embeddings of the training rows (deterministic: the same on every rank).

        Once per optimizer step: the end of a run with a dev split has just fitted it for the last evaluation.
        """
        if self._fitted_at_step == trainer.state.global_step:
            return
        self._fitted_at_step = trainer.state.global_step
        embeddings = embed_rows(trainer, trainer.train_dataset)
        labels = np.asarray(trainer.train_dataset.labels)
        weight, bias = fit_linear_head(embeddings, labels, len(trainer.label_map), trainer.config.few_shot_head,
                                       trainer.config.seed)
        head = trainer.model.head
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


class Distillation(Classification):
    """Knowledge distillation (Hinton et al., 2015): the model (the student) learns a teacher's softened
    probabilities on the labelled rows and on unlabelled ones, and the labels where there are some::

        loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, label)

    The cross-entropy (the task's loss, with the run's class weights and smoothing) is the mean over the labelled
    rows of the batch; ``T^2`` keeps the soft gradients on the scale of the hard ones. ``alpha = 0`` is the control:
    the same student trained on the labelled rows alone, and no teacher is read. The teacher's log-probabilities are
    computed once (:class:`~textclf.train.distill.TeacherTargets`), cached in the run folder and carried by each
    batch as ``batch["teacher"]``; unlabelled rows carry the teacher's top class as their label, which the sampler
    stratifies by and the hard loss never sees (``batch["labelled"]``).

    Args:
        config: the run's settings (``teacher``, ``distill_alpha``, ``distill_temperature``).
        unlabelled: the unlabelled texts (``data.unlabelled``), or None.
    """

    recipe = "distill"
    searched = False  # a run of textclf distill, with its teacher: not a recipe for tune to draw

    @classmethod
    def from_run(cls, config, model_name, unlabelled=None, data_config=None) -> Distillation:
        """Also learns from ``unlabelled`` (by default the texts of the file ``data_config.unlabelled``, if set)."""
        if unlabelled is None and data_config is not None and data_config.unlabelled:
            unlabelled = read_unlabelled(data_config.unlabelled, "unlabelled", data_config).texts
        return cls(config, unlabelled)

    def __init__(self, config: TrainConfig, unlabelled: list[str] | None = None):
        self.teacher, self.alpha, self.temperature = config.teacher, config.distill_alpha, config.distill_temperature
        self.unlabelled = list(unlabelled or [])
        self.targets = None  # TeacherTargets, once the rows are known
        self.labelled: torch.Tensor | None = None

    def configure(self, model: nn.Module, config: TrainConfig) -> None:
        if config.long_texts != "truncate":
            raise ConfigError("train.long_texts: distillation reads each text once, truncated to max_length; use "
                              "long_texts=truncate with textclf distill")

    def rows(self, trainer, split: Split) -> Split:
        if self.alpha == 0:  # the control: the labelled rows alone
            return split
        from .distill import TeacherTargets

        known = set(split.texts)  # a pool text that is also a labelled row is that row, not a second one
        extra = list(dict.fromkeys(t for t in self.unlabelled if t not in known))
        texts = list(split.texts) + extra
        rt = trainer.runtime  # the teacher runs on the run's device, in its precision
        self.targets = TeacherTargets(self.teacher, texts, trainer.label_map, trainer.output_dir, str(rt.device),
                                      rt.precision, trainer.config.eval_batch_size, trainer.print)
        task = trainer.task  # the teacher's decision for an unlabelled row: argmax, or the labels at 0.5
        decisions = task.decisions(task.probabilities(self.targets.log_probs[len(split):]).numpy())
        self.labelled = torch.arange(len(texts)) < len(split)
        names = trainer.label_map.names
        guesses = [_names(task.label_ids(d), names) for d in decisions]
        trainer.print(f"distilling from {self.teacher} on {len(split):,} labelled and {len(extra):,} unlabelled "
                      f"rows (alpha {self.alpha:g}, temperature {self.temperature:g})")
        return replace(split, texts=texts, labels=list(split.labels) + guesses, locations=None)

    def with_columns(self, trainer, dataset):
        if self.targets is not None:
            dataset.columns = {"teacher": self.targets.log_probs, "labelled": self.labelled}
        return dataset

    def save_run_files(self, output_dir) -> None:
        if self.targets is not None:
            self.targets.save()

    def model_meta(self) -> dict:
        """The teacher, which the model card and ``textclf info`` name (the control, alpha 0, has none)."""
        return {"teacher": str(self.teacher)} if self.alpha > 0 else {}

    def loss(self, trainer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.targets is None:
            return super().loss(trainer, batch)
        logits = self.logits(trainer, batch)
        soft = trainer.task.link.soft_target_loss(logits, batch["teacher"], self.temperature)  # softmax or sigmoids
        labelled = batch["labelled"]
        if self.alpha == 1 or not bool(labelled.any()):
            return soft, logits.detach(), len(logits)
        hard = trainer.compute_loss(logits[labelled], {"labels": batch["labels"][labelled]})
        return self.alpha * soft + (1 - self.alpha) * hard, logits.detach(), len(logits)


def _names(ids: int | list[int], names) -> str | list[str]:
    """A decision's label ids as the data spells labels: one name, or a list of names (multi-label)."""
    return names[ids] if isinstance(ids, int) else [names[i] for i in ids]


def embed_rows(trainer, dataset) -> np.ndarray:
    """``[N, hidden]`` float32 pooled embeddings of a tokenized dataset, in row order, under the run's precision."""
    out = np.zeros((len(dataset), trainer.model.config.hidden_size), dtype=np.float32)
    with trainer.inference():  # every rank embeds every row: the head is fitted identically on each
        for rows, batch in trainer.inference_batches(dataset, every_row=True):
            batch = trainer._to_device(batch)
            with trainer.runtime.autocast():
                vectors = trainer.model(batch["input_ids"], batch["attention_mask"], return_embeddings=True)
            out[rows] = vectors.float().cpu().numpy()
    return out


def fit_linear_head(embeddings: np.ndarray, labels: np.ndarray, num_labels: int, kind: str = "logistic",
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(weight [C, H], bias [C])`` of a linear layer whose softmax classifies ``embeddings``.

    ``"logistic"``: scikit-learn's multinomial logistic regression (L2, C=1, as SetFit's default head). A class
    missing from ``labels`` gets a bias of -30 (never predicted). Two classes: the fitted ``w.x + b`` becomes the
    second class's logit and 0 the first's, which gives the same probabilities. ``"linear"``: a linear layer trained by
    full-batch Adam (lr 1e-2, 300 steps, weight decay 1e-2) on cross-entropy, from a seeded start.
    """
    present = np.unique(labels)
    weight = np.zeros((num_labels, embeddings.shape[1]), dtype=np.float32)
    bias = np.full(num_labels, -30.0, dtype=np.float32)
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        fitted = LogisticRegression(max_iter=1000).fit(embeddings, labels)
        if len(present) == 2:
            weight[present[1]], bias[present[1]], bias[present[0]] = fitted.coef_[0], fitted.intercept_[0], 0.0
        else:
            weight[present], bias[present] = fitted.coef_, fitted.intercept_
        return weight, bias
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.as_tensor(embeddings), torch.as_tensor(labels, dtype=torch.long)
    layer = nn.Linear(x.shape[1], num_labels)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.02, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(layer(x), y).backward()
        optimizer.step()
    return layer.weight.detach().numpy(), layer.bias.detach().numpy()


# Every objective, by the train.recipe value that selects it ("auto" is resolved to one of them first).
OBJECTIVES: dict[str, type[Objective]] = {cls.recipe: cls for cls in (Classification, ContrastivePairs, Distillation)}


def objective_for(config: TrainConfig, model_name: str, unlabelled: list[str] | None = None,
                  data_config: DataConfig | None = None) -> Objective:
    """The objective of ``train.recipe`` (see :data:`OBJECTIVES`); a distillation run also learns from
    ``unlabelled`` (by default the texts of the file ``data_config.unlabelled``, if set). A Trainer that trains
    nothing keeps ``"auto"`` unresolved, and gets plain classification."""
    return OBJECTIVES.get(config.recipe, Classification).from_run(config, model_name, unlabelled, data_config)
