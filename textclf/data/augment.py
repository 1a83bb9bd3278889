"""Training-set augmentation (EDA-style), seeded and made once, before tokenization.

Operations (``DataConfig.augment``, comma-separated):

* ``synonym`` -- replace listed terms by another member of their synonym group, from the user's table of
  interchangeable ``word,synonym`` pairs (``DataConfig.augment_synonyms``; both directions, groups are merged);
* ``entity`` -- replace a listed entity by another value of the same type (``DataConfig.entities``: a CSV of
  ``type,value`` rows or a JSON object ``{"type": ["value", ...]}``);
* ``delete`` -- drop each token with probability ``augment_prob`` (at least one token stays);
* ``swap`` -- swap two random tokens, ``max(1, round(augment_prob x tokens))`` times.

Tokens are words for space-separated text and single characters for CJK (mixed text: each CJK character is one
token, each run of other non-space characters one token), so the same operations work for Chinese and English.

For every training row, ``augment_copies`` copies are made; each copy applies one operation, drawn at random from
those that can change that row (``synonym``/``entity`` only when the row contains a listed term). A copy identical
to its row is dropped. Copies are appended to the training split (labels and source line numbers copied), never
to dev or test, and drawn from a random generator seeded with the training seed, the row and the copy number, so
the same settings always give the same rows: a resumed run sees exactly the training set it was started on.
"""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

from ..config import parse_operations, read_json_object
from ..errors import DataError
from .normalize import read_pair_table, term_pattern

# One token: a CJK ideograph (or kana/hangul), a run of other non-space characters, or a run of whitespace.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"\s+|[{_CJK}]|[^\s{_CJK}]+")


def read_synonym_groups(path: str | Path) -> dict[str, list[str]]:
    """Read a CSV of interchangeable ``word,synonym`` pairs into ``{term: [its alternatives]}`` (groups merged)."""
    parent: dict[str, str] = {}

    def find(term: str) -> str:
        while parent.setdefault(term, term) != term:
            term = parent[term]
        return term

    for a, b, _ in read_pair_table(path, "augmentation synonym", ("word", "synonym")):
        parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for term in parent:
        groups.setdefault(find(term), []).append(term)
    return {term: sorted(t for t in members if t != term) for members in groups.values() for term in members}


def read_entities(path: str | Path) -> dict[str, list[str]]:
    """Read entity lists: a JSON object ``{type: [values]}`` or a CSV of ``type,value`` rows."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise DataError(f"entity file {path} does not exist; give a JSON object {{type: [values]}} or a CSV "
                            "of `type,value` rows")
        raw = read_json_object(path, DataError, "expected a JSON object {type: [values]}", what="entity file",
                               encoding="utf-8-sig")
        if not all(isinstance(v, list) and all(isinstance(x, str) and x.strip()
                                                                            for x in v) for v in raw.values()):
            raise DataError(f"entity file {path}: expected a JSON object mapping each entity type to a list of "
                            "non-empty strings, e.g. {\"city\": [\"Beijing\", \"Shanghai\"]}")
        entities = {str(kind): [x.strip() for x in values] for kind, values in raw.items()}
    else:
        entities = {}
        for kind, value, _ in read_pair_table(path, "entity", ("type", "value")):
            entities.setdefault(kind, []).append(value)
    owner: dict[str, str] = {}
    for kind, values in entities.items():
        for value in values:
            if owner.setdefault(value, kind) != kind:
                raise DataError(f"entity file {path}: {value!r} is listed under both {owner[value]!r} and "
                                f"{kind!r}; keep it under one type")
    return {kind: sorted(set(values)) for kind, values in entities.items()}


class Augmenter:
    """Makes augmented variants of texts with the operations of the module docstring.

    Args:
        operations: names from :data:`textclf.config.AUGMENT_OPERATIONS`.
        prob: fraction of tokens (or term occurrences) one operation changes, in (0, 1].
        synonyms: ``{term: [alternatives]}`` for ``synonym`` (see :func:`read_synonym_groups`).
        entities: ``{type: [values]}`` for ``entity`` (see :func:`read_entities`).
    """

    def __init__(self, operations, prob: float = 0.1, synonyms: dict[str, list[str]] | None = None,
                 entities: dict[str, list[str]] | None = None):
        self.operations = tuple(operations)
        self.prob = prob
        self.synonyms = {k: v for k, v in (synonyms or {}).items() if v}
        self.entity_alternatives = {value: [other for other in values if other != value]
                                    for values in (entities or {}).values() for value in values}
        self.entity_alternatives = {k: v for k, v in self.entity_alternatives.items() if v}
        self._synonym_pattern = term_pattern(list(self.synonyms))
        self._entity_pattern = term_pattern(list(self.entity_alternatives))

    def augment(self, text: str, rng: random.Random) -> str:
        """One augmented variant of ``text`` (possibly ``text`` itself when no operation can change it)."""
        choices = [op for op in self.operations
                   if (op != "synonym" or (self._synonym_pattern and self._synonym_pattern.search(text)))
                   and (op != "entity" or (self._entity_pattern and self._entity_pattern.search(text)))]
        if not choices:
            return text
        op = rng.choice(choices)
        if op == "synonym":
            return self._replace(text, self._synonym_pattern, self.synonyms, rng)
        if op == "entity":
            return self._replace(text, self._entity_pattern, self.entity_alternatives, rng)
        tokens = _TOKEN.findall(text)
        words = [i for i, token in enumerate(tokens) if not token.isspace()]
        if len(words) < 2:
            return text
        if op == "delete":
            drop = {i for i in words if rng.random() < self.prob}
            if len(drop) == len(words):  # keep at least one token
                drop.discard(rng.choice(words))
            return re.sub(r"\s{2,}", " ", "".join(t for i, t in enumerate(tokens) if i not in drop)).strip()
        for _ in range(max(1, round(self.prob * len(words)))):  # swap
            a, b = rng.sample(words, 2)
            tokens[a], tokens[b] = tokens[b], tokens[a]
        return "".join(tokens)

    def _replace(self, text: str, pattern: re.Pattern, alternatives: dict[str, list[str]],
                 rng: random.Random) -> str:
        matches = list(pattern.finditer(text))
        chosen = set(rng.sample(range(len(matches)), max(1, round(self.prob * len(matches)))))
        pieces, last = [], 0
        for j, match in enumerate(matches):
            if j in chosen:
                pieces += [text[last:match.start()], rng.choice(alternatives[match.group(0)])]
                last = match.end()
        return "".join(pieces) + text[last:]


def augmenter_from_config(config) -> Augmenter | None:
    """The :class:`Augmenter` a :class:`~textclf.config.DataConfig` asks for, or None when augmentation is off."""
    ops = parse_operations(config.augment)
    if not ops:
        return None
    synonyms = read_synonym_groups(config.augment_synonyms) if "synonym" in ops else None
    entities = read_entities(config.entities) if "entity" in ops else None
    return Augmenter(ops, config.augment_prob, synonyms, entities)


def augment_split(split, augmenter: Augmenter, copies: int, seed: int):
    """The training split with ``copies`` augmented copies of each row appended (identical copies dropped).

    Returns:
        ``(split, added)``: a new :class:`~textclf.data.readers.Split` and the number of rows added.
    """
    texts, labels = list(split.texts), None if split.labels is None else list(split.labels)
    # Copies carry the location of the row they came from, so messages and error reports name the source line.
    origin = list(split.locations) if split.locations is not None else list(range(len(split.texts)))
    locations = list(origin)
    seen = set(split.texts)
    for i, text in enumerate(split.texts):
        for k in range(copies):
            # A string seed is hashed with SHA-512 by random.seed: stable across processes and Python versions.
            new = augmenter.augment(text, random.Random(f"textclf-augment:{seed}:{i}:{k}"))
            if not new or new in seen:
                continue
            seen.add(new)
            texts.append(new)
            locations.append(origin[i])
            if labels is not None:
                labels.append(split.labels[i])
    added = len(texts) - len(split.texts)
    return dataclasses.replace(split, texts=texts, labels=labels, locations=locations), added


def augment_dataset(data, config, seed: int, log=print):
    """``data`` (a :class:`~textclf.data.readers.DatasetSplits`) with its training split augmented as ``config`` asks.

    Dev and test are returned unchanged. Returns ``data`` itself when augmentation is off.
    """
    augmenter = augmenter_from_config(config)
    if augmenter is None:
        return data
    train, added = augment_split(data.train, augmenter, config.augment_copies, seed)
    log(f"augmentation ({', '.join(augmenter.operations)}): {added} rows added to the {len(data.train)} training "
        f"rows ({config.augment_copies} copies per row requested; copies identical to an existing text dropped)")
    return dataclasses.replace(data, train=train)
