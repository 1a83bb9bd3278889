"""What a fine-tuning run and a pretraining run share about their folder: which settings a resume may change, and
the log that a resume truncates back to its checkpoint. One copy, so the two loops cannot drift apart."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ..errors import TrainingError


def flatten(config: dict) -> dict:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``."""
    return {f"{section}.{key}": value for section, fields in config.items() if isinstance(fields, dict)
            for key, value in fields.items()}


def setting_changes(now: dict, saved: dict | None, resumable: tuple[str, ...]) -> list[str]:
    """``"section.field: then -> now"`` for every setting that differs from ``saved`` and that a resume may not
    change (``resumable`` holds the prefixes it may: ``"run."``, ``"train.epochs"``...)."""
    now, then = flatten(now), flatten(saved if isinstance(saved, dict) else {})
    return [f"{key}: {then.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(now) | set(then))
            if not key.startswith(resumable) and then.get(key) != now.get(key)]


def truncate_log(path: Path, step: int) -> None:
    """Drop the lines a killed run logged after the checkpoint being resumed (the resumed run logs them again).

    Written to a temporary file and renamed over the log, so a second kill during the truncation leaves either
    the old log or the new one, never half of it.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):  # a line torn by the kill
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def is_disk_full(exc: BaseException) -> bool:
    """An OSError with ENOSPC, or safetensors' own error for the same (it is not an OSError)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(exc) or "StorageFull" in str(exc)


def disk_full_error(exc: BaseException, output_dir: Path, step: int, keep_checkpoints: int,
                    then: str) -> TrainingError:
    """The message for a full disk: where, at which step, what frees space, and ``then`` (how to go on)."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return TrainingError(f"the disk holding {output_dir} is full: no space left while writing{where} at optimizer "
                         f"step {step}; free some space, or lower --keep-checkpoints (now {keep_checkpoints}); {then}")
