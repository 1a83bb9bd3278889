"""A model folder's settings file, ``textclf.json``: its one reader and writer.

A model folder (``best/``, ``last/``, an ensemble, an export) holds the weights, the tokenizer files, ``labels.json``
and ``textclf.json``, which says how to rebuild and use the model: pooling and head, the training recipe, the
sliding windows, the normaliser, multi-label decision thresholds, the calibration temperature. Every module reads
and changes that file through the functions here, so a damaged file gives the same clear error everywhere and a
change after training (thresholds tuned on dev, a temperature fitted) is one atomic read-modify-write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

META_FILE = "textclf.json"


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
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc}); the model folder is damaged: retrain, or restore "
                             "the folder from a copy") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path} holds a JSON {type(meta).__name__}, not an object; the model folder is "
                             "damaged: retrain, or restore the folder from a copy")
    return meta


def write_meta(folder: str | Path, meta: dict[str, Any]) -> None:
    """Write ``textclf.json`` atomically: a reader (a service reloading the model) never sees half a file."""
    write_atomically(Path(folder) / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False))


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` (and a final newline) to ``path`` through a temporary file renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def update_meta(folder: str | Path, **entries: Any) -> dict[str, Any]:
    """Set ``entries`` in ``folder``'s ``textclf.json`` (read, change, write atomically); returns the result."""
    meta = read_meta(folder)
    meta.update(entries)
    write_meta(folder, meta)
    return meta
