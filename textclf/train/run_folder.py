"""What a run folder must agree with before a resume, and what a resume repairs: which settings a resume may change,
the training data's fingerprint, the best model's step, and the log truncated back to its checkpoint."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
from pathlib import Path

from .. import outputs
from ..config import DataConfig, ModelConfig, PretrainConfig, TrainConfig
from ..errors import OutputDirError, TrainingError
from ..model import bundle

# Settings a resumed fine-tuning run may change: where things are, how the data is read (the training rows themselves
# are compared by fingerprint), how fast evaluation runs, how long training goes on. Any other difference would
# make the checkpoint's data position or optimizer state mean something else.
FINE_TUNING_RESUMABLE = ("run.", "data.", "train.device", "train.precision", "train.num_workers",
                         "train.eval_batch_size", "train.log_steps", "train.epochs", "train.max_steps",
                         "train.patience", "train.eval_steps", "train.save_steps", "train.keep_checkpoints",
                         "train.calibrate")


def flatten(config: dict) -> dict:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``."""
    return {f"{section}.{key}": value for section, fields in config.items() if isinstance(fields, dict)
            for key, value in fields.items()}


def setting_changes(now: dict, saved: dict | None, resumable: tuple[str, ...]) -> list[str]:
    """``"section.field: then -> now"`` for every setting that differs from ``saved`` and that a resume may not
    change (``resumable`` holds the prefixes it may: ``"run."``, ``"train.epochs"``...).

    A setting that a later release added (absent from ``saved``) and that is at its default now changed nothing:
    the run that wrote the checkpoint behaved as that default does.
    """
    now, then = flatten(now), flatten(saved if isinstance(saved, dict) else {})
    added_at_default = {key for key, value in now.items()  # (a damaged config, with no settings, is not a release)
                        if then and key not in then and _DEFAULTS.get(key, ...) == value}
    return [f"{key}: {then.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(now) | set(then))
            if not key.startswith(resumable) and then.get(key) != now.get(key) and key not in added_at_default]


_DEFAULTS = flatten({section: dataclasses.asdict(klass()) for section, klass in (
    ("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig), ("pretrain", PretrainConfig))})
# What a run written before a setting existed did, where that differs from the setting's default today: runs before
# train.recipe fine-tuned (the default became "auto", which a run resolves to a recipe before it is saved).
_DEFAULTS["train.recipe"] = "fine-tune"


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
    outputs.write_file_atomically(path, "".join(line + "\n" for line in kept))


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


def rows_digest(texts: list[str], labels: list | None) -> str:
    """SHA-256 of rows, texts and labels, in order: a relabelled copy of the same texts has another digest."""
    digest = hashlib.sha256()
    for i, text in enumerate(texts):
        digest.update(f"{text}\x1f{labels[i] if labels is not None else ''}\x1e".encode())
    return digest.hexdigest()


def rows_fingerprint(texts: list[str], labels: list | None, label_map) -> dict:
    """What a fine-tuning checkpoint must agree with: the label set and the exact training rows (order included)."""
    return {"labels": label_map.to_dict(), "train_rows": len(texts), "train_sha256": rows_digest(texts, labels)}


def fingerprint_differences(saved: dict, now: dict) -> list[str]:
    """How the training data of a checkpoint (``saved``) differs from this run's (``now``), one phrase each."""
    if saved.get("labels") != now["labels"]:
        return [f"labels: {(saved.get('labels') or {}).get('names')} -> {now['labels'].get('names')}"]
    if saved.get("train_sha256") != now["train_sha256"]:
        same_size = saved.get("train_rows") == now["train_rows"]
        return [f"training data: {saved.get('train_rows')} rows -> {now['train_rows']} rows"
                + (" with different texts or labels" if same_size else "")]
    return []


def check_best_is_not_ahead(output_dir: Path, checkpoint: Path, resumed_at: int, total_steps: int) -> None:
    """Refuse a resume that would end before the step that wrote ``best/``.

    A run killed after saving ``best/`` at step 16 but before its next checkpoint (12) resumes at 12; it writes
    ``best/`` again at 16 only if it gets there. Ending earlier would report one best step in metrics.json and
    keep another one's weights in ``best/``.
    """
    best = output_dir / "best"
    best_step = bundle.read_meta(best).get("step") if bundle.has_meta(best) else None
    if isinstance(best_step, int) and resumed_at < best_step and total_steps < best_step:
        raise OutputDirError(
            f"cannot resume from {checkpoint} (step {resumed_at}) with {total_steps} optimizer steps: {best} "
            f"was saved at step {best_step} by the run that was interrupted, and this run would end before it "
            f"(best/ would hold weights its own metrics never saw). Resume with --max-steps {best_step} or more "
            "(or the original --epochs), or pass --overwrite without --resume to start over")
