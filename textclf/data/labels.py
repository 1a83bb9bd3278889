"""Label vocabulary: the mapping between label names and the integer ids a model predicts.

A :class:`LabelMap` is built once from the training labels, saved as ``labels.json`` next to every model and used
to encode dev/test labels and decode predictions. Names are strings; integer labels (``0``, ``1``, ``10``) are
stored in their string form but sorted numerically, so ids follow the order a user expects (``2`` before ``10``).
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["LabelMap", "canonical_label", "LABELS_FILE"]

LABELS_FILE = "labels.json"

_INT_RE = re.compile(r"^[+-]?\d+$")
_SHOWN = 5  # how many examples an error message lists before "..."


def canonical_label(value: Any) -> str:
    """Return the string form of one label, or raise :class:`DataError` saying why it is unusable.

    Strings are stripped; integers (Python, NumPy, or floats with an integral value such as pandas produces for an
    int column with gaps) become ``str(int(value))``. Booleans, ``None``, NaN, empty strings and other types are
    rejected: they almost always mean a missing or mis-parsed label column.

    Raises:
        DataError: with a short reason; callers prefix the file and line.
    """
    if value is None:
        raise DataError("label is missing (None)")
    if isinstance(value, (bool, np.bool_)):
        # A True/False column is usually a parsing accident; make the user choose explicit class names.
        raise DataError(
            f"label {value!r} is a boolean; use class names or integers (e.g. 'positive'/'negative' or 1/0)"
        )
    if isinstance(value, str):
        label = value.strip()
        if not label:
            raise DataError("label is missing (empty)")
        return label
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        if math.isnan(value):
            raise DataError("label is missing (NaN)")
        if float(value).is_integer():
            return str(int(value))
        raise DataError(f"label {value!r} is a non-integer number; use class names or integer ids")
    raise DataError(f"label {value!r} has type {type(value).__name__}; expected a string or an integer")


def _is_int_name(name: str) -> bool:
    return bool(_INT_RE.match(name))


def _preview(items: Iterable[Any], limit: int = _SHOWN) -> str:
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


class LabelMap:
    """Bidirectional mapping between label names (``str``) and ids (``0..len-1``).

    Args:
        names: The label names in id order. Must be unique, non-empty strings.
        multi_label: Whether each example carries a set of labels (multi-hot targets) instead of one.

    Example:
        >>> lm = LabelMap.from_labels(["pos", "neg", "pos"])
        >>> lm.names, lm.encode("pos"), lm.decode(0)
        (['neg', 'pos'], 1, 'neg')
    """

    def __init__(self, names: Sequence[str], multi_label: bool = False) -> None:
        names = [canonical_label(n) for n in names]
        if not names:
            raise DataError("a LabelMap needs at least one label name")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(f"label names must be unique; repeated: {_preview(duplicates)}")
        self._names = names
        self._ids = {name: i for i, name in enumerate(names)}
        self.multi_label = bool(multi_label)

    @classmethod
    def from_labels(cls, labels: Iterable[Any], multi_label: bool = False) -> LabelMap:
        """Build from the training labels: sorted unique names.

        Args:
            labels: One label per example, or (``multi_label=True``) one list of labels per example.
            multi_label: Whether ``labels`` holds label lists.

        Raises:
            DataError: for a missing/boolean/NaN label, or when integer labels are mixed with names.
        """
        unique: set[str] = set()
        for label in labels:
            if multi_label:
                if isinstance(label, (str, bytes)) or not isinstance(label, Iterable):
                    raise DataError(f"multi-label data needs a list of labels per example, got {label!r}")
                unique.update(canonical_label(x) for x in label)
            else:
                unique.add(canonical_label(label))
        if not unique:
            raise DataError("no labels found: the training data is empty or has no labelled rows")
        numeric = sorted(n for n in unique if _is_int_name(n))
        named = sorted(n for n in unique if not _is_int_name(n))
        if numeric and named:
            raise DataError(
                f"labels mix integers ({_preview(numeric)}) with names ({_preview(named)}); "
                "use one kind for every row (e.g. map the integers to names, or the names to integers)"
            )
        names = sorted(numeric, key=int) if numeric else named
        return cls(names, multi_label=multi_label)

    # ------------------------------------------------------------------ container protocol
    @property
    def names(self) -> list[str]:
        """Label names in id order (a copy)."""
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, label: object) -> bool:
        try:
            return canonical_label(label) in self._ids
        except DataError:
            return False

    def knows(self, label: Any) -> bool:
        """True when every label of a row (its one label, or its label list when ``multi_label``) is in the map."""
        return all(item in self for item in (label if self.multi_label else [label]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelMap):
            return NotImplemented
        return self._names == other._names and self.multi_label == other.multi_label

    def __hash__(self) -> int:
        return hash((tuple(self._names), self.multi_label))

    def __repr__(self) -> str:
        return f"LabelMap({self._names!r}, multi_label={self.multi_label})"

    # ------------------------------------------------------------------ encode / decode
    def encode(self, label: str | int) -> int:
        """Id of one label, given as its name or its integer form (``2`` and ``"2"`` are the same label).

        Raises:
            DataError: if the label is unknown; the message lists the known labels.
        """
        name = canonical_label(label)
        try:
            return self._ids[name]
        except KeyError:
            raise DataError(f"unknown label {name!r}; known labels: {self._names}") from None

    def encode_many(self, labels: Iterable[str | int]) -> list[int]:
        """Ids of many labels (see :meth:`encode`)."""
        return [self.encode(label) for label in labels]

    def decode(self, index: int) -> str:
        """Name of the label with id ``index``."""
        index = int(index)
        if not 0 <= index < len(self._names):
            raise IndexError(f"label id {index} out of range for {len(self._names)} labels")
        return self._names[index]

    def decode_many(self, indices: Iterable[int]) -> list[str]:
        """Names of many ids (accepts any iterable of ints, e.g. a NumPy array or a list)."""
        return [self.decode(i) for i in indices]

    def encode_multi_hot(self, label_lists: Sequence[Iterable[str | int]]) -> np.ndarray:
        """Multi-hot targets for multi-label data.

        Args:
            label_lists: One iterable of labels per example.

        Returns:
            ``float32`` array of shape ``[n, num_labels]`` with 1.0 where an example has the label.
        """
        out = np.zeros((len(label_lists), len(self._names)), dtype=np.float32)
        for row, labels in enumerate(label_lists):
            if isinstance(labels, (str, bytes)):
                raise DataError(f"example {row}: expected a list of labels, got the string {labels!r}")
            for label in labels:
                out[row, self.encode(label)] = 1.0
        return out

    @property
    def id2label(self) -> dict[int, str]:
        """``{id: name}``, as Hugging Face model configs store it."""
        return dict(enumerate(self._names))

    @property
    def label2id(self) -> dict[str, int]:
        """``{name: id}``, as Hugging Face model configs store it."""
        return dict(self._ids)

    # ------------------------------------------------------------------ validation
    def check_known(
        self,
        labels: Iterable[Any],
        split_name: str,
        source: str,
        where: Callable[[int], str] | None = None,
    ) -> None:
        """Raise if a dev/test split has labels the training data never showed.

        Args:
            labels: The split's labels (label lists when ``multi_label``).
            split_name: E.g. ``"dev"``; named in the message.
            source: The split's file (or ``"<DataFrame>"``); named in the message.
            where: Optional ``row index -> "line 12"`` formatter used to point at the first occurrence.

        Raises:
            DataError: naming the unknown label(s), the split and file, and listing the known labels.
        """
        unknown: dict[str, int] = {}
        for row, label in enumerate(labels):
            for item in (label if self.multi_label else [label]):
                name = canonical_label(item)
                if name not in self._ids and name not in unknown:
                    unknown[name] = row
        if not unknown:
            return
        first = ""
        if where is not None:
            shown = list(unknown.items())[:_SHOWN]
            first = " (first at " + ", ".join(f"{name!r}: {where(row)}" for name, row in shown) + ")"
        raise DataError(
            f"{source}: the {split_name} split has label(s) that never occur in the training data: "
            f"{_preview(unknown)}{first}. Known labels: {self._names}. "
            f"Fix the label spelling, add training examples of it, or remove those rows from the {split_name} file."
        )

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"names": [...], "multi_label": bool}``."""
        return {"names": list(self._names), "multi_label": self.multi_label}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> LabelMap:
        """Inverse of :meth:`to_dict`; also accepts a Hugging Face style ``{"id2label": {...}}`` mapping."""
        if not isinstance(raw, dict):
            raise DataError(f"{source}: expected a JSON object with 'names', got {type(raw).__name__}")
        if "names" in raw:
            names = raw["names"]
        elif "id2label" in raw and isinstance(raw["id2label"], dict):
            try:
                pairs = sorted((int(k), v) for k, v in raw["id2label"].items())
            except (TypeError, ValueError):
                raise DataError(f"{source}: 'id2label' keys must be integer ids") from None
            if [k for k, _ in pairs] != list(range(len(pairs))):
                raise DataError(f"{source}: 'id2label' ids must be 0..{len(pairs) - 1} without gaps")
            names = [v for _, v in pairs]
        else:
            raise DataError(f"{source}: missing the 'names' list of labels (keys found: {sorted(raw)})")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{source}: 'names' must be a list of strings")
        try:
            return cls(names, multi_label=bool(raw.get("multi_label", False)))
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write ``labels.json``.

        Args:
            path: A ``.json`` file path, or a folder (created if needed) that receives ``labels.json``.

        Returns:
            The path of the written file.
        """
        file = _labels_file(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return file

    @classmethod
    def load(cls, path: str | Path) -> LabelMap:
        """Read a file written by :meth:`save` (``path`` is the ``.json`` file or its folder).

        Raises:
            DataError: if the file is missing or damaged; the message names the file.
        """
        file = _labels_file(path)
        if not file.is_file():
            raise DataError(f"{file}: label file not found; every saved model folder must contain {LABELS_FILE}")
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{file}: damaged label file ({exc}); restore it from the training run or re-save the model"
            ) from None
        return cls.from_dict(raw, source=str(file))


def _labels_file(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".json" else path / LABELS_FILE
