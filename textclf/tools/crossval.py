"""K-fold cross-validation for very small data sets: one training run per fold, scores as mean and spread.

With a few hundred labelled rows a single dev split of 10% holds a few dozen rows, and its score moves by several
points from one random split to the next. :func:`cross_validate` pools train (and dev) rows, cuts them into K
stratified folds, trains one :class:`~textclf.train.trainer.Trainer` per fold into ``OUTPUT/fold-k/`` and scores each
fold's held-out rows (and the test split, when there is one) with that fold's **final** weights. No held-out row
is used to pick a checkpoint, so the mean is an unbiased estimate of what the recipe gives on unseen data.
``OUTPUT/cv.json`` holds the per-fold reports and the mean and sample standard deviation of accuracy, macro F1 and
micro F1. With ``baseline=True`` the TF-IDF baseline is fitted on the same folds, for comparison. A fold keeps its
models and reports; its ``checkpoints/`` are deleted once it is scored, since a cross-validation is never resumed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import outputs
from ..errors import ConfigError, DataError, OutputDirError

__all__ = ["CVResult", "cross_validate", "train_fold"]

SUMMARY_METRICS = ("accuracy", "macro_f1", "micro_f1")
CV_FILE = "cv.json"


@dataclass
class CVResult:
    """Per-fold reports and their mean and spread.

    Attributes:
        output_dir: the folder holding ``cv.json`` and ``fold-1/`` ... ``fold-K/``.
        folds: one dict per fold: ``{"fold", "train_rows", "held_out_rows", "held_out": report, "test": report}``
            (reports as in ``metrics.json``; ``test`` only with a test split; ``baseline`` with ``baseline=True``).
        summary: ``{"held_out": {"accuracy": {"mean", "std", "values"}, ...}, "test": {...}}``; std is the sample
            standard deviation over folds (0 for one fold).
    """

    output_dir: Path
    folds: list[dict]
    summary: dict = field(default_factory=dict)

    def format(self) -> str:
        """A per-fold table and ``mean ± std`` lines, as ``textclf train --cv`` prints them."""
        lines = []
        for part, scores in self.summary.items():
            lines.append(f"== {part} ==")
            lines.append(f"{'fold':>8} " + " ".join(f"{m:>9}" for m in SUMMARY_METRICS))
            for k in range(len(self.folds)):
                lines.append(f"{k + 1:>8} " + " ".join(f"{scores[m]['values'][k]:>9.4f}" for m in SUMMARY_METRICS))
            lines.append(f"{'mean':>8} " + " ".join(f"{scores[m]['mean']:>9.4f}" for m in SUMMARY_METRICS))
            lines.append(f"{'std':>8} " + " ".join(f"{scores[m]['std']:>9.4f}" for m in SUMMARY_METRICS))
            lines.append(", ".join(f"{m} {scores[m]['mean']:.4f} ± {scores[m]['std']:.4f}" for m in SUMMARY_METRICS))
            lines.append("")
        return "\n".join(lines).rstrip()


def train_fold(texts: list[str], labels: list, label_map, output_dir: str | Path, model: str = "minilm",
               config=None, *, model_config=None, data_config=None, overwrite: bool = True, progress: bool = False):
    """Fine-tune one model on the given rows (no dev split: the final weights are kept) and return its Trainer."""
    from ..data.readers import DatasetSplits, Split
    from ..train.trainer import Trainer

    split = Split("train", list(texts), list(labels), "<fold>", list(range(len(texts))), "row")
    data = DatasetSplits(train=split, dev=None, test=None, label_map=label_map)
    trainer = Trainer(model=model, data=data, output_dir=output_dir, config=config, model_config=model_config,
                      data_config=data_config, overwrite=overwrite, progress=progress)
    trainer.fit()
    return trainer


def _score(trainer, split) -> dict:
    """The fold model's report on ``split``, read and decided as the trainer reads and decides (its input strategy,
    its task: argmax, or the multi-label thresholds, 0.5 without a dev split to tune them on)."""
    return trainer.evaluate(split).to_dict()


def cross_validate(data, k: int = 5, model: str = "minilm", output_dir: str | Path = "runs/cv", config=None, *,
                   model_config=None, data_config=None, include_dev: bool = True, seed: int | None = None,
                   baseline: bool = False, overwrite: bool = False, progress: bool = True,
                   printer=print) -> CVResult:
    """Train and score one model per fold of a stratified K-fold over the training (and dev) rows.

    Args:
        data: a :class:`~textclf.data.readers.DatasetSplits` or anything :func:`textclf.load_dataset` accepts.
        k: number of folds (>= 2); each fold trains on ``(k-1)/k`` of the pooled rows.
        model: encoder name or folder (as for :class:`~textclf.train.trainer.Trainer`).
        output_dir: gets ``cv.json`` and one training run per fold in ``fold-1/`` ... ``fold-K/``.
        config: :class:`~textclf.config.TrainConfig` of every fold (keep ``epochs``/``max_steps`` modest).
        model_config: :class:`~textclf.config.ModelConfig` (pooling, dropout, freezing).
        data_config: :class:`~textclf.config.DataConfig` (used when ``data`` still has to be read).
        include_dev: pool the dev rows with the training rows (default: very small data needs every row).
        seed: fold assignment seed; default ``config.seed``.
        baseline: also fit the TF-IDF baseline on each fold and report it under ``"baseline"``.
        overwrite: replace an earlier cross-validation in ``output_dir``.
        progress: show each fold's progress bar.
        printer: where one line per finished fold goes (``None``: nowhere).

    Returns:
        A :class:`CVResult` (also written to ``OUTPUT/cv.json``).

    Raises:
        ConfigError: for ``k < 2``. DataError: when there are fewer pooled rows than folds.
        OutputDirError: when ``output_dir`` holds a cross-validation and ``overwrite`` is False.
    """
    from ..config import DataConfig, TrainConfig
    from ..data.readers import DatasetSplits, Split, load_dataset, stratified_folds
    from ..train.checkpoint import remove_checkpoints

    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"cv: the number of folds must be an integer >= 2, got {k!r}")
    config = config or TrainConfig()
    if not isinstance(data, DatasetSplits):
        data = load_dataset(data, config=data_config or DataConfig())
    out = Path(output_dir)
    if (out / CV_FILE).is_file() and not overwrite:
        raise OutputDirError(f"{out} already holds a cross-validation ({CV_FILE}); pass --overwrite "
                             "(overwrite=True) to replace it, or choose another --output folder")
    if out.is_dir() and any(out.iterdir()) and not (out / CV_FILE).is_file() and not overwrite:
        raise OutputDirError(f"output folder {out} is not empty; --cv needs a new or empty folder, or --overwrite")
    parts = [data.train] + ([data.dev] if include_dev and data.dev is not None else [])
    pool = Split("train", [t for p in parts for t in p.texts], [y for p in parts for y in p.labels],
                 " + ".join(p.source for p in parts),
                 [f"{p.name} {loc}" for p in parts for loc in (p.locations or range(len(p)))], "row")
    n = len(pool)
    if n < k:
        raise DataError(f"{pool.source}: {n} rows are too few for {k} folds; lower --cv")
    folds = stratified_folds(pool, k, config.seed if seed is None else seed, stacklevel=2)  # cross_validate's caller

    out.mkdir(parents=True, exist_ok=True)
    results = []
    for fold, (fit, held) in enumerate(folds, start=1):
        start = time.perf_counter()
        trainer = train_fold(fit.texts, fit.labels, data.label_map, out / f"fold-{fold}", model, config,
                             model_config=model_config, data_config=data_config, overwrite=overwrite,
                             progress=progress)
        entry: dict[str, Any] = {"fold": fold, "train_rows": len(fit), "held_out_rows": len(held),
                                 "held_out": _score(trainer, held)}
        if data.test is not None and data.test.labels is not None:
            entry["test"] = _score(trainer, data.test)
        if baseline:
            from .baseline import TfidfBaseline

            clf = TfidfBaseline().fit(fit.texts, fit.labels, label_map=data.label_map)
            entry["baseline"] = {"held_out": clf.evaluate(held.texts, held.labels).to_dict()}
            if "test" in entry:
                entry["baseline"]["test"] = clf.evaluate(data.test.texts, data.test.labels).to_dict()
        entry["seconds"] = time.perf_counter() - start
        # A fold is never resumed (--cv refuses --resume; a rerun trains every fold again), so its training-state
        # checkpoints (each about 3x the model's weights) are only disk: the fold's model stays in last/.
        remove_checkpoints(out / f"fold-{fold}" / "checkpoints")
        outputs.write_file_atomically(out / f"fold-{fold}" / "fold.json",
                                      json.dumps(entry, indent=2, ensure_ascii=False) + "\n")
        results.append(entry)
        if printer is not None:
            printer(f"fold {fold}/{k}: held-out accuracy {entry['held_out']['accuracy']:.4f}, macro F1 "
                    f"{entry['held_out']['macro_f1']:.4f} ({len(held)} rows, {entry['seconds']:.0f} s)")

    summary = {}
    for part in ("held_out", "test"):
        if part in results[0]:
            summary[part] = _mean_std([r[part] for r in results])
    if baseline:
        for part in ("held_out", "test"):
            if part in results[0]["baseline"]:
                summary[f"baseline {part}"] = _mean_std([r["baseline"][part] for r in results])
    record = {"k": k, "rows": n, "include_dev": include_dev, "model": model, "summary": summary,
              "folds": results}
    outputs.write_file_atomically(out / CV_FILE, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return CVResult(out, results, summary)


def _mean_std(reports: list[dict]) -> dict:
    summary = {}
    for metric in SUMMARY_METRICS:
        values = [float(r[metric]) for r in reports]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary[metric] = {"mean": float(np.mean(values)), "std": 0.0 if math.isnan(std) else std,
                           "values": values}
    return summary
