"""Domain-adaptive masked-language-model pretraining, and WordPiece tokenizer training.

:class:`Pretrainer` continues the pretraining of an encoder on unlabelled text of the target domain, or pretrains
one from scratch (``PretrainConfig.architecture``), with the same hand-written loop as :class:`~textclf.Trainer`:
autocast, GradScaler, warmup schedule, gradient clipping, TensorBoard and JSONL logs, and checkpoints that resume
exactly (model, optimizer, scheduler, scaler, RNG states and the position in the epoch). Its output folder
``OUTPUT/model`` loads wherever a model name is accepted: ``textclf train --model OUTPUT/model``.

Masking follows BERT: ``mask_prob`` of the tokens are chosen (special tokens never), of which 80% become the mask
token, 10% a random token and 10% stay. With whole-word masking all pieces of a chosen word are chosen together:
WordPiece ``##`` continuations go with their word, and with a word segmentation (a words file, a segmenter callable
or jieba) all characters of a Chinese word do. Masks are drawn per batch from a generator seeded by
``(seed, epoch, batch)``, so they never depend on what ran before, and a resumed run draws the masks of an
uninterrupted one. The MLM head runs on the masked positions only: the vocabulary projection is the largest
matrix of a small model and would otherwise be computed for the 85% of tokens that have no label.

:func:`train_tokenizer` trains a BERT-style WordPiece vocabulary (every CJK character its own token) with the
``tokenizers`` library and saves it as a fast tokenizer folder that ``AutoTokenizer`` loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .. import outputs
from ..config import DataConfig, PretrainConfig, TrainConfig, load_mapping
from ..data.collate import training_batches
from ..data.readers import offsets as token_offsets
from ..errors import ConfigError, DataError, ModelLoadError, OutputDirError, TrainingError
from ..model.classifier import load_tokenizer, quiet_transformers, resolve_model_name
from . import checkpoint as ckpt
from .callbacks import Callback
from .loop import TrainingLoop, TrainState

MODEL_DIR = "model"  # the pretrained encoder (what fine-tuning loads) inside the output folder
MLM_DIR = "mlm"  # the encoder with its MLM head (what continued pretraining loads)
META_FILE = "pretrain.json"  # how it was pretrained, next to its weights
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".txt")

# "small" fits a CPU budget (about 3M weights besides the embeddings); "base" is BERT-base.
ARCHITECTURES = {
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


# ====================================================================================================== data


def read_corpus(data: str | Path | Sequence[str | Path], config: DataConfig | None = None) -> list[str]:
    """Unlabelled texts from one or more sources, in order.

    Each source is a ``.txt`` file (one text per line), a CSV/TSV/JSONL file (its ``config.text_column``; labels
    are ignored) or a folder, of which only the training files (``train.csv``, ``train.txt``, ...) are read: dev
    and test text must never be pretrained on, or their scores later mean little.

    Raises:
        DataError: a source does not exist, a folder holds no training file, or no text is left.
    """
    from ..data.readers import read_texts

    sources = [data] if isinstance(data, (str, Path)) else list(data)
    if not sources:
        raise DataError("pretraining data: no source given; pass a .txt/.csv/.tsv/.jsonl file or a folder")
    texts: list[str] = []
    for source in map(Path, sources):
        if source.is_dir():
            files = sorted(p for p in source.iterdir() if p.stem == "train" and p.suffix.lower() in TABLE_SUFFIXES)
            if not files:
                raise DataError(f"{source}: no training file (train.csv, train.tsv, train.jsonl or train.txt) in this "
                                "folder; dev and test files are never used for pretraining. Pass the file itself "
                                "if it has another name")
        elif source.is_file():
            files = [source]
        else:
            raise DataError(f"pretraining data {source} does not exist")
        for file in files:
            texts.extend(read_texts(str(file), config))
    if not texts:
        raise DataError(f"pretraining data {', '.join(map(str, sources))}: no non-empty text found")
    return texts


def align_words(text: str, words: Sequence[str], where: str = "text") -> np.ndarray:
    """The index of the word each character of ``text`` belongs to (-1 for whitespace between words).

    ``words`` must spell ``text`` in order, ignoring whitespace (a segmentation such as jieba's or a pre-segmented
    corpus). Raises a :class:`DataError` naming ``where`` when it does not.
    """
    owner = np.full(len(text), -1, dtype=np.int64)
    pos = 0
    for index, word in enumerate(w for w in words if w.strip()):
        word = word.strip()
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if not text.startswith(word, pos):
            raise DataError(f"{where}: the segmentation does not spell the text: expected {word!r} at character "
                            f"{pos} of {text[:60]!r}; each line must hold that text's words separated by spaces")
        owner[pos:pos + len(word)] = index
        pos += len(word)
    if text[pos:].strip():
        raise DataError(f"{where}: the segmentation ends at character {pos}, before the end of {text[:60]!r}")
    return owner


def load_segmenter(name: str) -> Callable[[str], list[str]] | None:
    """A word segmenter by name: ``"none"`` (None) or ``"jieba"`` (an optional dependency)."""
    if name == "none":
        return None
    try:
        import jieba
    except ImportError:
        raise ConfigError("pretrain.segmenter: 'jieba' is not installed; install it with `pip install jieba`, give "
                          "a words file instead (--words), or use --segmenter none (WordPiece whole words only)"
                          ) from None
    return lambda text: list(jieba.cut(text))


class MLMDataset(Dataset):
    """Tokenized texts with the word each token belongs to, tokenized once up front.

    Args:
        texts: the unlabelled texts.
        tokenizer: a fast tokenizer (its word ids group WordPiece pieces into words).
        max_length: tokens per text, special tokens included; longer texts are truncated.
        whole_word: group tokens into words; False makes every token its own word.
        words: per text, its segmentation into words (all tokens inside one word form one group), or None.

    Items are ``{"input_ids": [len], "word_ids": [len]}``; ``word_ids`` numbers the words of the text from 0, and is
    -1 on special tokens, which are never masked.
    """

    def __init__(self, texts: Sequence[str], tokenizer, max_length: int, whole_word: bool = True,
                 words: Sequence[Sequence[str]] | None = None, batch_size: int = 2048):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("pretraining needs a fast tokenizer (tokenizer.json); convert it with "
                              "AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(folder)")
        if words is not None and len(words) != len(texts):
            raise DataError(f"the word segmentation has {len(words)} lines for {len(texts)} texts; it needs one line "
                            "per text, in the order the texts are read")
        self.texts = list(texts)
        ids, groups, lengths = [], [], []
        self.num_truncated = 0
        for start in range(0, len(self.texts), batch_size):
            batch = self.texts[start:start + batch_size]
            enc = tokenizer(batch, truncation=True, max_length=max_length, return_special_tokens_mask=True,
                            return_offsets_mapping=words is not None, return_attention_mask=False,
                            return_token_type_ids=False)
            for j, row in enumerate(enc["input_ids"]):
                owner = None
                if words is not None:
                    owner = align_words(batch[j], words[start + j], f"words line {start + j + 1}")
                ids.append(row)
                groups.append(_word_groups(enc.word_ids(j), enc["special_tokens_mask"][j], whole_word, owner,
                                           enc["offset_mapping"][j] if owner is not None else None))
                lengths.append(len(row))
                self.num_truncated += len(row) == max_length
        self.lengths = np.asarray(lengths, dtype=np.int64)
        offsets = token_offsets(self.lengths)
        self._offsets = offsets.tolist()
        self._ids = torch.from_numpy(np.fromiter((t for row in ids for t in row), dtype=np.int32,
                                                 count=int(offsets[-1])))
        self._groups = torch.from_numpy(np.fromiter((g for row in groups for g in row), dtype=np.int32,
                                                    count=int(offsets[-1])))

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a, b = self._offsets[i], self._offsets[i + 1]
        return {"input_ids": self._ids[a:b].long(), "word_ids": self._groups[a:b].long()}


def _word_groups(word_ids: list, special: list[int], whole_word: bool, owner: np.ndarray | None,
                 offsets: list | None) -> list[int]:
    """Number the words of one tokenized text; -1 for special tokens.

    A token starts a new word unless it continues the tokenizer's word (a ``##`` piece) or, with a segmentation,
    starts inside the same segmented word as the token before it (the characters of a Chinese word).
    """
    groups, current, previous = [], -1, None  # previous: (tokenizer word, segmentation word) of the last token
    for k, word in enumerate(word_ids):
        if special[k] or word is None:
            groups.append(-1)
            previous = None
            continue
        segment = int(owner[offsets[k][0]]) if owner is not None and offsets[k][0] < len(owner) else None
        same = (whole_word and previous is not None
                and (word == previous[0] or (segment is not None and segment >= 0 and segment == previous[1])))
        if not same:
            current += 1
        groups.append(current)
        previous = (word, segment)
    return groups


def collate_mlm(pad_token_id: int, pad_to_multiple_of: int | None = None):
    """Pad ``input_ids`` with the pad token and ``word_ids`` with -1 (never masked); add the attention mask."""

    def collate(items: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
        word_ids = torch.full((len(items), width), -1, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[i, :n], word_ids[i, :n], mask[i, :n] = item["input_ids"], item["word_ids"], 1
        return {"input_ids": input_ids, "word_ids": word_ids, "attention_mask": mask}

    return collate


def mask_tokens(input_ids: torch.Tensor, word_ids: torch.Tensor, config: PretrainConfig, mask_token_id: int,
                random_ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of one batch: ``(masked input_ids, labels)``, labels -100 where nothing is predicted.

    Each word (``word_ids`` >= 0) is chosen with probability ``mask_prob``, so the expected share of chosen tokens
    is ``mask_prob`` with or without whole words. Every chosen token then becomes the mask token
    (``mask_token_prob``), a random id from ``random_ids`` (``random_token_prob``) or stays. A batch with no chosen
    token gets its first maskable token chosen, so the loss is never an average over nothing.

    Args:
        input_ids, word_ids: ``[B, T]``; ``word_ids`` numbers the words of each row from 0 (< T), -1 = never masked.
    """
    rows, width = input_ids.shape
    maskable = word_ids >= 0
    word_draw = torch.rand(rows, width, generator=generator)  # one draw per word slot of each row
    chosen = (word_draw.gather(1, word_ids.clamp(min=0)) < config.mask_prob) & maskable
    if not bool(chosen.any()) and bool(maskable.any()):
        chosen.view(-1)[int(maskable.view(-1).nonzero()[0])] = True
    action = torch.rand(rows, width, generator=generator)
    random_tokens = random_ids[torch.randint(len(random_ids), (rows, width), generator=generator)]
    to_mask = chosen & (action < config.mask_token_prob)
    to_random = chosen & (action >= config.mask_token_prob) & (
        action < config.mask_token_prob + config.random_token_prob)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_tokens, masked)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    return masked, labels


# ====================================================================================================== the model


def build_mlm_model(model: str | None, architecture: str | None, tokenizer, log=print) -> nn.Module:
    """A masked-language model: ``model``'s weights (continued pretraining), or a fresh one of ``architecture``.

    ``architecture`` is ``"small"``, ``"base"`` or a JSON file of a ``transformers`` config (``model_type``
    defaults to ``"bert"``); its vocabulary size is the tokenizer's.
    """
    from transformers import AutoConfig, AutoModelForMaskedLM, BertConfig

    if architecture is None:
        if model is None:
            raise ConfigError("pretrain: pass a model to continue pretraining (--model) or an architecture to "
                              "pretrain from scratch (--config small|base|PATH.json)")
        path = resolve_model_name(model)
        try:
            with quiet_transformers():  # its table of MISSING head weights is said below in one line
                mlm, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model {model!r} cannot be loaded as a masked-language model: {exc}") from None
        _check_vocab(mlm.config.vocab_size, tokenizer, f"model {model}")
        new = [k for k in info.get("missing_keys", ()) if not k.endswith("position_ids")]
        if new:
            log(f"{model}: {len(new)} weights of the masked-language head are new (the folder holds an encoder "
                "without one); pretraining trains them from their initialisation")
        return mlm.float()
    vocab = len(tokenizer)
    special = {"pad_token_id": tokenizer.pad_token_id or 0}
    if architecture in ARCHITECTURES:
        config = BertConfig(vocab_size=vocab, max_position_embeddings=512, **ARCHITECTURES[architecture], **special)
    else:
        raw = load_mapping(architecture)
        raw = {k: v for k, v in raw.items() if k not in ("architectures", "transformers_version", "vocab_size")}
        try:
            config = AutoConfig.for_model(raw.pop("model_type", "bert"), vocab_size=vocab, **{**special, **raw})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"pretrain.architecture: {architecture} is not a usable transformers config: {exc}"
                              ) from None
    return AutoModelForMaskedLM.from_config(config).float()


def encoder_for_finetuning(mlm: nn.Module) -> nn.Module:
    """The encoder of an MLM model as a plain ``AutoModel`` (``BertModel``), with a pooler, on the CPU.

    ``AutoModel`` loads the result without a report of unexpected (MLM head) or missing (pooler) weights. MLM
    trains no pooler, so it starts as the identity (``tanh`` of the first token's vector) rather than at random;
    mean pooling (``--pooling mean``) drops it altogether and is the recommended choice after MLM pretraining.
    """
    from transformers import AutoModel

    encoder = AutoModel.from_config(mlm.config)
    missing, unexpected = encoder.load_state_dict(mlm.base_model.state_dict(), strict=False)
    missing = [k for k in missing if not k.startswith("pooler.") and not k.endswith("position_ids")]
    if missing or unexpected:  # pragma: no cover - an architecture whose base model differs from AutoModel's
        raise TrainingError(f"cannot extract the encoder of {type(mlm).__name__}: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    dense = getattr(getattr(encoder, "pooler", None), "dense", None)
    if isinstance(dense, nn.Linear) and dense.in_features == dense.out_features:
        with torch.no_grad():
            nn.init.eye_(dense.weight)
            nn.init.zeros_(dense.bias)
    return encoder.to("cpu")


def _check_vocab(model_vocab: int, tokenizer, what: str) -> None:
    if len(tokenizer) > model_vocab:
        raise ConfigError(f"{what} has {model_vocab} embeddings but the tokenizer has {len(tokenizer)} tokens; use "
                          "the model's own tokenizer, or pretrain from scratch (--config) with this one")


def _masked_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   selected: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, V]`` at the ``selected`` positions only (BERT's ``cls`` / RoBERTa's ``lm_head``)."""
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is None:  # another architecture: the full logits, then select
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[selected]
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
    return head(hidden[selected])


# ====================================================================================================== the loop


@dataclass
class StepOutput:
    """What :meth:`Pretrainer.training_step` returns; ``loss`` is detached and not divided for accumulation."""

    loss: torch.Tensor
    correct: torch.Tensor  # masked tokens predicted right (on the device)
    num_masked: int = 0
    num_rows: int = 0
    num_tokens: int = 0


PretrainState = TrainState  # one progress record for both kinds of run; the name stays for old imports


@dataclass
class PretrainResult:
    """Summary of :meth:`Pretrainer.fit`; ``model_dir`` is what ``textclf train --model`` takes."""

    output_dir: Path
    model_dir: Path | None
    global_step: int
    final_loss: float | None
    interrupted: bool = False
    signal: int | None = None  # the signal that interrupted pretraining; exit status 128 + signal


class Pretrainer(TrainingLoop):
    """Masked-language-model pretraining with the hand-written loop of :class:`~textclf.Trainer`.

    Args:
        model: a model name or folder to continue pretraining (its tokenizer is used), or None with
            ``pretrain_config.architecture`` set to pretrain from scratch.
        data: a file or folder, or a list of them (see :func:`read_corpus`); or pass ``texts``.
        output_dir: where ``model/``, checkpoints, ``log.jsonl``, TensorBoard ``runs/`` and ``config.yaml`` go.
        config: the optimisation recipe (epochs, lr, batch size, max_length, precision, ...). Its evaluation fields
            (``eval_steps``, ``metric``, ``patience``) are not used.
        pretrain_config: masking and model choice (:class:`PretrainConfig`).
        texts: in-memory texts instead of ``data``.
        tokenizer: a fast tokenizer; by default ``pretrain_config.tokenizer`` or the model's own.
        segmenter: a callable ``text -> list of words`` for whole-word masking of Chinese (overrides
            ``pretrain_config.segmenter``).
        data_config: how files are read (text column, encoding).
        callbacks: extra :class:`~textclf.Callback` objects (``on_train_begin``, ``on_step_end``, ``on_log``,
            ``on_epoch_end``, ``on_train_end``).
        overwrite: replace an existing run in ``output_dir``.
    """

    layout = outputs.PRETRAIN_RUN
    saved_outputs = (MODEL_DIR, MLM_DIR)
    # A resumed run may change where things are, the device and precision, logging and checkpoint cadence, and how
    # long it goes on; anything else would make the checkpoint's data position or optimizer state mean another thing.
    # train.recipe means nothing to pretraining (its default became "auto"; runs before saved "fine-tune").
    RESUMABLE_SETTINGS = ("run.output", "train.device", "train.precision", "train.num_workers", "train.log_steps",
                          "train.epochs", "train.max_steps", "train.save_steps", "train.keep_checkpoints",
                          "train.recipe")

    def __init__(self, model: str | None = None, data=None, output_dir: str | Path = "runs/pretrain",
                 config: TrainConfig | None = None, pretrain_config: PretrainConfig | None = None, *,
                 texts: Sequence[str] | None = None, tokenizer=None,
                 segmenter: Callable[[str], list[str]] | None = None,
                 data_config: DataConfig | None = None, callbacks: list[Callback] | None = None,
                 overwrite: bool = False, progress: bool = True):
        super().__init__(config, output_dir, overwrite, list(callbacks or []), progress)
        if self.runtime.distributed:
            raise ConfigError("textclf pretrain runs in one process; launch it with python, not torchrun")
        self.pretrain_config = pcfg = pretrain_config or PretrainConfig()
        self.data_config = data_config or DataConfig()
        self.model_name = model
        self._tokenizer_source = pcfg.tokenizer

        if (data is None) == (texts is None):
            raise ConfigError("Pretrainer: pass either data= (files or folders) or texts= (a list of strings)")
        self.sources = None if data is None else [str(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
        self.texts = list(texts) if texts is not None else read_corpus(self.sources, self.data_config)
        if tokenizer is None:
            source = pcfg.tokenizer or (model if pcfg.architecture is None else None)
            if source is None:
                raise ConfigError("pretrain.tokenizer: a model trained from scratch needs a tokenizer folder "
                                  "(--tokenizer DIR, e.g. one written by `textclf tokenizer train`)")
            tokenizer = load_tokenizer(source)
        self.tokenizer = tokenizer
        if tokenizer.mask_token_id is None:
            raise ConfigError("pretrain: the tokenizer has no mask token; masked-language modelling needs one")
        self.model = build_mlm_model(model, pcfg.architecture, tokenizer, log=self.print).to(self.runtime.device)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and self.config.max_length > limit:
            raise ConfigError(f"train.max_length: {self.config.max_length} exceeds the model's limit of {limit}")

        words = self._segment(segmenter)
        self.train_dataset = MLMDataset(self.texts, tokenizer, self.config.max_length, pcfg.whole_word_masking, words)
        special = set(tokenizer.all_special_ids)
        vocab = self.model.config.vocab_size
        self.random_ids = torch.tensor([i for i in range(min(vocab, len(tokenizer))) if i not in special])
        self.collate = collate_mlm(tokenizer.pad_token_id or 0, self.runtime.pad_to_multiple_of)

    @property
    def dataset(self) -> MLMDataset:
        """The tokenized corpus (``train_dataset``)."""
        return self.train_dataset

    def _segment(self, segmenter) -> list[list[str]] | None:
        pcfg = self.pretrain_config
        if not pcfg.whole_word_masking:
            return None
        if pcfg.words:
            path = Path(pcfg.words)
            if not path.is_file():
                raise DataError(f"pretrain.words: {path} does not exist")
            lines = path.read_text(encoding=self.data_config.encoding).split("\n")
            if lines and not lines[-1].strip():
                lines.pop()
            return [line.split() for line in lines]
        segmenter = segmenter or load_segmenter(pcfg.segmenter)
        return None if segmenter is None else [list(segmenter(text)) for text in self.texts]

    def fit(self, resume: str | Path | None = None) -> PretrainResult:
        """Pretrain; ``resume="auto"`` continues the newest checkpoint. Writes ``OUTPUT/model`` at the end."""
        return super().fit(resume)

    def describe_run(self) -> str:
        return (f"pretraining on {self.runtime.device} in {self.runtime.precision}: {len(self.dataset)} texts, "
                f"{int(self.dataset.lengths.sum())} tokens ({self.dataset.num_truncated} texts cut at "
                f"max_length={self.config.max_length}), {self.total_steps} optimizer steps")

    # ==================================================================================================
    # override points
    # ==================================================================================================

    def prepare_batch(self, batch: dict[str, torch.Tensor], epoch: int, index: int) -> dict[str, torch.Tensor]:
        return self.mask_batch(batch, epoch, index)

    def mask_batch(self, batch: dict[str, torch.Tensor], epoch: int, index: int) -> dict[str, torch.Tensor]:
        """Add ``labels`` and mask ``input_ids`` (:func:`mask_tokens`), seeded by ``(seed, epoch, batch index)``."""
        generator = torch.Generator().manual_seed(_mask_seed(self.config.seed, epoch, index))
        input_ids, labels = mask_tokens(batch["input_ids"], batch["word_ids"], self.pretrain_config,
                                        self.tokenizer.mask_token_id, self.random_ids, generator)
        return {"input_ids": input_ids, "attention_mask": batch["attention_mask"], "labels": labels}

    def compute_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the masked tokens (``logits [N, V]``, ``targets [N]``), in fp32."""
        return F.cross_entropy(logits.float(), targets)

    def training_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """Forward on the masked positions, loss, and backward of one micro-batch (loss / micro-batches)."""
        num_tokens = int(batch["attention_mask"].sum())  # host tensors: no device sync
        selected = batch["labels"] != -100
        num_masked = int(selected.sum())
        batch = self._to_device(batch)
        selected = selected.to(self.runtime.device)
        targets = batch["labels"][selected]
        with self.runtime.autocast():
            logits = _masked_logits(self.model, batch["input_ids"], batch["attention_mask"], selected)
        loss = self.compute_loss(logits, targets)
        self.backward(loss)
        correct = (logits.detach().argmax(-1) == targets).sum()
        return StepOutput(loss.detach(), correct, num_masked, len(batch["input_ids"]), num_tokens)

    # ==================================================================================================
    # the loop's hooks
    # ==================================================================================================

    @property
    def train_sampler(self):
        if not hasattr(self, "_train_sampler"):
            cfg = self.config
            self._train_sampler = training_batches(self.dataset.lengths, cfg.batch_size, cfg.seed, cfg.max_tokens,
                                                   cfg.group_by_length)
        return self._train_sampler

    def _reset_meters(self) -> None:
        super()._reset_meters()
        self._correct = torch.zeros((), device=self.runtime.device, dtype=torch.long)
        self._masked = 0

    def _track(self, output: StepOutput) -> None:
        super()._track(output)
        self._correct += output.correct  # on the device, like the loss
        self._masked += output.num_masked

    def _meter_state(self) -> dict:
        return {**super()._meter_state(), "correct": int(self._correct), "masked": self._masked}

    def _load_meters(self, meters: dict) -> None:
        super()._load_meters(meters)
        self._correct += meters["correct"]
        self._masked = meters["masked"]

    def _training_logs(self, elapsed: float) -> dict[str, float]:
        logs = super()._training_logs(elapsed)
        logs["train/masked_accuracy"] = float(self._correct) / max(1, self._masked)
        self.state.history.append({"step": self.state.global_step,
                                   "loss": logs["train/loss"], "masked_accuracy": logs["train/masked_accuracy"]})
        return logs

    def input_paths(self) -> dict[str, object]:
        return {"--data": self.sources, "--model": self.model_name, "--tokenizer": self._tokenizer_source}

    def resolved_config(self) -> dict:
        """What ``config.yaml`` holds: the sources, the model, the masking and the recipe."""
        run = {"data": self.sources, "model": self.model_name, "output": str(self.output_dir)}
        return {"run": run, "data": dataclasses.asdict(self.data_config),
                "pretrain": dataclasses.asdict(self.pretrain_config), "train": dataclasses.asdict(self.config)}

    def _data_fingerprint(self) -> dict:
        if getattr(self, "_fingerprint", None) is None:  # the texts never change during a run: hash them once
            digest = hashlib.sha256()
            for text in self.texts:
                digest.update(text.encode() + b"\x1e")
            self._fingerprint = {"rows": len(self.texts), "sha256": digest.hexdigest()}
        return self._fingerprint

    def _data_differences(self, saved: dict) -> list[str]:
        if saved == self._data_fingerprint():
            return []
        return [f"texts: {saved.get('rows')} -> {len(self.texts)} rows (or the same number with other texts)"]

    def _checkpoint_module(self) -> nn.Module:
        return _Untied(self.model)  # the MLM decoder shares its weight with the embeddings

    def _finish(self) -> PretrainResult:
        """Write ``OUTPUT/model`` (the encoder) and ``OUTPUT/mlm`` (with its MLM head), each with the tokenizer."""
        self._emit("on_train_end")
        self._close_loggers()
        last_loss = self.state.history[-1]["loss"] if self.state.history else None
        if self._interrupt_signal is not None:
            self._report_stop()
            return PretrainResult(self.output_dir, None, self.state.global_step, last_loss, interrupted=True,
                                  signal=self._interrupt_signal)
        meta = {"pretrained_by": "textclf pretrain", "base_model": self.model_name,
                "pretrain_config": dataclasses.asdict(self.pretrain_config),
                "train_config": dataclasses.asdict(self.config), "global_step": self.state.global_step,
                "texts": len(self.texts), "tokens": int(self.dataset.lengths.sum()), "final_loss": last_loss,
                "history": self.state.history,
                # A CLS vector only means something after a sentence-level task (NSP); MLM trains token vectors.
                "recommended_pooling": "mean"}

        def write(model: nn.Module):
            def to(tmp: Path) -> None:
                model.save_pretrained(str(tmp))
                self.tokenizer.save_pretrained(str(tmp))
                (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            return to

        ckpt.write_atomically(self.output_dir / MLM_DIR, write(self.model))
        model_dir = ckpt.write_atomically(self.output_dir / MODEL_DIR, write(encoder_for_finetuning(self.model)))
        loss = "n/a" if last_loss is None else f"{last_loss:.4f}"
        self.print(f"pretrained encoder: {model_dir} (MLM loss {loss} at step {self.state.global_step}); with its MLM "
                   f"head: {self.output_dir / MLM_DIR}\n"
                   f"fine-tune: textclf train --model {model_dir} --pooling mean --data DIR --output DIR")
        return PretrainResult(self.output_dir, model_dir, self.state.global_step, last_loss)


class _Untied(nn.Module):
    """A view of a model whose state dict lists each tied tensor once (safetensors refuses shared memory).

    The MLM decoder shares its weight with the word embeddings; loading restores the one copy and both stay tied.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def state_dict(self, *args, **kwargs):
        seen, state = set(), {}
        for key, value in self.model.state_dict().items():
            if value.data_ptr() in seen:
                continue
            seen.add(value.data_ptr())
            state[key] = value
        return state

    def load_state_dict(self, state, strict: bool = True):
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        tied = set(self.model.state_dict()) - set(self.state_dict())
        missing = [k for k in missing if k not in tied]
        if strict and (missing or unexpected):
            raise RuntimeError(f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return missing, unexpected


def _mask_seed(seed: int, epoch: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"textclf-mlm:{seed}:{epoch}:{index}".encode()).digest()[:8], "little") >> 1


def pretrain(model: str | None = None, data=None, output_dir: str | Path = "runs/pretrain",
             config: TrainConfig | None = None, pretrain_config: PretrainConfig | None = None,
             resume: str | Path | None = None, **kwargs) -> PretrainResult:
    """One call: ``Pretrainer(model, data, output_dir, config, pretrain_config, **kwargs).fit(resume)``."""
    return Pretrainer(model, data, output_dir, config, pretrain_config, **kwargs).fit(resume)


# ====================================================================================================== tokenizer


def train_tokenizer(data=None, output_dir: str | Path = "tokenizer", vocab_size: int = 21128, *,
                    texts: Sequence[str] | None = None, lowercase: bool = True, min_frequency: int = 2,
                    data_config: DataConfig | None = None, overwrite: bool = False):
    """Train a BERT-style WordPiece tokenizer on a corpus and save it as a fast tokenizer folder.

    Every CJK character is its own token (as in bert-base-chinese); other text is split on whitespace and
    punctuation, then into WordPiece pieces (``##`` continuations). The folder loads with
    ``AutoTokenizer.from_pretrained`` and is what ``PretrainConfig.tokenizer`` / ``--tokenizer`` take.

    Args:
        data: files or folders (see :func:`read_corpus`; only training files of a folder), or pass ``texts``.
        output_dir: the tokenizer folder to write.
        vocab_size: largest vocabulary, special tokens included.
        lowercase: lowercase and strip accents (as uncased BERT).
        min_frequency: pieces seen fewer times are not added.
        overwrite: replace a non-empty ``output_dir``.

    Returns:
        The trained ``transformers`` fast tokenizer.
    """
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    if (data is None) == (texts is None):
        raise ConfigError("train_tokenizer: pass either data= (files or folders) or texts= (a list of strings)")
    if vocab_size < 10:
        raise ConfigError(f"tokenizer.vocab_size: must be >= 10, got {vocab_size}")
    corpus = list(texts) if texts is not None else read_corpus(data, data_config)
    if not corpus:
        raise DataError("train_tokenizer: no text to train on")
    out = Path(output_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputDirError(f"tokenizer folder {out} is not empty; pass --overwrite (overwrite=True) to replace it "
                             "or choose another folder")
    wordpiece = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=lowercase,
                                       lowercase=lowercase)
    # The default alphabet limit (1000 characters) would turn most Chinese characters into [UNK]: a Chinese corpus
    # has thousands of characters, each a token of its own, so the alphabet may fill the whole vocabulary.
    wordpiece.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=min_frequency,
                                  limit_alphabet=vocab_size, show_progress=False,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, do_lower_case=lowercase,
                                  unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                                  mask_token="[MASK]", tokenize_chinese_chars=True, strip_accents=lowercase)
    ckpt.write_atomically(out, lambda tmp: tokenizer.save_pretrained(str(tmp)))
    return tokenizer
