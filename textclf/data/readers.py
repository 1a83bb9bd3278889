"""Reading labelled text: files and in-memory data -> :class:`Split` -> :class:`TextClassificationDataset`.

Readers accept CSV, TSV, JSONL (``.jsonl``/``.json``/``.ndjson``), folder-per-class directories
(``DIR/<label>/*.txt``, optionally under ``DIR/train/``, ``DIR/dev/``, ``DIR/test/``), pandas DataFrames (pandas is
never imported here), lists of ``(text, label)`` pairs and ``{"text": [...], "label": [...]}`` dicts.

Every problem in the input raises one :class:`~textclf.errors.DataError` whose message names the file, the line (as
an editor numbers it: the header is line 1) and the fix. Recoverable oddities (empty texts, the same text with
different labels) are dropped or kept with a :class:`DataWarning`, or raise when ``DataConfig.strict`` is set.
Texts are only stripped of surrounding whitespace: casing and normalisation are the tokenizer's job.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DataConfig
from ..errors import ConfigError, DataError, DataWarning  # noqa: F401 -- DataWarning: imported from here too
from .labels import LabelMap, canonical_label

__all__ = [
    "DataWarning",
    "DatasetSplits",
    "Split",
    "TextClassificationDataset",
    "fold_keys",
    "load_dataset",
    "read_split",
    "read_texts",
    "read_unlabelled",
    "stratified_folds",
    "stratified_split",
]

logger = logging.getLogger(__name__)

# File suffix -> reader kind. ``.json`` is read as JSON Lines, or as one JSON array of objects if it starts with "[".
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
# Accepted stems of the dev split's file or folder, in order of preference.
DEV_NAMES = ("dev", "validation", "valid", "val")
_SHOWN = 5  # how many line numbers a message lists before "..."


@dataclass
class Split:
    """One split of a data set, after reading and validation.

    Attributes:
        name: ``"train"``, ``"dev"``, ``"test"`` or any other name (e.g. ``"predict"``).
        texts: Stripped, non-empty texts.
        labels: One label name per text, a list of names per text (multi-label), or None (unlabelled data).
        source: The file or folder read, or ``"<DataFrame>"``, ``"<list>"``, ``"<dict>"``.
        locations: Where each row came from (line number, DataFrame index, or file path), for messages.
        location_kind: What ``locations`` hold: ``"line"``, ``"row"``, ``"item"`` or ``"file"``.
        held_out: The rows were held out of another split by :func:`stratified_split` (not read as they are).
    """

    name: str
    texts: list[str] = field(repr=False)
    labels: list[str] | list[list[str]] | None = field(repr=False)
    source: str
    locations: list[Any] | None = field(default=None, repr=False)
    location_kind: str = field(default="row", repr=False)
    held_out: bool = field(default=False, repr=False)

    def __len__(self) -> int:
        return len(self.texts)

    def where(self, i: int) -> str:
        """Human-readable origin of row ``i``, e.g. ``"line 12"`` or ``"file data/train/pos/3.txt"``."""
        loc = i if self.locations is None else self.locations[i]
        return f"{self.location_kind} {loc}"

    def subset(self, indices: Sequence[int], name: str | None = None) -> Split:
        """A new split holding the rows at ``indices`` (in that order)."""
        return Split(
            name=name or self.name,
            texts=[self.texts[i] for i in indices],
            labels=None if self.labels is None else [self.labels[i] for i in indices],
            source=self.source,
            locations=None if self.locations is None else [self.locations[i] for i in indices],
            location_kind=self.location_kind,
        )


@dataclass
class DatasetSplits:
    """The splits of one data set and the label map built from its training labels."""

    train: Split
    dev: Split | None
    test: Split | None
    label_map: LabelMap
    # Unlabelled texts of the kind the model will read (a start from label names trains on short templated sentences
    # and a few pool rows): the automatic recipe measures text lengths over them too, so max_length fits the texts.
    pool: list[str] | None = None


# ====================================================================================================== public API


def load_dataset(
    data: Any,
    *,
    dev: Any = None,
    test: Any = None,
    config: DataConfig | None = None,
    **overrides: Any,
) -> DatasetSplits:
    """Read a data set, split off dev/test where they are missing, and build the label map.

    Args:
        data: A folder with ``train.*`` and optionally ``dev.*``/``validation.*`` and ``test.*`` files (csv, tsv,
            jsonl); a folder-per-class folder (``DIR/train/<label>/*.txt`` + ``DIR/test/...``, or
            ``DIR/<label>/*.txt``); one CSV/TSV/JSONL file; a pandas DataFrame; a list of ``(text, label)`` pairs; or a
            ``{"text": [...], "label": [...]}`` dict.
        dev: Explicit dev data (any form ``data`` accepts except folders of splits); overrides a dev file in ``data``.
        test: Explicit test data; overrides a test file in ``data``.
        config: How to read and split; defaults to ``DataConfig()``.
        **overrides: ``DataConfig`` fields replacing those of ``config``, e.g. ``text_column="sentence"``.

    Returns:
        The splits and the :class:`LabelMap` of the training labels. Without a dev split, ``dev_size`` of the
        training rows are held out (stratified, seeded by ``split_seed``); without a test split, ``test_size``
        (0 keeps no test split).

    Raises:
        DataError: for unusable input; the message names the file, line and fix.
        ConfigError: for an unknown override.
    """
    config = _resolve_config(config, overrides)
    with _permission_errors_named():
        train, found_dev, found_test = _read_layout(data, config)
        dev_split = read_split(dev, "dev", config) if dev is not None else found_dev
        test_split = read_split(test, "test", config) if test is not None else found_test

    if len(train) == 0:
        raise DataError(f"{train.source}: no usable training rows (every row was empty or dropped)")
    try:
        label_map = LabelMap.from_labels(train.labels, multi_label=config.multi_label)
    except DataError as exc:
        raise DataError(f"{train.source}: {exc}") from None
    if len(label_map) < 2:
        raise DataError(
            f"{train.source}: every training row has the label {label_map.names[0]!r}; a classifier needs at least "
            f"two classes. Check that --label-column (now {config.label_column!r}) names the label column."
        )

    held_out = 0.0
    if test_split is None and config.test_size > 0:
        train, test_split = stratified_split(train, config.test_size, config.split_seed, names=("train", "test"))
        held_out = config.test_size
    if dev_split is None:
        # dev_size is a fraction of the original training rows, so rescale it after the test rows are gone.
        fraction = config.dev_size / (1.0 - held_out)
        train, dev_split = stratified_split(train, fraction, config.split_seed, names=("train", "dev"))

    train_texts = set(train.texts)
    for split in (dev_split, test_split):
        if split is None:
            continue
        if split.labels is None:
            raise DataError(f"{split.source}: the {split.name} split has no labels; it is needed for evaluation")
        label_map.check_known(split.labels, split.name, split.source, where=split.where)
        leaked = sum(t in train_texts for t in split.texts)
        if leaked:
            warnings.warn(
                f"{split.source}: {leaked} {split.name} text(s) also occur in the training data; "
                f"{split.name} scores will be optimistic. Remove them from one of the files.",
                DataWarning,
                stacklevel=2,
            )
    return DatasetSplits(train=train, dev=dev_split, test=test_split, label_map=label_map)


def read_split(
    source: Any, name: str = "train", config: DataConfig | None = None, require_labels: bool = True
) -> Split:
    """Read one split from a file, a class-folder directory, or in-memory data.

    Args:
        source: A CSV/TSV/JSONL path, a ``DIR/<label>/*.txt`` folder, a DataFrame, a list of ``(text, label)``
            pairs (or of plain texts when ``require_labels`` is False), a column dict, or a :class:`Split`.
        name: The split's name, used in messages.
        config: Column names, encoding, multi-label parsing, strictness.
        require_labels: Raise if the label column is missing; when False a missing column gives ``labels=None``.

    Raises:
        DataError: for unusable input.
    """
    config = config or DataConfig()
    if isinstance(source, Split):
        return dataclasses.replace(source, name=name)
    with _permission_errors_named():
        return _read_split(source, name, config, require_labels)


def _read_split(source: Any, name: str, config: DataConfig, require_labels: bool) -> Split:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_symlink() and not path.exists():
            raise DataError(f"{path}: a symbolic link that points nowhere (or, through other links, to itself); "
                            "point it at the data file")
        if not path.exists():
            raise DataError(f"{path}: no such file or directory (relative paths start at {Path.cwd()})")
        if path.is_dir():
            return _read_class_folders(path, name, config)
        if not path.is_file():  # reading a named pipe or a device would wait for ever
            raise DataError(f"{path}: not a regular file (a named pipe, socket or device); save the data to a file "
                            "first")
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(
                f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; "
                f"save the data as .csv, .tsv or .jsonl (supported: {sorted(SUFFIXES)})"
            )
        if kind == "jsonl":
            return _read_jsonl(path, name, config, require_labels)
        return _read_table(path, name, config, require_labels, delimiter="," if kind == "csv" else "\t")
    if _is_dataframe(source):
        return _read_dataframe(source, name, config, require_labels)
    if isinstance(source, dict):
        return _read_column_dict(source, name, config, require_labels)
    if isinstance(source, (list, tuple)):
        return _read_list(source, name, config, require_labels)
    raise DataError(
        f"cannot read {name} data of type {type(source).__name__}; pass a file path, a folder, a pandas DataFrame, "
        "a list of (text, label) pairs or a {'text': [...], 'label': [...]} dict"
    )


def read_texts(source: Any, config: DataConfig | None = None) -> list[str]:
    """Read texts to classify: a ``.txt`` file (one text per line), a CSV/TSV/JSONL text column, or in-memory data.

    Blank lines and empty texts are dropped with a :class:`DataWarning` (a :class:`DataError` when
    ``config.strict``). Labels, if present, are ignored.
    """
    return read_unlabelled(source, "predict", config).texts


def read_unlabelled(source: Any, name: str = "predict", config: DataConfig | None = None) -> Split:
    """The texts of ``source`` as a :class:`Split` without labels (their lines in ``locations``): a ``.txt`` file
    holds one text per line; any other source is read as :func:`read_split` reads it, with the label column, if
    any, ignored (so a damaged or empty label can never block texts that are only to be classified or chosen)."""
    config = config or DataConfig()
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".txt" and Path(source).is_file():
        path = Path(source)
        lines = _decode(path, config).split("\n")
        texts = [line.strip() for line in lines]
        if lines and not lines[-1].strip():
            texts.pop()  # the newline that ends the last line does not start an empty text
        return _build_split(name, str(path), texts, None, list(range(1, len(texts) + 1)), "line", config,
                            require_labels=False)
    config = dataclasses.replace(config, label_column="\0ignored-label")  # a column no file has
    return read_split(source, name, config, require_labels=False)


def stratified_split(
    split: Split, fraction: float, seed: int, names: tuple[str, str] = ("train", "dev")
) -> tuple[Split, Split]:
    """Hold out ``fraction`` of ``split``'s rows, stratified by label, reproducibly for a given ``seed``.

    Single-label data is stratified on the label; multi-label data on each row's first label, falling back to a
    random split (with a :class:`DataWarning`) when that is impossible; unlabelled data is split at random. Both
    parts keep the original row order.

    Args:
        split: The rows to divide.
        fraction: Share of rows held out, in (0, 1); the held-out size is ``ceil(fraction * len(split))``.
        seed: Random seed (``random_state`` of scikit-learn's ``train_test_split``).
        names: Names of the kept and the held-out part.

    Returns:
        ``(kept, held_out)``.

    Raises:
        DataError: if a class has a single example, or a part would be smaller than the number of classes.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = len(split)
    n_held = math.ceil(fraction * n)
    if n_held < 1 or n - n_held < 1:
        raise DataError(
            f"{split.source}: {n} row(s) are too few to hold out {fraction:.0%} as {names[1]}; "
            f"add rows or provide a {names[1]} file"
        )
    keys = _stratify_keys(split, n_held, names)
    indices = np.arange(n)
    kept, held = train_test_split(indices, test_size=n_held, random_state=seed, shuffle=True, stratify=keys)
    held_out = dataclasses.replace(split.subset(np.sort(held).tolist(), names[1]), held_out=True)
    return split.subset(np.sort(kept).tolist(), names[0]), held_out


def fold_keys(split: Split) -> list[str]:
    """The label each row is stratified on: its label, or a multi-label row's first label ("" for none)."""
    return [(labels[0] if labels else "") if isinstance(labels, list) else labels for labels in split.labels]


def stratified_folds(split: Split, k: int, seed: int, names: tuple[str, str] = ("train", "held_out"),
                     stacklevel: int = 1) -> list[tuple[Split, Split]]:
    """``k`` (kept, held-out) pairs of ``split`` for k-fold cross-validation, stratified by label, reproducibly.

    Single-label rows are stratified on the label, multi-label rows on their first label. When the smallest class
    has fewer than ``k`` rows the folds are cut at random instead, with a :class:`DataWarning` (some folds will not
    see that class; the warning names the caller, or with ``stacklevel=2`` the caller's caller). ``split`` must hold
    at least ``k`` labelled rows. Both parts keep the original row order.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    keys = fold_keys(split)
    label, smallest = Counter(keys).most_common()[-1]
    rows, seed = np.zeros(len(keys)), seed % 2**32
    if smallest < k:
        warnings.warn(f"{split.source}: class {label!r} has {smallest} row(s), fewer than the {k} folds; the folds "
                      "are not stratified (some folds will not see that class)", DataWarning,
                      stacklevel=stacklevel + 1)
        folds = KFold(k, shuffle=True, random_state=seed).split(rows)
    else:
        folds = StratifiedKFold(k, shuffle=True, random_state=seed).split(rows, keys)
    return [(split.subset(kept.tolist(), names[0]), split.subset(held.tolist(), names[1])) for kept, held in folds]


# ====================================================================================================== the dataset


class TextClassificationDataset(Dataset):
    """Tokenized texts (unpadded) and label ids, tokenized once up front.

    Token ids live in one flat ``int32`` array with row offsets, so memory is about 4 bytes per token and
    ``__getitem__`` is a slice. Padding is the collate function's job.

    Args:
        texts: The texts.
        labels: Label names per text (label lists for multi-label), or None for unlabelled data.
        tokenizer: A Hugging Face tokenizer (fast tokenizers count truncation without a second pass).
        max_length: Maximum tokens per text, special tokens included; longer texts are truncated.
        label_map: Maps names to ids; built from ``labels`` when None.
        batch_size: Texts per tokenizer call (bounds peak memory, keeps the Rust tokenizer busy).

    Attributes:
        lengths: ``int64`` array of token counts per row (after truncation).
        labels: ``int64`` label ids ``[n]``, ``float32`` multi-hot ``[n, num_labels]``, or None.
        num_truncated: Rows whose text was longer than ``max_length`` tokens.
        label_map: The label map used (None for unlabelled data without one).
    """

    def __init__(
        self,
        texts: Sequence[str],
        labels: Sequence[Any] | None,
        tokenizer: Any,
        max_length: int,
        label_map: LabelMap | None = None,
        batch_size: int = 2048,
    ) -> None:
        self.texts = list(texts)
        self.max_length = int(max_length)
        self._encode_labels(labels, label_map)

        flat, self.lengths, self.num_truncated = _tokenize(tokenizer, self.texts, self.max_length, batch_size)
        # Python ints index a tensor fastest; one list of n+1 ints is small next to the token array.
        self._offsets = offsets(self.lengths).tolist()
        self._input_ids = torch.from_numpy(flat)
        if self.num_truncated:
            logger.info("%d of %d texts are longer than max_length=%d tokens and were truncated",
                        self.num_truncated, len(self.texts), self.max_length)

    def _encode_labels(self, labels: Sequence[Any] | None, label_map: LabelMap | None) -> None:
        """Set ``labels`` (ids, or multi-hot rows for multi-label data) and ``label_map`` (built when None)."""
        self.labels: np.ndarray | None = None
        if labels is not None:
            labels = list(labels)
            if len(labels) != len(self.texts):
                raise ValueError(f"got {len(self.texts)} texts but {len(labels)} labels")
            if label_map is None:
                multi = any(isinstance(x, (list, tuple, set, frozenset)) for x in labels)
                label_map = LabelMap.from_labels(labels, multi_label=multi)
            self.labels = (label_map.encode_multi_hot(labels) if label_map.multi_label
                           else np.asarray(label_map.encode_many(labels), dtype=np.int64))
        self.label_map = label_map
        self._labels = None if self.labels is None else torch.from_numpy(self.labels)
        # Further per-row tensors ``{name: [n, ...]}`` an objective adds to every item (distillation: the teacher's
        # log-probabilities and which rows carry a real label); the collate function stacks them.
        self.columns: dict[str, torch.Tensor] = {}

    def _row(self, i: int) -> int:
        """``i`` as a row index (negative counts from the end); IndexError outside the dataset."""
        n = len(self.texts)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} rows")
        return i % n

    @classmethod
    def from_split(
        cls, split: Split, tokenizer: Any, max_length: int, label_map: LabelMap | None = None, **kwargs: Any
    ) -> TextClassificationDataset:
        """Build from a :class:`Split` (labels are encoded with ``label_map``)."""
        return cls(split.texts, split.labels, tokenizer, max_length, label_map=label_map, **kwargs)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """``{"input_ids": LongTensor [len], "labels": long scalar or float [num_labels]}`` ("labels" if labelled)."""
        i = self._row(i)
        item = {"input_ids": self._input_ids[self._offsets[i]:self._offsets[i + 1]].long()}
        if self._labels is not None:
            item["labels"] = self._labels[i]
        for name, column in self.columns.items():
            item[name] = column[i]
        return item


# No tokenizer turns more than this many characters into one token (WordPiece gives up on words over 100 and
# emits [UNK]), so the first max_length tokens of a text lie within its first max_length x CHARS_PER_TOKEN
# characters. Texts are cut there before tokenizing: a 200 MB text no longer takes the tokenizer down.
CHARS_PER_TOKEN = 256


def offsets(lengths: Sequence[int]) -> np.ndarray:
    """Where each of ``n`` consecutive runs of these lengths starts in their concatenation, and the total: ``[n + 1]``
    ``int64``, so run ``i`` is ``[offsets[i], offsets[i + 1])``."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def bounded_texts(texts: Sequence[str], max_tokens: int) -> tuple[list[str], int]:
    """``texts`` cut to the characters that can hold their first ``max_tokens`` tokens, and how many were cut."""
    limit = max_tokens * CHARS_PER_TOKEN
    cut = sum(len(text) > limit for text in texts)
    return ([text[:limit] for text in texts] if cut else list(texts)), cut


def _tokenize(
    tokenizer: Any, texts: list[str], max_length: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokenize in batches; return flat int32 ids, per-row lengths and the number of truncated rows."""
    chunks: list[np.ndarray] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    truncated = 0
    common = dict(padding=False, return_attention_mask=False, return_token_type_ids=False)
    for start in range(0, len(texts), batch_size):
        batch, _ = bounded_texts(texts[start:start + batch_size], max_length)
        if getattr(tokenizer, "is_fast", False):
            # A fast tokenizer encodes the whole text anyway; returning the overflow as extra rows is how we learn
            # which texts were cut, without encoding anything twice.
            enc = tokenizer(batch, truncation=True, max_length=max_length, return_overflowing_tokens=True, **common)
            mapping = np.asarray(enc["overflow_to_sample_mapping"])
            firsts = np.flatnonzero(np.r_[True, mapping[1:] != mapping[:-1]]) if len(mapping) else mapping
            if len(firsts) != len(batch):
                raise RuntimeError(f"tokenizer returned {len(firsts)} rows for {len(batch)} texts")
            pieces = np.diff(np.r_[firsts, len(mapping)])
            truncated += int((pieces > 1).sum())
            rows = [enc["input_ids"][j] for j in firsts.tolist()]
        else:
            rows = tokenizer(batch, truncation=False, **common)["input_ids"]
            long_rows = [j for j, row in enumerate(rows) if len(row) > max_length]
            truncated += len(long_rows)
            if long_rows:
                cut = tokenizer([batch[j] for j in long_rows], truncation=True, max_length=max_length, **common)
                for j, row in zip(long_rows, cut["input_ids"]):
                    rows[j] = row
        batch_lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        lengths[start:start + len(rows)] = batch_lengths
        chunks.append(np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(batch_lengths.sum())))
    flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    return flat, lengths, truncated


# ====================================================================================================== layouts


@contextlib.contextmanager
def _permission_errors_named():
    """A folder or file this user may not read (``chmod 000``) becomes a DataError naming it."""
    try:
        yield
    except PermissionError as exc:
        raise DataError(f"{exc.filename or 'the data'}: cannot be read ({exc.strerror}); check that it is readable "
                        "by this user") from None


def _resolve_config(config: DataConfig | None, overrides: dict[str, Any]) -> DataConfig:
    config = config or DataConfig()
    if not overrides:
        return config
    valid = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"data: unknown field(s) {unknown}; valid fields: {sorted(valid)}")
    return dataclasses.replace(config, **overrides)


def _read_layout(data: Any, config: DataConfig) -> tuple[Split, Split | None, Split | None]:
    """Find train/dev/test in whatever ``data`` is: a folder of split files, class folders, or one source."""
    if not isinstance(data, (str, os.PathLike)) or not Path(data).is_dir():
        return read_split(data, "train", config), None, None
    root = Path(data)
    by_stem: dict[str, list[Path]] = {}
    for f in sorted(root.iterdir()):
        if f.is_file() and f.suffix.lower() in SUFFIXES:
            by_stem.setdefault(f.stem.lower(), []).append(f)

    def one(stems: Sequence[str]) -> Path | None:
        files = [f for stem in stems for f in by_stem.get(stem, [])]
        if len(files) > 1:
            raise DataError(f"{root}: several {stems[0]} files ({', '.join(f.name for f in files)}); keep only one")
        return files[0] if files else None

    train_file = one(["train"])
    if train_file is not None:
        dev_file, test_file = one(DEV_NAMES), one(["test"])
        return (
            read_split(train_file, "train", config),
            read_split(dev_file, "dev", config) if dev_file else None,
            read_split(test_file, "test", config) if test_file else None,
        )
    if (root / "train").is_dir():
        dev_dir = next((root / n for n in DEV_NAMES if (root / n).is_dir()), None)
        return (
            _read_class_folders(root / "train", "train", config),
            _read_class_folders(dev_dir, "dev", config) if dev_dir else None,
            _read_class_folders(root / "test", "test", config) if (root / "test").is_dir() else None,
        )
    if any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir()):
        return _read_class_folders(root, "train", config), None, None
    present = ", ".join(sorted(p.name for p in root.iterdir())[:10]) or "nothing"
    broken = sorted(p.name for p in root.iterdir() if p.is_symlink() and not p.exists())
    if broken:
        raise DataError(f"{root}: {', '.join(broken)} is a symbolic link that points nowhere (or, through other "
                        "links, to itself); point it at the data file")
    raise DataError(
        f"{root}: no training data found (it holds: {present}). Expected train.csv / train.tsv / train.jsonl "
        "(plus optional dev.* and test.*), class folders train/<label>/*.txt, or class folders <label>/*.txt"
    )


# ====================================================================================================== readers


# Files that are not text, by their first bytes: what users save with a .csv name by mistake.
BINARY_SIGNATURES = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0", b"%PDF", b"\x1f\x8b", b"SQLite format 3")


def _binary_kind(data: bytes) -> str:
    if data.startswith(b"PK\x03\x04"):
        return "a zip archive; .xlsx and .docx files are zip archives too"
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        return "an old Office file such as .xls"
    names = {b"%PDF": "a PDF", b"\x1f\x8b": "a gzip archive", b"SQLite format 3": "an SQLite database"}
    return next((v for k, v in names.items() if data.startswith(k)), "it holds NUL bytes")


# A text file with a few NUL bytes is damaged text (a bad export, a crash while writing); one full of control bytes is
# not text at all. Above this share of control characters in the first 4 KiB (and more than a handful), the message
# says binary file.
BINARY_CONTROL_SHARE = 0.01
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f]")


def _refuse_nul(path: Path, data: bytes | str) -> None:
    """Refuse a file holding NUL bytes (``data``: its bytes, or its text when decoded from UTF-16/32), naming the line
    of the first wherever it is, and the fix.

    The check once read only the first 4 KiB: a NUL there made the file "a binary file" with no line to look at, and
    one further on went into the texts, and the model, unnoticed.
    """
    nul, newline = ("\x00", "\n") if isinstance(data, str) else (b"\x00", b"\n")
    shown, offsets, start = 5, [], 0
    while len(offsets) < shown and (start := data.find(nul, start)) >= 0:
        offsets.append(start)
        start += 1
    lines = sorted({data.count(newline, 0, offset) + 1 for offset in offsets})
    count = data.count(nul)
    more = f" ({count} in all, on line(s) {', '.join(map(str, lines))}{', ...' if count > shown else ''})" \
        if count > 1 else ""
    head = data[:4096] if isinstance(data, str) else data[:4096].decode("latin-1")
    if len(_CONTROL.findall(head)) > max(4, BINARY_CONTROL_SHARE * len(head)):
        raise DataError(f"{path}: this is a binary file, not text: line {lines[0]} holds the first of its NUL bytes "
                        f"(\\x00){more}; export the data as CSV, TSV or JSONL (in Excel: Save As, CSV UTF-8)")
    raise DataError(f"{path}: line {lines[0]} contains a NUL byte (\\x00){more}, which text data never does (a "
                    "damaged export or copy); remove the NUL bytes (e.g. tr -d '\\000' < FILE > FIXED) or export the "
                    "data again")


def _decode(path: Path, config: DataConfig) -> str:
    """Read and decode a whole file; a UTF-8 BOM is dropped, a wrong encoding names the line and the option."""
    try:
        data = path.read_bytes()
    except OSError as exc:  # permissions, a folder that vanished, an I/O error
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); check that the file is readable by this "
                        "user") from None
    encoding = config.encoding
    # UTF-16/32 text holds NUL bytes: recognised by the encoding asked for, or by its byte order mark
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")) or data.startswith((b"\xff\xfe", b"\xfe\xff"))
    if not wide and data.startswith(BINARY_SIGNATURES):
        raise DataError(f"{path}: this is a binary file ({_binary_kind(data)}), not text; export the data as CSV, "
                        "TSV or JSONL (in Excel: Save As, CSV UTF-8)")
    if not wide and b"\x00" in data:
        _refuse_nul(path, data)
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # Excel and Notepad write a BOM; it must not end up in the first column name
    elif not wide and data.startswith(codecs.BOM_UTF8):
        # A UTF-8 byte order mark says how the file is encoded, whatever the setting: a model trained on GBK files
        # (whose saved reading settings say gbk) still reads the UTF-8 OUTPUT/data/*.csv its own run wrote.
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
        if wide and "\x00" in text:  # a NUL character in UTF-16/32 text: the same damage, counted in characters
            _refuse_nul(path, text)
        return text
    except UnicodeDecodeError as exc:
        # utf-8-sig reports offsets after the BOM it skipped; the message counts bytes of the file
        start = exc.start + (len(codecs.BOM_UTF8) if encoding == "utf-8-sig" and data.startswith(codecs.BOM_UTF8)
                             else 0)
        line = data.count(b"\n", 0, start) + 1
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = "the file starts with a UTF-16 byte order mark: pass --encoding utf-16"
        else:
            hint = (
                "pass the file's encoding with --encoding (DataConfig.encoding), e.g. --encoding gbk for Chinese text "
                "saved by Excel on Windows, or re-save the file as UTF-8"
            )
        raise DataError(
            f"{path}: line {line} is not valid {config.encoding} (byte {data[start:start + 1]!r} at offset "
            f"{start}); {hint}"
        ) from None


def _read_table(path: Path, name: str, config: DataConfig, require_labels: bool, delimiter: str) -> Split:
    """CSV (RFC 4180 quoting, multi-line fields allowed) or TSV (no quoting: one row per line)."""
    text = _decode(path, config)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; it needs a header line (e.g. text,label) and data rows")
    records = _csv_records(path, text, delimiter) if delimiter == "," else _tsv_records(text)
    header_line, _, header = next(records)
    header = [h.strip() for h in header]
    text_idx = _column_index(header, config.text_column, "text", path, header_line)
    label_idx = None
    if config.label_column in header:
        label_idx = _column_index(header, config.label_column, "label", path, header_line)
    elif require_labels:
        _column_index(header, config.label_column, "label", path, header_line)

    fmt = "CSV" if delimiter == "," else "TSV"
    texts: list[str] = []
    labels: list[Any] = []
    lines: list[int] = []
    for start, end, row in records:
        if len(row) != len(header):
            span = f" (the record runs from line {start} to line {end}: is a quote on line {start} unclosed?)" \
                if end > start else ""
            fix = ("TSV has no quoting: remove tab characters from the text, or save the file as CSV"
                   if fmt == "TSV" else 'quote fields that contain commas, e.g. "a, b",label')
            raise DataError(
                f"{path}: line {start}: expected {len(header)} fields ({','.join(header)}) but found {len(row)}"
                f"{span}; {fix}"
            )
        texts.append(row[text_idx])
        lines.append(start)
        if label_idx is not None:
            label = row[label_idx]
            if "\n" in label or "\r" in label:
                raise DataError(
                    f"{path}: line {start}: the {config.label_column!r} field spans lines {start}-{end}; a quote "
                    f"opened on line {start} is probably never closed. Close it, or double quotes inside a quoted "
                    'field ("")'
                )
            labels.append(label)
    if not texts:
        raise DataError(f"{path}: line {header_line} is a header but the file has no data rows")
    return _build_split(name, str(path), texts, labels if label_idx is not None else None, lines, "line", config,
                        require_labels)


def _csv_records(path: Path, text: str, delimiter: str):
    """Yield ``(first_line, last_line, fields)`` per non-blank CSV record, with editor line numbers."""
    # Long documents exceed the default 128 KiB field limit; an unclosed quote is still caught at end of file.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    previous = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            start = previous + 1
            if "end of data" in str(exc) or reader.line_num > start:
                detail = (f"a quoted field that opens on line {start} is never closed (the quote runs to line "
                          f"{reader.line_num})")
            else:
                detail = f"malformed CSV ({exc})"
            raise DataError(
                f"{path}: line {start}: {detail}. Close the quote, or double any quote inside a quoted field "
                '("" instead of ")'
            ) from None
        start, previous = previous + 1, reader.line_num
        if row:  # csv yields [] for blank lines
            yield start, previous, row


def _tsv_records(text: str):
    """Yield ``(line, line, fields)`` per non-blank TSV line."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield number, number, line.split("\t")


def _column_index(header: list[str], column: str, role: str, path: Path, line: int) -> int:
    if header.count(column) > 1:  # which of the two columns holds the labels is anyone's guess
        where = ", ".join(str(i + 1) for i, name in enumerate(header) if name == column)
        raise DataError(f"{path}: line {line} (header) names the {role} column {column!r} more than once (columns "
                        f"{where}); rename one of them, or pick another with --{role}-column NAME")
    if column in header:
        return header.index(column)
    raise DataError(
        f"{path}: line {line} (header) has no {role} column {column!r}; its columns are {header}. "
        f"Name the {role} column with --{role}-column NAME (DataConfig.{role}_column), or add a header line"
    )


def _read_jsonl(path: Path, name: str, config: DataConfig, require_labels: bool) -> Split:
    """JSON Lines (one object per line); a ``.json`` file holding one array of objects is accepted too."""
    text = _decode(path, config)
    if not text.strip():
        raise DataError(f'{path}: the file is empty; it needs one JSON object per line, e.g. {{"text": "...", '
                        f'"label": "..."}}')
    if text.lstrip().startswith("{") and "\n" in text.strip():  # maybe one pretty-printed object, not JSONL
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            example = f'{{"{config.text_column}": "...", "{config.label_column}": "..."}}'
            raise DataError(f"{path}: the file holds one JSON object spread over several lines; expected one object "
                            f"per line (JSON Lines: {example}) or an array of such objects")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        records = list(enumerate(items, start=1))
        kind = "item"
    else:
        records = []
        kind = "line"
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}: line {number}: not valid JSON ({exc.msg}, column {exc.colno}); every line must be one "
                    f'JSON object such as {{"{config.text_column}": "...", "{config.label_column}": "..."}}'
                ) from None

    texts, labels, lines = [], [], []
    has_labels = False
    for number, obj in records:
        if not isinstance(obj, dict):
            raise DataError(
                f"{path}: {kind} {number}: expected a JSON object with keys {config.text_column!r} and "
                f"{config.label_column!r}, got {type(obj).__name__}"
            )
        if config.text_column not in obj:
            raise DataError(
                f"{path}: {kind} {number}: no key {config.text_column!r} (keys: {sorted(obj)}); name the text key "
                "with --text-column NAME (DataConfig.text_column)"
            )
        if config.label_column in obj:
            has_labels = True
        elif require_labels:
            raise DataError(
                f"{path}: {kind} {number}: no key {config.label_column!r} (keys: {sorted(obj)}); name the label key "
                "with --label-column NAME (DataConfig.label_column)"
            )
        texts.append(obj[config.text_column])
        labels.append(obj.get(config.label_column))
        lines.append(number)
    return _build_split(name, str(path), texts, labels if has_labels else None, lines, kind, config, require_labels)


def _read_class_folders(root: Path, name: str, config: DataConfig) -> Split:
    """``root/<label>/*.txt``: one example per file, the folder name is its label."""
    if not root.is_dir():
        raise DataError(f"{root}: no such directory")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{root}: is a folder without class sub-folders; pass a data file (.csv/.tsv/.jsonl), or a folder laid "
            f"out as {root}/<label>/*.txt, or load a folder of train/dev/test files with load_dataset"
        )
    texts, labels, files = [], [], []
    for class_dir in class_dirs:
        found = sorted(f for f in class_dir.iterdir() if f.is_file() and f.suffix.lower() == ".txt")
        if not found:
            warnings.warn(f"{class_dir}: class folder holds no .txt files; it was skipped", DataWarning, stacklevel=3)
        for f in found:
            texts.append(_decode(f, config))
            labels.append(class_dir.name)
            files.append(str(f))
    if not texts:
        listed = ", ".join(d.name for d in class_dirs[:10]) or "no sub-folders"
        raise DataError(
            f"{root}: no .txt files found in its class folders ({listed}); the folder-per-class layout is "
            f"{root}/<label>/<any name>.txt with one text per file"
        )
    return _build_split(name, str(root), texts, labels, files, "file", config, require_labels=True)


def _is_dataframe(obj: Any) -> bool:
    # Duck typing keeps pandas an optional dependency: never import it just to check a type.
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns") and hasattr(obj, "index")


def _read_dataframe(df: Any, name: str, config: DataConfig, require_labels: bool) -> Split:
    columns = [str(c) for c in df.columns]
    for column, role in ((config.text_column, "text"), (config.label_column, "label")):
        if column not in df.columns and (role == "text" or require_labels):
            raise DataError(
                f"<DataFrame>: no {role} column {column!r}; its columns are {columns}. "
                f"Pass {role}_column=NAME (--{role}-column NAME)"
            )
    labels = df[config.label_column].tolist() if config.label_column in df.columns else None
    return _build_split(name, "<DataFrame>", df[config.text_column].tolist(), labels, list(df.index), "row", config,
                        require_labels)


def _read_column_dict(data: dict, name: str, config: DataConfig, require_labels: bool) -> Split:
    if config.text_column not in data:
        raise DataError(f"<dict>: no key {config.text_column!r} (keys: {sorted(map(str, data))}); pass text_column=")
    if config.label_column not in data and require_labels:
        raise DataError(f"<dict>: no key {config.label_column!r} (keys: {sorted(map(str, data))}); pass label_column=")
    texts = list(data[config.text_column])
    labels = list(data[config.label_column]) if config.label_column in data else None
    if labels is not None and len(labels) != len(texts):
        raise DataError(f"<dict>: {len(texts)} texts but {len(labels)} labels; the two lists must have equal length")
    return _build_split(name, "<dict>", texts, labels, None, "item", config, require_labels)


def _read_list(items: Sequence[Any], name: str, config: DataConfig, require_labels: bool) -> Split:
    texts, labels = [], []
    for i, item in enumerate(items):
        if isinstance(item, str) and not require_labels:
            texts.append(item)
            labels.append(None)
        elif isinstance(item, dict):
            if config.text_column not in item or (require_labels and config.label_column not in item):
                raise DataError(f"<list>: item {i}: expected keys {config.text_column!r} and {config.label_column!r}, "
                                f"got {sorted(map(str, item))}")
            texts.append(item[config.text_column])
            labels.append(item.get(config.label_column))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            texts.append(item[0])
            labels.append(item[1])
        else:
            raise DataError(f"<list>: item {i} is {item!r}; expected a (text, label) pair")
    unlabeled = all(label is None for label in labels)
    return _build_split(name, "<list>", texts, None if unlabeled and not require_labels else labels, None, "item",
                        config, require_labels)


# ====================================================================================================== validation


def _build_split(
    name: str,
    source: str,
    texts: list[Any],
    labels: list[Any] | None,
    locations: list[Any] | None,
    kind: str,
    config: DataConfig,
    require_labels: bool,
) -> Split:
    """Strip texts, drop empty ones, parse labels, flag conflicting duplicates; return a validated split."""
    locations = list(range(len(texts))) if locations is None else locations

    def where(i: int) -> str:
        return f"{kind} {locations[i]}"

    cleaned = []
    for i, value in enumerate(texts):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = ""
        if not isinstance(value, str):
            raise DataError(
                f"{source}: {where(i)}: the text is a {type(value).__name__} ({value!r}), not a string; check that "
                f"--text-column (now {config.text_column!r}) names the text column"
            )
        cleaned.append(value.strip())

    empty = [i for i, t in enumerate(cleaned) if not t]
    if empty:
        message = f"{source}: {len(empty)} row(s) with an empty or whitespace-only text ({_first(empty, where)})"
        if config.strict:
            raise DataError(message + "; remove those rows (strict mode is on)")
        warnings.warn(message + "; they were dropped", DataWarning, stacklevel=3)
    keep = [i for i, t in enumerate(cleaned) if t]

    parsed: list[Any] | None = None
    if labels is None:
        if require_labels:
            raise DataError(f"{source}: no labels found; the {name} split needs a {config.label_column!r} column")
    else:
        parsed = []
        missing = []
        for i in keep:
            try:
                label = _parse_label(labels[i], config)
            except DataError as exc:
                raise DataError(f"{source}: {where(i)}: {exc}") from None
            if label is None:
                missing.append(i)
            parsed.append(label)
        if missing:
            raise DataError(
                f"{source}: {len(missing)} row(s) have no label in {config.label_column!r} "
                f"({_first(missing, where)}); fill in the label or remove those rows"
            )

    split = Split(name, [cleaned[i] for i in keep], parsed, source, [locations[i] for i in keep], kind)
    if parsed is not None:
        _check_conflicts(split, config)
    return split


def _parse_label(value: Any, config: DataConfig) -> str | list[str] | None:
    """One row's label (a name) or label list (multi-label); None when missing."""
    if config.multi_label:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, str):
            parts: list[Any] = value.split(config.label_separator)
        elif isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
            parts = list(value)
        else:
            parts = [value]
        names = [canonical_label(p) for p in parts if not (isinstance(p, str) and not p.strip())]
        return list(dict.fromkeys(names)) or None  # dedupe, keep order
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        raise DataError(f"label {value!r} is a list; for multi-label data set multi_label=True (--multi-label)")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return canonical_label(value)


def _check_conflicts(split: Split, config: DataConfig) -> None:
    """Warn (or raise, in strict mode) about texts that occur with different labels; exact duplicates are fine."""
    first: dict[str, tuple[Any, int]] = {}
    conflicts: list[tuple[int, int]] = []
    conflicted: set[str] = set()
    for j, (text, label) in enumerate(zip(split.texts, split.labels)):
        key = frozenset(label) if isinstance(label, list) else label
        seen = first.setdefault(text, (key, j))
        if seen[0] != key and text not in conflicted:
            conflicted.add(text)
            conflicts.append((seen[1], j))
    if not conflicts:
        return
    a, b = conflicts[0]
    message = (
        f"{split.source}: {len(conflicts)} text(s) occur with different labels, e.g. {split.where(a)} and "
        f"{split.where(b)}: {_short(split.texts[a])!r} labelled {split.labels[a]!r} and {split.labels[b]!r}"
    )
    if config.strict:
        raise DataError(message + "; give each text one label or remove the copies (strict mode is on)")
    warnings.warn(message + "; all copies were kept", DataWarning, stacklevel=4)


def _stratify_keys(split: Split, n_held: int, names: tuple[str, str]) -> list[str] | None:
    """Labels to stratify on, or None for a random split; raise when a stratified split cannot be made."""
    if split.labels is None:
        return None
    multi = bool(split.labels) and isinstance(split.labels[0], list)
    keys = fold_keys(split)
    counts = Counter(keys)
    n_keep = len(keys) - n_held
    singles = [label for label, c in counts.items() if c < 2]
    too_small = n_held < len(counts) or n_keep < len(counts)
    if multi:
        if singles or too_small:
            reason = (f"label(s) {singles[:_SHOWN]} are the first label of a single row" if singles
                      else f"{n_held} {names[1]} rows are fewer than the {len(counts)} first labels")
            warnings.warn(f"{split.source}: cannot stratify the {names[1]} split on each row's first label "
                          f"({reason}); using a random split", DataWarning, stacklevel=3)
            return None
        logger.info("%s: %s split stratified on each row's first label", split.source, names[1])
        return keys
    option = f"--{names[1]} PATH ({names[1]}=...)"
    if singles:
        where = {label: split.where(keys.index(label)) for label in singles[:_SHOWN]}
        shown = ", ".join(f"{label!r} ({loc})" for label, loc in where.items())
        raise DataError(
            f"{split.source}: class(es) with a single example: {shown}"
            f"{' ...' if len(singles) > _SHOWN else ''}; a stratified {names[1]} split needs at least 2 per class. "
            f"Provide a {names[1]} file with {option}, add examples, or remove that class"
        )
    if n_held < len(counts):
        raise DataError(
            f"{split.source}: holding out {n_held} of {len(keys)} rows as {names[1]} cannot cover all {len(counts)} "
            f"classes; raise --{names[1]}-size ({names[1]}_size) to at least {len(counts) / len(keys):.2f}, or "
            f"provide a {names[1]} file with {option}"
        )
    if n_keep < len(counts):
        raise DataError(
            f"{split.source}: after holding out {n_held} {names[1]} rows only {n_keep} rows remain for "
            f"{len(counts)} classes; add training rows, lower --{names[1]}-size, or provide a {names[1]} file with "
            f"{option}"
        )
    return keys


def _first(indices: Sequence[int], where: Callable[[int], str]) -> str:
    shown = ", ".join(where(i) for i in indices[:_SHOWN])
    return shown + (", ..." if len(indices) > _SHOWN else "")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
