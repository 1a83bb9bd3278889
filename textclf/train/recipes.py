"""The automatic recipe (``train.recipe = "auto"``): look at the data and the encoder, then choose how to train.

Two steps, so that the choice itself is a pure function that tests can walk through a table of data shapes:

* :func:`describe` measures the :class:`DataShape` once: rows per class, classes, multi-label or not, token
  lengths, the script of the texts and how much of them the encoder's vocabulary knows, and the encoder (a
  sentence embedder or not, its width, depth and position limit);
* :func:`choose` maps a shape and the settings the user gave explicitly to a :class:`Recipe`: contrastive few-shot
  training, full fine-tuning, or fine-tuning with the lower layers frozen, with epochs, learning rate, warmup,
  batch size and ``max_length`` scaled to the data, and one line saying what was chosen and why.

Explicit settings always win: a field the user set keeps its value whatever the recipe would pick. From the
command line "explicit" means given as a flag or in ``--config``; from Python, a field given to the config's
constructor, or one that differs from its default (:func:`explicit_fields`).

The thresholds are measured, not guessed: docs/small-data.md has the benchmark behind each of them.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig, TrainConfig
from ..errors import ConfigError
from .objectives import OBJECTIVES, ContrastivePairs

# Few-shot (contrastive pairs, then a fitted head) when a class has at most this many rows in the median: at 8 rows
# per class it beats plain fine-tuning by 13-62 accuracy points and matches SetFit (docs/small-data.md); above it,
# fine-tuning with enough optimizer steps catches up, and pairs grow with the rows.
FEW_SHOT_MAX_ROWS_PER_CLASS = 64
# Fine-tuning takes at least this many optimizer steps (more epochs on small data): 3 epochs of 48 rows are 9 steps,
# too few for the head to leave chance (docs/small-data.md), while 2 epochs of TREC's 4,871 rows (306 steps) give
# 0.966 accuracy (docs/recipes.md).
MIN_FINE_TUNE_STEPS = 300
MAX_EPOCHS = 20
# Fine-tuning with fewer rows per class than this (a plain encoder, or data few-shot cannot pair) trains only the
# top half of the encoder: fewer parameters to fit to a few dozen rows (docs/recipes.md, "Freezing lower layers").
FREEZE_BELOW_ROWS_PER_CLASS = 16
# max_length covers this share of the training texts (in tokens, rounded up to a multiple of 8, at most 256).
LENGTH_QUANTILE = 0.95
LONGEST_AUTO_LENGTH = 256
# Texts measured for lengths and vocabulary (drawn evenly); enough for a stable 95th percentile.
SAMPLE_ROWS = 2000
# Above this share of [UNK] tokens the encoder cannot read the texts, and the line says so.
UNKNOWN_WARNING = 0.05


@dataclass(frozen=True)
class DataShape:
    """What the automatic recipe looks at. Build it with :func:`describe` or by hand (tests)."""

    rows: int
    classes: int
    min_rows_per_class: int
    median_rows_per_class: float
    multi_label: bool = False
    length_quantile: int = 64  # tokens (special tokens included) of the LENGTH_QUANTILE-th text
    language: str = "en"  # "zh" when most letters are CJK ideographs, else "en" (alphabetic scripts)
    unknown_share: float = 0.0  # share of the measured tokens that the tokenizer maps to [UNK]
    sentence_encoder: bool = False  # the encoder ships sentence-transformers pooling (mean): few-shot can tune it
    hidden_size: int = 384
    num_layers: int = 6
    position_limit: int = 512


@dataclass(frozen=True)
class Recipe:
    """The settings chosen, and the one line that says what and why (None: settings given, nothing chosen)."""

    train: TrainConfig
    model: ModelConfig
    reason: str | None


def explicit_fields(config) -> set[str]:
    """What a Python user set explicitly in a config: the fields its constructor was given (``TrainConfig(epochs=3)``
    sets epochs, though 3 is the default), and any field that differs from its default.

    A config made by ``dataclasses.replace`` was given every field, which says nothing about what the user chose;
    then only the fields that differ from their defaults count (:func:`textclf.config.replaced` keeps the record).
    """
    default = type(config)()
    given = set(config.given_fields()) if hasattr(config, "given_fields") else set()
    if given >= {f.name for f in dataclasses.fields(config) if f.init}:
        given = set()
    return given | {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(default, f.name)}


def choose(shape: DataShape, train: TrainConfig, model: ModelConfig,
           explicit_train: set[str] | None = None, explicit_model: set[str] | None = None) -> Recipe:
    """The recipe for ``shape``; the fields named in ``explicit_*`` keep the values of ``train`` and ``model``
    (default: the fields that differ from their defaults). A ``train.recipe`` other than ``"auto"`` named in
    ``explicit_train`` is kept, and the settings are scaled for it (``textclf tune --recipe fine-tune``)."""
    explicit_train = explicit_fields(train) if explicit_train is None else set(explicit_train)
    explicit_model = explicit_fields(model) if explicit_model is None else set(explicit_model)
    given = train.recipe if train.recipe != "auto" and "recipe" in explicit_train else None
    explicit_train.discard("recipe")
    why = [f"{shape.rows} rows, {shape.classes} classes ({_per_class(shape)} per class)"]

    if given == ContrastivePairs.recipe or (given is None and _few_shot_fits(shape, train)):
        picked = {"recipe": ContrastivePairs.recipe, **ContrastivePairs.AUTO_SETTINGS}
        frozen = None
        why.append("few-shot as given" if given else f"a sentence encoder and at most {FEW_SHOT_MAX_ROWS_PER_CLASS} "
                   "rows per class: contrastive few-shot")
    else:
        picked, frozen, condition = _fine_tuning(shape)
        why.append("fine-tuning as given" if given else f"{condition}: fine-tuning")
        if frozen is not None:
            why[-1] += f", the lower {frozen} of {shape.num_layers} layers frozen (few rows)"
    max_length = _max_length(shape)
    picked["max_length"] = max_length
    why.append(f"max_length {max_length} ({LENGTH_QUANTILE:.0%} of the texts have at most {shape.length_quantile} "
               "tokens)")

    kept = {name: value for name, value in picked.items() if name not in explicit_train}
    chosen_train = dataclasses.replace(train, **kept)
    chosen_model = model
    if frozen is not None and "freeze_layers_below" not in explicit_model:
        chosen_model = dataclasses.replace(model, freeze_layers_below=frozen)
    overridden = sorted(name for name in picked if name in explicit_train)
    settings = ", ".join(f"{name} {getattr(chosen_train, name):g}" for name in ("epochs", "lr", "batch_size")
                         if name not in overridden)
    line = f"recipe auto: {chosen_train.recipe}"
    line += f" ({settings})" if settings else ""
    per_epoch = OBJECTIVES[chosen_train.recipe].steps_per_epoch(shape.rows, chosen_train)  # from the kept settings
    if per_epoch is not None:
        line += f", about {math.ceil(chosen_train.epochs * per_epoch)} optimizer steps"
    line += f", layers below {chosen_model.freeze_layers_below} frozen" if chosen_model.freeze_layers_below else ""
    line += " -- " + "; ".join(why)
    line += f"; kept your {', '.join(overridden)}" if overridden else ""
    return Recipe(chosen_train, chosen_model, line)  # an unreadable vocabulary is said by the Trainer, any recipe


def _per_class(shape: DataShape) -> str:
    median = f"{shape.median_rows_per_class:g}"
    return median if shape.min_rows_per_class == shape.median_rows_per_class else \
        f"median {median}, fewest {shape.min_rows_per_class}"


def _few_shot_fits(shape: DataShape, train: TrainConfig) -> bool:
    """Few-shot where it may run (:meth:`ContrastivePairs.refusal <textclf.train.objectives.ContrastivePairs.
    refusal>`) and the classes are small enough for it to win."""
    return (ContrastivePairs.refusal(shape, train) is None
            and shape.median_rows_per_class <= FEW_SHOT_MAX_ROWS_PER_CLASS)


def _fine_tuning(shape: DataShape) -> tuple[dict, int | None, str]:
    """Epochs for MIN_FINE_TUNE_STEPS optimizer steps, the learning rate of the encoder's size, and frozen lower
    layers for very little data; with the condition that led to fine-tuning, in words."""
    batch = 16 if shape.rows < 1000 else 32
    steps_per_epoch = math.ceil(shape.rows / batch)
    epochs = min(MAX_EPOCHS, max(math.ceil(MIN_FINE_TUNE_STEPS / steps_per_epoch), 2 if shape.rows < 100_000 else 1))
    # Small encoders (MiniLM, 384 wide) take the top of the usual range, base models 3e-5, large ones 2e-5.
    lr = 1e-4 if shape.hidden_size <= 384 else 3e-5 if shape.hidden_size <= 768 else 2e-5
    picked = {"recipe": "fine-tune", "epochs": epochs, "lr": lr, "batch_size": batch, "warmup_ratio": 0.1}
    if not shape.sentence_encoder:
        condition = "no sentence-transformers pooling in the encoder"
    elif shape.multi_label:
        condition = "multi-label"
    elif shape.classes < 2:
        condition = "a single class"
    else:
        condition = f"more than {FEW_SHOT_MAX_ROWS_PER_CLASS} rows per class"
    few_rows = shape.median_rows_per_class < FREEZE_BELOW_ROWS_PER_CLASS and shape.num_layers >= 2
    return picked, shape.num_layers // 2 if few_rows else None, condition


def _max_length(shape: DataShape) -> int:
    limit = min(LONGEST_AUTO_LENGTH, shape.position_limit)
    return max(16, min(limit, 8 * math.ceil(shape.length_quantile / 8)))


# ============================================================================================== measuring the data


def describe(texts: list[str], labels: list, multi_label: bool, tokenizer, encoder_config,
             sentence_encoder: bool, pool: list[str] | None = None) -> DataShape:
    """Measure the training rows and the encoder.

    Args:
        texts, labels: the training split (labels: one name per row, or a list of names per row).
        multi_label: whether ``labels`` holds lists.
        tokenizer: the encoder's fast tokenizer (lengths and unknown tokens are measured with it).
        encoder_config: the encoder's Hugging Face config (width, depth, position limit).
        sentence_encoder: whether the encoder ships sentence-transformers mean pooling.
        pool: unlabelled texts the model will read, measured with ``texts`` for lengths, script and vocabulary.
    """
    labelled = label_shape(labels, multi_label, sentence_encoder)
    sample = _sample(list(texts) + list(pool or []))
    encoded = tokenizer(sample, add_special_tokens=True, truncation=False)["input_ids"]
    lengths = sorted(len(ids) for ids in encoded)
    unknown = _unknown_share(encoded, tokenizer)
    limit = getattr(encoder_config, "max_position_embeddings", 512) or 512
    if getattr(encoder_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # these reserve two positions for the padding offset
    return dataclasses.replace(
        labelled, length_quantile=lengths[min(len(lengths) - 1, int(LENGTH_QUANTILE * len(lengths)))],
        language=_script(sample), unknown_share=unknown, hidden_size=int(getattr(encoder_config, "hidden_size", 768)),
        num_layers=int(getattr(encoder_config, "num_hidden_layers", 12)), position_limit=limit)


def label_shape(labels: list, multi_label: bool, sentence_encoder: bool) -> DataShape:
    """The part of :func:`describe` that needs no tokenizer: rows and rows per class (the rest at its defaults),
    enough to ask an objective's :meth:`refusal <textclf.train.objectives.Objective.refusal>`."""
    counts = Counter(name for row in labels for name in (row if multi_label else [row]))
    if not counts:
        raise ConfigError("train.recipe auto: the training split has no labelled rows to look at")
    per_class = list(counts.values())
    return DataShape(rows=len(labels), classes=len(counts), min_rows_per_class=min(per_class),
                     median_rows_per_class=statistics.median(per_class), multi_label=multi_label,
                     sentence_encoder=sentence_encoder)


def is_sentence_encoder(model_name: str) -> bool:
    """Whether ``model_name`` ships sentence-transformers mean pooling (what few-shot training tunes)."""
    from ..model.classifier import sentence_pooling

    try:
        return sentence_pooling(model_name) is not None
    except ConfigError:  # a sentence encoder that pools other than by the mean: few-shot cannot tune it
        return False


def _sample(texts: list[str]) -> list[str]:
    """Up to SAMPLE_ROWS texts spread evenly over ``texts``: what is measured."""
    return [texts[int(i)] for i in np.linspace(0, len(texts) - 1, min(len(texts), SAMPLE_ROWS)).round()]


def _unknown_share(encoded: list[list[int]], tokenizer) -> float:
    unk = tokenizer.unk_token_id
    tokens = sum(len(ids) for ids in encoded)
    return sum(ids.count(unk) for ids in encoded) / tokens if unk is not None and tokens else 0.0


def unreadable_warning(texts: list[str], tokenizer, model_name: str) -> str | None:
    """A warning when the encoder's vocabulary cannot read ``texts`` (more than UNKNOWN_WARNING of their tokens are
    [UNK]), naming what to do; None when it can. Said before training whatever the recipe: a model that sees mostly
    [UNK] learns from the few tokens left and ends near chance (the bundled English minilm reads two thirds of
    Chinese news-title tokens as [UNK])."""
    if not texts:
        return None
    sample = _sample(texts)
    share = _unknown_share(tokenizer(sample, add_special_tokens=False, truncation=False)["input_ids"], tokenizer)
    if share <= UNKNOWN_WARNING:
        return None
    chinese = _script(sample) == "zh"
    encoder = ("a Chinese encoder (--model hfl/chinese-roberta-wwm-ext or bert-base-chinese, when the model hub is "
               "reachable)" if chinese else "an encoder whose vocabulary covers this language")
    return (f"warning: {share:.0%} of the training tokens are unknown to the vocabulary of {model_name} ([UNK]), so "
            f"the model can hardly read this data and will score near chance. Use {encoder}; offline, pretrain one "
            "on your own texts (textclf pretrain, docs/pretraining.md); and compare with the TF-IDF baseline "
            "(textclf train --baseline, or textclf baseline)")


def _script(texts: list[str]) -> str:
    """"zh" when CJK ideographs are most of the letters, else "en"."""
    letters = cjk = 0
    for text in texts:
        for char in text:
            if char.isalpha():
                letters += 1
                cjk += "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"
    return "zh" if letters and cjk / letters > 0.5 else "en"


def resolve_auto(data, tokenizer, model_config: ModelConfig, train: TrainConfig, encoder_config=None,
                 explicit_train: set[str] | None = None, explicit_model: set[str] | None = None) -> Recipe:
    """:func:`describe` the training split of ``data`` (a ``DatasetSplits``), then :func:`choose`.

    ``encoder_config`` defaults to the config of ``model_config.name`` (read from its folder or the hub).
    """
    from ..model.classifier import resolve_model_name

    if encoder_config is None:
        from transformers import AutoConfig

        try:
            encoder_config = AutoConfig.from_pretrained(resolve_model_name(model_config.name))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"train.recipe auto: cannot read the config of model {model_config.name!r} ({exc}); "
                              "give a hub name or a local model folder") from None
    shape = describe(data.train.texts, data.train.labels, data.label_map.multi_label, tokenizer, encoder_config,
                     is_sentence_encoder(model_config.name), pool=data.pool)
    return choose(shape, train, model_config, explicit_train, explicit_model)


def recipe_for_trainer(data, tokenizer, model, model_config: ModelConfig, train: TrainConfig, say=print) -> Recipe:
    """The settings a Trainer runs: ``train`` and ``model_config`` as given (reason None), or for ``recipe="auto"``
    :func:`resolve_auto` with the fields away from their defaults kept, its line passed to ``say``. ``model`` is a
    name or a ready module (whose encoder config is used)."""
    if train.recipe != "auto" or data is None:  # no data: a Trainer that evaluates or predicts, and trains nothing
        return Recipe(train, model_config, None)
    encoder = getattr(model, "encoder", None)
    recipe = resolve_auto(data, tokenizer, model_config, train, encoder.config if encoder is not None else None)
    say(recipe.reason)
    return recipe
