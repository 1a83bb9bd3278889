"""Text normalisation that keeps domain terms: a user synonym/abbreviation table and full-width folding.

A :class:`TextNormalizer` rewrites every text before it is tokenized, the same way at training time (train, dev
and test splits, ``evaluate``) and at prediction time (``Predictor`` with any backend, hence the HTTP service and
exported folders too). It does two things, both optional:

* **width folding** (``fold_width=True``): full-width ASCII letters, digits and punctuation (U+FF01-U+FF5E) become
  their half-width forms and the ideographic space U+3000 an ASCII space, so ``ＣＴ检查，１２３`` reads
  ``CT检查,123``. Unlike full NFKC it touches nothing else: CJK characters, CJK punctuation such as ``。``, circled
  digits and half-width katakana stay as they are.
* **synonym replacement** (``synonyms=``): a table of ``variant,canonical`` rows (``心梗,心肌梗死``); every variant
  in a text becomes its canonical form. Matching is longest-first and left to right in one pass over variants and
  canonical forms together, so ``心肌梗死`` (already in the text, or just inserted) is never re-replaced by a
  shorter entry such as ``梗``, and overlapping variants
  resolve the same way every time. An entry that begins (ends) with an ASCII letter or digit only matches at a
  word boundary on that side, so ``mi -> myocardial infarction`` leaves ``mind`` alone. Matching is case-sensitive.

The normaliser is saved with the model as ``normalizer.json`` (the table itself, not a path to it), referenced from
``textclf.json`` by ``"normalizer": "normalizer.json"``; :func:`textclf.model.bundle.read_normalizer` reads it back.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import DataError

# Full-width ASCII block U+FF01..U+FF5E maps to U+0021..U+007E by a fixed offset; U+3000 is the ideographic space.
_WIDTH_TABLE = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def fold_width(text: str) -> str:
    """Full-width ASCII characters and the ideographic space -> half-width; everything else unchanged."""
    return text.translate(_WIDTH_TABLE)


def read_pair_table(path: str | Path, what: str, header: tuple[str, str]) -> list[tuple[str, str, int]]:
    """Read a two-column CSV (UTF-8, BOM accepted) into ``(first, second, line)`` rows.

    A first row equal to ``header`` is skipped; blank lines and lines starting with ``#`` are ignored.

    Raises:
        DataError: the file is missing or unreadable, or a row does not hold exactly two non-empty fields
            (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} table {path} does not exist; give a CSV file of `{header[0]},{header[1]}` rows")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} table {path} cannot be read as UTF-8 ({exc}); save it as UTF-8 CSV") from None
    rows = []
    reader = csv.reader(io.StringIO(text))
    for record in reader:
        line = reader.line_num
        if not record or not "".join(record).strip() or record[0].lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in record]
        if line == 1 and tuple(c.lower() for c in cells) == header:
            continue
        if len(cells) != 2 or not all(cells):
            raise DataError(f"{path}, line {line}: expected two non-empty fields `{header[0]},{header[1]}`, got "
                            f"{record!r}; fix or delete this line")
        rows.append((cells[0], cells[1], line))
    return rows


def term_pattern(terms: list[str]) -> re.Pattern | None:
    """One regex matching any of ``terms``, longest first, with ASCII word boundaries where a term has them."""
    if not terms:
        return None
    parts = []
    for term in sorted(set(terms), key=lambda t: (-len(t), t)):  # longest first: alternation is leftmost-first
        part = re.escape(term)
        if term[0].isascii() and term[0].isalnum():
            part = r"(?<![A-Za-z0-9_])" + part
        if term[-1].isascii() and term[-1].isalnum():
            part += r"(?![A-Za-z0-9_])"
        parts.append(part)
    return re.compile("|".join(parts))


class TextNormalizer:
    """Rewrites texts before tokenization: optional width folding, then longest-match synonym replacement.

    Args:
        synonyms: ``{variant: canonical}``, or the path of a CSV of ``variant,canonical`` rows (an optional
            header ``variant,canonical`` and ``#`` comment lines are allowed). None: no replacement.
        fold_width: fold full-width ASCII and the ideographic space to half-width (also applied to the table).

    Raises:
        DataError: a table row is malformed, a variant is given two different canonical forms, or a canonical
            form is itself a variant of something else (a chain); the message names the file and line.
    """

    def __init__(self, synonyms: Mapping[str, str] | str | Path | None = None, fold_width: bool = False):
        self.fold_width = bool(fold_width)
        self.source = None
        if synonyms is None:
            rows: list[tuple[str, str, int | None]] = []
        elif isinstance(synonyms, Mapping):
            rows = [(str(k), str(v), None) for k, v in synonyms.items()]
        else:
            self.source = str(synonyms)
            rows = read_pair_table(synonyms, "synonym", ("variant", "canonical"))
        self.synonyms = self._build(rows)
        # Canonical forms are matched too (and left as they are), so a variant inside a canonical form already in
        # the text (梗 in 心肌梗死) is never replaced: longest match first protects it.
        self._pattern = term_pattern([*self.synonyms, *self.synonyms.values()])

    def _build(self, rows) -> dict[str, str]:
        where = (lambda line: f"{self.source}, line {line}") if self.source else (lambda line: "synonyms")
        table: dict[str, str] = {}
        lines: dict[str, int | None] = {}
        for variant, canonical, line in rows:
            if self.fold_width:  # texts are folded before replacement, so the table must be folded the same way
                variant, canonical = fold_width(variant), fold_width(canonical)
            if not variant or not canonical:
                raise DataError(f"{where(line)}: empty variant or canonical form; fix or delete this entry")
            if variant == canonical:
                continue  # harmless: the canonical form listed as its own variant
            if table.get(variant, canonical) != canonical:
                raise DataError(f"{where(line)}: {variant!r} is mapped to {table[variant]!r} (line "
                                f"{lines[variant]}) and to {canonical!r}; keep one of the two rows")
            table[variant], lines[variant] = canonical, line
        for variant, canonical in table.items():
            if canonical in table:
                raise DataError(f"{where(lines[variant])}: the canonical form {canonical!r} of {variant!r} is itself "
                                f"a variant of {table[canonical]!r} (line {lines[canonical]}); replacement runs "
                                f"once, so map {variant!r} straight to {table[canonical]!r}")
        return table

    @classmethod
    def from_config(cls, config) -> TextNormalizer | None:
        """The normaliser a :class:`~textclf.config.DataConfig` asks for (``synonyms``, ``fold_width``), or None."""
        if config is None or (config.synonyms is None and not config.fold_width):
            return None
        return cls(config.synonyms, fold_width=config.fold_width)

    def normalize(self, text: str) -> str:
        """One text, folded then with every variant replaced by its canonical form."""
        if self.fold_width:
            text = fold_width(text)
        if self._pattern is not None:
            text = self._pattern.sub(lambda match: self.synonyms.get(match.group(0), match.group(0)), text)
        return text

    def __call__(self, texts: str | list[str]) -> str | list[str]:
        """Normalise one text or a list of texts."""
        if isinstance(texts, str):
            return self.normalize(texts)
        return [self.normalize(text) for text in texts]

    def apply_split(self, split):
        """A copy of a :class:`~textclf.data.readers.Split` with normalised texts (labels, line numbers unchanged)."""
        import dataclasses

        return dataclasses.replace(split, texts=self(split.texts))

    # ---- saving and loading -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"fold_width": self.fold_width, "synonyms": self.synonyms, "source": self.source}

    @classmethod
    def from_dict(cls, saved: dict) -> TextNormalizer:
        """The normaliser :meth:`to_dict` describes (how :mod:`textclf.model.bundle` reads ``normalizer.json``)."""
        normalizer = cls(saved["synonyms"], fold_width=saved["fold_width"])
        normalizer.source = saved.get("source")
        return normalizer
