"""Label audit: find rows whose label is probably wrong, duplicates across splits, and conflicting labels.

:func:`audit` looks at a data set from three sides and returns one ranked list (:class:`AuditResult`, written as a
CSV by ``textclf audit``):

1. **Label issues** (confident learning, Northcutt et al. 2021). Every row gets an *out-of-fold* probability
   vector: the rows are cut into K stratified folds and each fold is predicted by a model that never saw it (the
   TF-IDF baseline in seconds, or a fine-tuned transformer per fold, which is K full training runs). Each class
   ``j`` gets a threshold ``t_j``: the mean probability of ``j`` over the rows labelled ``j`` (how sure the models
   are, on average, about that class's rows). A row labelled ``i`` is flagged when ``p_i < t_i`` (its given label
   is not confidently predicted) and some other class ``j`` has ``p_j >= t_j`` and ``p_j > p_i``; the suggested
   label is the most likely such ``j`` and the row's score is the margin ``p_suggested - p_given``. Multi-label
   data is audited label by label the same way (a missing or an extra label).
2. **Conflicting labels**: the same normalised text (case, width, punctuation and spaces folded) with different
   labels, in any split.
3. **Duplicates across splits** (leakage that makes dev/test scores optimistic): exact copies, copies that differ
   only after normalisation, and near duplicates with a character n-gram TF-IDF cosine >= ``near_threshold``. The
   later split's row is reported (test before dev before train) with the other copy in ``related``.

Cost: the baseline method fits K linear models (seconds up to ~50k rows); near-duplicate search compares every
dev/test row with every training row through rare n-grams only, in chunks, so memory stays bounded.
"""

from __future__ import annotations

import csv
import tempfile
import time
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["AuditResult", "AuditRow", "audit", "normalize_text", "out_of_fold_probabilities"]

METHODS = ("baseline", "transformer")
REASONS = ("label_issue", "conflicting_labels", "cross_split_duplicate", "near_duplicate")
_SPLIT_ORDER = {"train": 0, "dev": 1, "test": 2}
CSV_COLUMNS = ("rank", "split", "line", "text", "given_label", "suggested_label", "p_given", "p_suggested", "score",
               "reason", "related")


def normalize_text(text: str) -> str:
    """Fold width (NFKC: full-width ``Ａ１，`` -> ``A1,``) and case, drop punctuation, symbols and spaces."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LNM")
    return kept or folded.strip()


@dataclass
class AuditRow:
    """One flagged row. ``index`` is its position in its split; ``line`` where it is in the file."""

    split: str
    index: int
    line: Any
    text: str
    given_label: str | list[str]
    suggested_label: str | list[str] | None = None
    p_given: float | None = None
    p_suggested: float | None = None
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)
    related: list[str] = field(default_factory=list)
    similarity: float = 0.0  # of the closest copy in another split (1.0: exact)

    @property
    def is_label_problem(self) -> bool:
        return "label_issue" in self.reasons or "conflicting_labels" in self.reasons


@dataclass
class AuditResult:
    """What :func:`audit` found, ranked: label problems by score first, then duplicates by similarity.

    Attributes:
        rows: flagged rows, most suspicious first.
        thresholds: per-class confident-learning thresholds ``t_j`` (per label for multi-label data).
        probabilities: out-of-fold probabilities ``[N, C]`` per audited split name (rows in split order).
        margins: ``max_{j != given} p_j - p_given`` per audited split (the ranking score of every row, flagged or
            not; for multi-label data the largest ``|p - y|`` over labels).
        summary: counts per reason, out-of-fold accuracy, method, folds, seconds.
    """

    rows: list[AuditRow]
    thresholds: dict[str, float]
    probabilities: dict[str, np.ndarray]
    margins: dict[str, np.ndarray]
    summary: dict

    def flagged(self, split: str = "train", reason: str = "label_issue") -> set[int]:
        """Row indices of ``split`` flagged for ``reason``."""
        return {row.index for row in self.rows if row.split == split and reason in row.reasons}

    def top(self, n: int, split: str = "train") -> list[int]:
        """Indices of the ``n`` rows of ``split`` with the largest margins (most likely mislabelled), flagged or
        not: for when you can review exactly ``n`` rows."""
        return np.argsort(-self.margins[split], kind="stable")[:n].tolist()

    def to_csv(self, path: str | Path) -> Path:
        """Write the ranked rows as CSV (UTF-8, header :data:`CSV_COLUMNS`); multi-label sets are joined by ``|``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def fmt(value):
            if value is None:
                return ""
            if isinstance(value, list):
                return "|".join(value)
            if isinstance(value, float):
                return f"{value:.4f}"
            return value

        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for rank, row in enumerate(self.rows, start=1):
                writer.writerow([rank, row.split, row.line, row.text, fmt(row.given_label), fmt(row.suggested_label),
                                 fmt(row.p_given), fmt(row.p_suggested), fmt(row.score), ";".join(row.reasons),
                                 "; ".join(row.related)])
        return path

    def format_summary(self) -> str:
        s = self.summary
        counts = ", ".join(f"{reason} {s['counts'].get(reason, 0)}" for reason in REASONS)
        accuracy = s.get("out_of_fold_accuracy")
        return (f"audited {s['audited_rows']} rows of {', '.join(s['splits'])} with {s['folds']}-fold "
                f"{s['method']} ({s['seconds']:.1f} s" + (f", out-of-fold accuracy {accuracy:.4f}" if accuracy
                                                          is not None else "") + f"): {counts}")


# ================================================================================================ out-of-fold


def _fold_keys(labels: list) -> list[str]:
    return [y[0] if isinstance(y, list) else y for y in labels]


def out_of_fold_probabilities(texts: list[str], labels: list, label_map, folds: int = 5, seed: int = 42,
                              method: str = "baseline", model: str = "minilm", train_config=None,
                              work_dir: str | Path | None = None, baseline_kwargs: dict | None = None,
                              log=None) -> np.ndarray:
    """Probabilities ``[N, C]`` for every row from a model trained on the other folds (stratified K-fold).

    ``method="transformer"`` fine-tunes ``model`` with ``train_config`` once per fold under ``work_dir/fold-k``
    (a temporary folder by default): K full training runs, so only for small data or with a GPU.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    from .baseline import TfidfBaseline

    n = len(texts)
    if folds < 2:
        raise ConfigError(f"audit.folds: must be >= 2, got {folds}")
    if n < folds:
        raise DataError(f"{n} rows are too few for {folds} folds; lower --folds")
    keys = _fold_keys(labels)
    counts: dict[str, int] = defaultdict(int)
    for key in keys:
        counts[key] += 1
    if min(counts.values()) >= folds:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n), keys)
    else:  # a class smaller than K cannot appear in every fold: plain shuffled folds, no warning spam
        splitter = KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n))
    out = np.zeros((n, len(label_map)))
    temporary = None
    if method == "transformer" and work_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="textclf-audit-")
        work_dir = temporary.name
    try:
        for k, (fit_rows, held_rows) in enumerate(splitter):
            started = time.perf_counter()
            fit_texts, fit_labels = [texts[i] for i in fit_rows], [labels[i] for i in fit_rows]
            held_texts = [texts[i] for i in held_rows]
            if method == "baseline":
                clf = TfidfBaseline(**(baseline_kwargs or {})).fit(fit_texts, fit_labels, label_map=label_map)
                out[held_rows] = clf.predict_proba(held_texts)
            else:
                from .crossval import train_fold

                trainer = train_fold(fit_texts, fit_labels, label_map, Path(work_dir) / f"fold-{k + 1}", model,
                                     train_config)
                out[held_rows] = trainer.predictor().predict_proba(held_texts).astype(np.float64)
            if log is not None:  # each fold is a fit: say how far the audit is
                log(f"fold {k + 1}/{folds}: trained on {len(fit_rows)} rows, scored {len(held_rows)} "
                    f"({time.perf_counter() - started:.1f} s)")
    finally:
        if temporary is not None:
            temporary.cleanup()
    return out


# ================================================================================================ the audit


def audit(data, method: str = "baseline", folds: int = 5, *, splits: tuple[str, ...] = ("train", "dev", "test"),
          seed: int = 42, near_threshold: float | None = 0.9, model: str = "minilm", train_config=None,
          work_dir: str | Path | None = None, baseline_kwargs: dict | None = None, log=None) -> AuditResult:
    """Flag probable label errors, conflicting labels and duplicates across splits.

    Args:
        data: a :class:`~textclf.data.readers.DatasetSplits` or anything :func:`textclf.load_dataset` accepts.
        method: ``"baseline"`` (TF-IDF + linear model per fold: seconds) or ``"transformer"`` (fine-tunes
            ``model`` with ``train_config`` once per fold: K training runs).
        folds: K of the stratified K-fold that yields out-of-fold probabilities.
        splits: the labelled splits whose rows are audited for label issues (pooled into one K-fold); duplicates
            and conflicts are always searched in every split.
        seed: fold assignment seed.
        near_threshold: TF-IDF cosine at or above which two texts in different splits are near duplicates; None
            skips that search (exact and normalised copies are still found).
        model: encoder name or folder for ``method="transformer"``.
        train_config: :class:`~textclf.config.TrainConfig` of the per-fold runs (``method="transformer"``).
        work_dir: where the per-fold runs go (default: a temporary folder, removed afterwards).
        baseline_kwargs: :class:`~textclf.tools.baseline.TfidfBaseline` arguments for ``method="baseline"``.
        log: called with a line per stage and per fold (the command line prints them to stderr), or None.

    Returns:
        An :class:`AuditResult`; ``result.to_csv(path)`` writes the ranked rows.
    """
    from ..data.readers import DatasetSplits, load_dataset

    if method not in METHODS:
        raise ConfigError(f"audit.method: must be one of {METHODS}, got {method!r}")
    if near_threshold is not None and not 0.0 < near_threshold <= 1.0:
        raise ConfigError(f"audit.near_threshold: must be in (0, 1], got {near_threshold}")
    if not isinstance(data, DatasetSplits):
        data = load_dataset(data)
    available = {name: s for name, s in (("train", data.train), ("dev", data.dev), ("test", data.test))
                 if s is not None}
    unknown = [name for name in splits if name not in ("train", "dev", "test")]
    if unknown:
        raise ConfigError(f"audit.splits: unknown split(s) {unknown}; choose from train, dev, test")
    audited = [name for name in splits if name in available and available[name].labels is not None]
    if not audited:
        raise DataError(f"none of the splits {list(splits)} is present with labels; the data has "
                        f"{sorted(available)}")
    start = time.perf_counter()
    label_map = data.label_map
    rows: dict[tuple[str, int], AuditRow] = {}

    def row_for(split_name: str, i: int) -> AuditRow:
        key = (split_name, i)
        if key not in rows:
            split = available[split_name]
            label = split.labels[i] if split.labels is not None else None
            rows[key] = AuditRow(split_name, i, split.locations[i] if split.locations is not None else i,
                                 split.texts[i], label)
        return rows[key]

    # ---- 1. label issues from out-of-fold probabilities
    pooled = [(name, i) for name in audited for i in range(len(available[name]))]
    texts = [available[name].texts[i] for name, i in pooled]
    labels = [available[name].labels[i] for name, i in pooled]
    say = log or (lambda message: None)
    say(f"label issues: {folds}-fold out-of-fold probabilities for {len(texts)} rows ({method}) ...")
    probabilities = out_of_fold_probabilities(texts, labels, label_map, folds, seed, method, model, train_config,
                                              work_dir, baseline_kwargs, log=say)
    if label_map.multi_label:
        thresholds, margins, issues = _multi_label_issues(probabilities, labels, label_map)
    else:
        thresholds, margins, issues = _single_label_issues(probabilities, labels, label_map)
    for k, (suggested, p_given, p_suggested) in issues.items():
        row = row_for(*pooled[k])
        row.reasons.append("label_issue")
        row.suggested_label, row.p_given, row.p_suggested = suggested, p_given, p_suggested
        row.score = float(margins[k])

    # ---- 2. conflicting labels and 3. duplicates across splits
    say("conflicting labels and copies across splits ...")
    _find_conflicts_and_copies(available, row_for)
    if near_threshold is not None:
        say(f"near duplicates across splits (TF-IDF cosine >= {near_threshold}) ...")
        _find_near_duplicates(available, near_threshold, row_for)

    for row in rows.values():  # a conflict is certain (one of the copies is wrong): it outranks any margin
        row.score += 1.0 if "conflicting_labels" in row.reasons else 0.0
    ranked = sorted(rows.values(), key=lambda r: (not r.is_label_problem, -r.score,
                                                  -r.similarity, _SPLIT_ORDER.get(r.split, 3), r.index))
    offsets, position = {}, 0
    for name in audited:
        offsets[name] = (position, position + len(available[name]))
        position += len(available[name])
    counts = {reason: sum(reason in r.reasons for r in ranked) for reason in REASONS}
    summary = {"method": method, "folds": folds, "splits": audited, "audited_rows": len(pooled),
               "counts": counts, "seconds": time.perf_counter() - start}
    if not label_map.multi_label:
        given = np.asarray([label_map.encode(y) for y in labels])
        summary["out_of_fold_accuracy"] = float((probabilities.argmax(axis=1) == given).mean())
    return AuditResult(ranked, thresholds, {n: probabilities[a:b] for n, (a, b) in offsets.items()},
                       {n: margins[a:b] for n, (a, b) in offsets.items()}, summary)


def _single_label_issues(probabilities: np.ndarray, labels: list, label_map):
    given = np.asarray([label_map.encode(y) for y in labels])
    n, c = probabilities.shape
    thresholds = np.full(c, np.inf)  # a class without rows is never "confidently" predicted
    for j in range(c):
        mine = given == j
        if mine.any():
            thresholds[j] = probabilities[mine, j].mean()
    p_given = probabilities[np.arange(n), given]
    others = probabilities.copy()
    others[np.arange(n), given] = -np.inf
    margins = others.max(axis=1) - p_given
    # A class counts for a row when its probability reaches the class's threshold and beats the given label's (a
    # rare class has a low threshold; without the second condition it would be "suggested" while less likely).
    confident = (probabilities >= thresholds[None, :]) & (probabilities > p_given[:, None])
    confident[np.arange(n), given] = False
    candidates = np.where(confident, probabilities, -np.inf)
    issues = {}
    for k in np.flatnonzero((p_given < thresholds[given]) & confident.any(axis=1)):
        j = int(candidates[k].argmax())
        issues[int(k)] = (label_map.decode(j), float(p_given[k]), float(probabilities[k, j]))
        margins[k] = probabilities[k, j] - p_given[k]
    names = label_map.names
    return {names[j]: float(thresholds[j]) for j in range(c) if np.isfinite(thresholds[j])}, margins, issues


def _multi_label_issues(probabilities: np.ndarray, labels: list, label_map):
    """Per label, two classes (has it / lacks it) with their own thresholds: flag missing and extra labels."""
    n, c = probabilities.shape
    y = np.zeros((n, c), dtype=bool)
    for i, names in enumerate(labels):
        y[i, [label_map.encode(name) for name in names]] = True
    t_has = np.array([probabilities[y[:, j], j].mean() if y[:, j].any() else np.inf for j in range(c)])
    t_lacks = np.array([(1 - probabilities[~y[:, j], j]).mean() if (~y[:, j]).any() else np.inf for j in range(c)])
    missing = ~y & (probabilities >= t_has) & (1 - probabilities < t_lacks)
    extra = y & (probabilities < t_has) & (1 - probabilities >= t_lacks)
    margins = np.abs(probabilities - y).max(axis=1)
    issues = {}
    for k in np.flatnonzero((missing | extra).any(axis=1)):
        suggested_ids = (y[k] | missing[k]) & ~extra[k]
        suggested = [label_map.decode(int(j)) for j in np.flatnonzero(suggested_ids)]
        changed = missing[k] | extra[k]
        margins[k] = float(np.abs(probabilities[k] - y[k])[changed].max())
        p_given = float(probabilities[k, y[k]].min()) if y[k].any() else None
        p_suggested = float(probabilities[k, suggested_ids].min()) if suggested_ids.any() else None
        issues[int(k)] = (suggested, p_given, p_suggested)
    thresholds = {label_map.decode(j): float(t_has[j]) for j in range(c) if np.isfinite(t_has[j])}
    return thresholds, margins, issues


def _label_key(label) -> Any:
    return frozenset(label) if isinstance(label, list) else label


def _where(split_name: str, split, i: int) -> str:
    return f"{split_name} {split.where(i)}"


def _find_conflicts_and_copies(available: dict, row_for) -> None:
    """Group rows by normalised text: different labels are conflicts; copies in another split are leakage."""
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name, split in available.items():
        for i, text in enumerate(split.texts):
            groups[normalize_text(text)].append((name, i))
    for members in groups.values():
        if len(members) < 2:
            continue
        label_of = {m: _label_key(available[m[0]].labels[m[1]]) if available[m[0]].labels is not None else None
                    for m in members}
        distinct = {v for v in label_of.values() if v is not None}
        if len(distinct) > 1:
            for m in members:
                if label_of[m] is None:
                    continue
                row = row_for(*m)
                row.reasons.append("conflicting_labels")
                row.related += [f"{_where(o[0], available[o[0]], o[1])} labelled {_show(available[o[0]].labels[o[1]])}"
                                for o in members if o != m and label_of[o] is not None and label_of[o] != label_of[m]]
        earliest = min(_SPLIT_ORDER[m[0]] for m in members)
        for m in members:
            if _SPLIT_ORDER[m[0]] == earliest:
                continue
            copies = [o for o in members if _SPLIT_ORDER[o[0]] < _SPLIT_ORDER[m[0]]]
            exact = [o for o in copies if available[o[0]].texts[o[1]] == available[m[0]].texts[m[1]]]
            row = row_for(*m)
            reason = "cross_split_duplicate" if exact else "near_duplicate"
            if reason not in row.reasons:
                row.reasons.append(reason)
            row.similarity = max(row.similarity, 1.0)
            row.related += [f"{'copy' if o in exact else 'normalised copy'} in "
                            f"{_where(o[0], available[o[0]], o[1])}" for o in (exact or copies)[:3]]


def _show(label) -> str:
    return "|".join(label) if isinstance(label, list) else str(label)


def _find_near_duplicates(available: dict, threshold: float, row_for, chunk: int = 1024) -> None:
    """Rows of a later split whose character n-gram TF-IDF cosine with an earlier split's row is >= ``threshold``.

    Only n-grams found in at most 1% of the texts (and at least in 2) take part, so the sparse products stay
    sparse; two near-identical texts share nearly all their rare n-grams, so their cosine over those stays high. A
    candidate is then confirmed with the cosine over all n-grams.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    names = sorted(available, key=_SPLIT_ORDER.get)
    if len(names) < 2:
        return
    texts = [normalize_text(t) for name in names for t in available[name].texts]
    bounds, position = {}, 0
    for name in names:
        bounds[name] = (position, position + len(available[name]))
        position += len(available[name])
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(2, 4), sublinear_tf=True, dtype=np.float32)
    try:
        full = vectorizer.fit_transform(texts).tocsr()
    except ValueError:  # every text is a single character: no 2-grams to compare
        return
    df = np.bincount(full.indices, minlength=full.shape[1])
    rare = (df >= 2) & (df <= max(2, int(0.01 * full.shape[0])))
    candidates = normalize(full[:, np.flatnonzero(rare)]).tocsr()
    for later_pos, later in enumerate(names[1:], start=1):
        earlier = names[:later_pos]
        lo, hi = bounds[later]
        ref = np.concatenate([np.arange(*bounds[e]) for e in earlier])
        ref_matrix = candidates[ref].T.tocsc()
        for start in range(lo, hi, chunk):
            block = candidates[start:min(hi, start + chunk)] @ ref_matrix
            block = block.tocsr()
            for r in range(block.shape[0]):
                row_values = block.data[block.indptr[r]:block.indptr[r + 1]]
                if not len(row_values) or row_values.max() < threshold * 0.8:
                    continue
                cols = block.indices[block.indptr[r]:block.indptr[r + 1]]
                best_col = cols[row_values.argmax()]
                i, j = start + r, int(ref[best_col])
                cosine = float(full[i].multiply(full[j]).sum())
                if cosine < threshold:
                    continue
                name_i, idx_i = later, i - lo
                name_j = next(e for e in earlier if bounds[e][0] <= j < bounds[e][1])
                idx_j = j - bounds[name_j][0]
                if texts[i] == texts[j]:
                    continue  # equal after normalisation: already reported as a copy
                row = row_for(name_i, idx_i)
                if "near_duplicate" not in row.reasons:
                    row.reasons.append("near_duplicate")
                row.similarity = max(row.similarity, cosine)
                row.related.append(f"cosine {cosine:.3f} with {_where(name_j, available[name_j], idx_j)}")

