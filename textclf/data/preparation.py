"""What data preparation did, said and kept: normalisation counts, the held-out splits, the augmented rows.

A run that carves its dev or test split out of the training file, or augments its training rows, used to do so
invisibly: the same test rows could not be scored later by ``textclf evaluate``, ``baseline`` or another model, and
the augmented texts could not be read. :func:`save_prepared_data` writes them into the run folder as ordinary CSV
files (``OUTPUT/data/dev.csv``, ``test.csv``, ``augmented.csv``) with the source line of every row, readable with
the run's own column names, and returns the lines to print.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .readers import DatasetSplits, Split

DATA_DIR = "data"  # inside a run folder


def normalise(split: Split, normalizer) -> tuple[Split, str | None]:
    """``split`` with its texts normalised (synonym table, width folding) and a line saying how many changed; the
    split itself and None when there is no normaliser."""
    if normalizer is None:
        return split, None
    after = normalizer.apply_split(split)
    changed = sum(a != b for a, b in zip(split.texts, after.texts))
    source = f" ({normalizer.source})" if getattr(normalizer, "source", None) else ""
    return after, f"{split.name}: normalisation{source} changed {changed} of {len(split)} texts"


def write_split(split: Split, path: Path, config, rows: range | None = None) -> None:
    """Write ``split`` (or ``rows`` of it) as a CSV with the run's text and label columns and each row's source."""
    rows = range(len(split)) if rows is None else rows
    where = split.location_kind if split.locations is not None else "row"
    # UTF-8 with a byte order mark: read back as UTF-8 whatever encoding the run's files had (a gbk run's saved
    # reading settings apply to every file evaluate reads), and Excel opens Chinese text in it correctly.
    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([config.text_column, config.label_column, f"source_{where}"])
        for i in rows:
            label = split.labels[i] if split.labels is not None else ""
            if isinstance(label, (list, tuple)):
                label = config.label_separator.join(label)
            writer.writerow([split.texts[i], label, split.locations[i] if split.locations is not None else i])


def save_prepared_data(data: DatasetSplits, folder: Path, config, augmented: int = 0) -> list[str]:
    """Write the splits held out of the training file and the ``augmented`` rows appended to train into ``folder``;
    returns one line per file for the log (none when there is nothing to keep)."""
    notes = []
    for split in (data.dev, data.test):
        if split is not None and split.held_out:  # carved out of the training file
            folder.mkdir(parents=True, exist_ok=True)
            write_split(split, folder / f"{split.name}.csv", config)
            notes.append(f"{split.name}: {len(split)} rows held out of {split.source} (stratified, seed "
                         f"{config.split_seed}); written to {folder / f'{split.name}.csv'} to score them again later")
    if augmented:
        folder.mkdir(parents=True, exist_ok=True)
        rows = range(len(data.train) - augmented, len(data.train))
        write_split(data.train, folder / "augmented.csv", config, rows)
        notes.append(f"train: the {augmented} augmented rows are in {folder / 'augmented.csv'}")
    return notes
