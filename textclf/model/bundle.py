"""A model folder's settings file, ``textclf.json``: its one reader and writer.

A model folder (``best/``, ``last/``, an ensemble, an export) holds the weights, the tokenizer files, ``labels.json``
and ``textclf.json``, which says how to rebuild and use the model: pooling and head, the training recipe, the
sliding windows, the normaliser, multi-label decision thresholds, the calibration temperature. Every module reads
and changes that file through the functions here, so a damaged file gives the same clear error everywhere and a
change after training (thresholds tuned on dev, a temperature fitted) is one atomic read-modify-write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .. import outputs
from ..config import read_json_object
from ..data.normalize import TextNormalizer
from ..errors import DataError, ModelLoadError

META_FILE = "textclf.json"
NORMALIZER_FILE = "normalizer.json"


def has_meta(folder: str | Path) -> bool:
    return (Path(folder) / META_FILE).is_file()


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The parsed ``textclf.json`` of ``folder``.

    Raises:
        ModelLoadError: the file is missing, unreadable, not JSON or not a JSON object; the message names it.
    """
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ModelLoadError(f"{folder} is not a textclf model folder ({META_FILE} is missing); use OUTPUT/best or "
                             "OUTPUT/last of a training run, or a `textclf export` folder")
    return read_json_object(path, ModelLoadError, "the model folder is damaged: retrain, or restore the folder "
                            "from a copy")


def write_meta(folder: str | Path, meta: dict[str, Any]) -> None:
    """Write ``textclf.json`` atomically: a reader (a service reloading the model) never sees half a file."""
    write_atomically(Path(folder) / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False))


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` (and a final newline) to ``path`` through a temporary file renamed over it."""
    outputs.write_file_atomically(path, text + "\n")


def update_meta(folder: str | Path, **entries: Any) -> dict[str, Any]:
    """Set ``entries`` in ``folder``'s ``textclf.json`` (read, change, write atomically); returns the result."""
    meta = read_meta(folder)
    meta.update(entries)
    write_meta(folder, meta)
    return meta


# ---- a whole model folder -----------------------------------------------------------------------------------------


def model_folder_writer(model, tokenizer, meta: dict[str, Any], normalizer: TextNormalizer | None = None,
                        weights_from: Path | None = None):
    """A function ``write(folder)`` that writes a loadable model folder: the weights and head (``model``, a
    :class:`~textclf.model.classifier.TextClassifier`), the tokenizer, ``textclf.json`` (``meta`` and the model's own
    settings) and the normaliser; handed to an atomic folder write. ``weights_from``: a folder already holding these
    weights, whose weight file is linked (:meth:`~textclf.model.classifier.TextClassifier.save_pretrained`)."""
    meta = {**meta, "normalizer": NORMALIZER_FILE} if normalizer is not None else meta
    linked = {"weights_from": weights_from} if weights_from is not None else {}  # a subclass's own save_pretrained

    def write(folder: Path) -> None:
        model.save_pretrained(folder, tokenizer, meta, **linked)
        if normalizer is not None:
            write_normalizer(folder, normalizer)

    return write


# ---- the normaliser ------------------------------------------------------------------------------------------------


def write_normalizer(folder: str | Path, normalizer: TextNormalizer) -> str:
    """Write ``normalizer.json`` into ``folder``; returns the file name (to reference from ``textclf.json``)."""
    path = Path(folder) / NORMALIZER_FILE
    path.write_text(json.dumps(normalizer.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return NORMALIZER_FILE


def read_normalizer(folder: str | Path, meta: dict | None = None) -> TextNormalizer | None:
    """The normaliser saved in a model folder, or None when the folder has none.

    Args:
        folder: a model folder (training bundle, ensemble or export).
        meta: its ``textclf.json`` contents, if already read.
    """
    folder = Path(folder)
    if meta is None:
        meta = read_meta(folder) if has_meta(folder) else {}
    name = meta.get("normalizer")
    if not name:
        return None
    path = folder / name
    try:
        return TextNormalizer.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, DataError) as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc}); the model folder is damaged (textclf.json "
                             f"references it), so its texts cannot be normalised as in training") from None


def copy_inference_settings(source: str | Path, target: str | Path, meta: dict) -> dict:
    """Carry what prediction needs besides the network from one model folder to another (e.g. into an export).

    Copies ``normalizer.json`` and the ``normalizer`` / ``calibration`` entries of ``textclf.json``.

    Returns:
        ``meta`` updated with those entries (the caller writes it to ``target/textclf.json``).
    """
    source, target = Path(source), Path(target)
    source_meta = read_meta(source)
    for key in ("normalizer", "calibration", "data_reading"):
        if source_meta.get(key):
            meta[key] = source_meta[key]
    if source_meta.get("normalizer"):
        shutil.copy2(source / source_meta["normalizer"], target / source_meta["normalizer"])
    return meta
