"""Label names, with optional descriptions: where a classifier starts when no row is labelled yet.

``labels.txt`` holds one label per line, optionally followed by a tab and a description::

    体育<TAB>体育新闻：比赛、球队、运动员
    finance<TAB>news about companies, markets and the economy
    sports

Blank lines and lines starting with ``#`` are skipped. The file is UTF-8 (a byte-order mark is fine). The names are
the classes the model predicts, in this order; a description, when given, says more about a class than its name
(the zero-shot start reads both).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .labels import LabelMap


@dataclass(frozen=True)
class LabelNames:
    """The classes, in file order, and what each means (its description, or its name when none is given)."""

    names: tuple[str, ...]
    descriptions: tuple[str | None, ...]
    source: str = "label names"

    @property
    def label_map(self) -> LabelMap:
        return LabelMap(list(self.names))

    def phrase(self, i: int) -> str:
        """The words that describe class ``i``: its description when given, else its name."""
        return self.descriptions[i] or self.names[i]

    @classmethod
    def from_list(cls, names, descriptions=None, source: str = "label names") -> LabelNames:
        """From a list of names (and optional descriptions), checked as a file is."""
        names = [str(n).strip() for n in names]
        descriptions = list(descriptions) if descriptions is not None else [None] * len(names)
        if len(descriptions) != len(names):
            raise DataError(f"{source}: {len(names)} names but {len(descriptions)} descriptions")
        _check(names, [f"item {i + 1}" for i in range(len(names))], source)
        return cls(tuple(names), tuple((d.strip() or None) if isinstance(d, str) else None for d in descriptions),
                   source)


def read_label_names(path: str | Path) -> LabelNames:
    """Read a label-names file (see the module docstring).

    Raises:
        DataError: the file is missing or not UTF-8, holds fewer than two labels, a name twice, or an empty name;
            the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; --label-names takes a text file with one label per line "
                        "(optionally label<TAB>description)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start + 1}); save the label names as UTF-8") from None
    names, descriptions, where = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, description = line.partition("\t")
        if "\0" in line:
            raise DataError(f"{path}, line {number}: holds a NUL character; is this a text file?")
        names.append(name.strip())
        descriptions.append(description.strip() or None)
        where.append(f"line {number}")
    _check(names, where, str(path))
    return LabelNames(tuple(names), tuple(descriptions), str(path))


def _check(names: list[str], where: list[str], source: str) -> None:
    empty = [w for n, w in zip(names, where) if not n]
    if empty:
        raise DataError(f"{source}, {empty[0]}: the label name is empty (a line that starts with a tab?); write "
                        "the name first, then a tab and the description")
    seen: dict[str, str] = {}
    for name, at in zip(names, where):
        if name.casefold() in seen:
            raise DataError(f"{source}, {at}: the label {name!r} is already named on {seen[name.casefold()]}; each "
                            "label once")
        seen[name.casefold()] = at
    if len(names) < 2:
        found = "no label" if not names else f"one label ({names[0]!r})"
        raise DataError(f"{source}: {found}; a classifier needs at least two labels, one per line")
