"""What a distillation run learns from: the teacher's probabilities for every training text, computed once.

The teacher is anything :meth:`textclf.Predictor.from_pretrained` loads (a model folder, a seed-ensemble folder, an
ONNX or TorchScript export): it reads the texts with its own tokenizer, length and normaliser, so the student may
use another encoder. Its log-probabilities (each label's log-odds for a multi-label teacher; those of the mean
probabilities for an ensemble; the calibration temperature is not applied: the distillation temperature softens
them) are cached in the run folder,
``OUTPUT/teacher/targets.safetensors``, keyed by the teacher's files and the texts. A resumed run reads them back
instead of recomputing them, so it continues on bit-identical targets, and an epoch costs only the student.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .. import outputs
from ..data.labels import LabelMap
from ..errors import ConfigError
from ..model import bundle

TEACHER_DIR = "teacher"
TARGETS_FILE = "targets.safetensors"


def teacher_fingerprint(teacher: str | Path, texts: list[str]) -> str:
    """SHA-256 of what the targets depend on: the teacher's files (names, sizes, times) and the texts in order."""
    folder = Path(teacher).resolve()
    digest = hashlib.sha256(str(folder).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}\x1e".encode())
    for text in texts:
        digest.update(text.encode() + b"\x1e")
    return digest.hexdigest()


def check_teacher(teacher: str | Path) -> Path:
    """The teacher folder, or a ConfigError that says what a teacher is."""
    folder = Path(teacher)
    if not folder.is_dir() or not bundle.has_meta(folder):
        raise ConfigError(f"train.teacher: {teacher} is not a textclf model folder; give OUTPUT/best of a training "
                          "run, the OUTPUT/ensemble folder of textclf train --seeds, or a textclf export folder")
    return folder


def teacher_log_probs(teacher: str | Path, texts: list[str], label_map: LabelMap, device: str = "auto",
                      precision: str = "auto", batch_size: int = 128, say=print) -> torch.Tensor:
    """``[N, C]`` float32 scores of the teacher for ``texts`` in its link's log space, columns in ``label_map``'s
    order: log-probabilities (softmax), or each label's log-odds (multi-label, sigmoid); an ensemble's are those of
    its mean probabilities.

    The teacher must know exactly the data's labels (the order may differ): a student cannot learn a class the
    teacher has no probability for, and a teacher class the data lacks would leave probability mass nowhere.
    """
    from ..deploy.predict import Predictor
    from ..model.links import link_for

    folder = check_teacher(teacher)
    predictor = Predictor.from_pretrained(folder, device=device, precision=precision, batch_size=batch_size)
    check_same_labels(folder, predictor.label_map, label_map)
    names = list(predictor.label_map.names)
    say(f"teacher {folder}: scoring {len(texts):,} texts once (cached in the run folder)")
    logits = torch.from_numpy(np.ascontiguousarray(predictor.logits(texts))).float()
    order = [names.index(name) for name in label_map.names]
    link = link_for(label_map)
    return link.logits(link.probabilities(logits[:, order]))


def check_same_labels(folder: Path, teacher: LabelMap, data: LabelMap) -> None:
    """Refuse a teacher whose label set is not the data's (the order may differ), naming what each lacks, or whose
    kind (one label per text, or multi-label) is not the data's."""
    if teacher.multi_label != data.multi_label:
        kinds = {True: "multi-label", False: "single-label (one label per text)"}
        raise ConfigError(f"train.teacher: the teacher {folder} is {kinds[teacher.multi_label]} and the training data "
                          f"is {kinds[data.multi_label]}; distil on data of the teacher's kind (--multi-label as the "
                          "teacher was trained)")
    names = list(teacher.names)
    if set(names) != set(data.names):
        missing, extra = sorted(set(data.names) - set(names)), sorted(set(names) - set(data.names))
        raise ConfigError(f"train.teacher: the teacher {folder} knows the labels {names}, the training data "
                          f"{list(data.names)}" + (f"; the teacher lacks {missing}" if missing else "")
                          + (f"; the data lacks {extra}" if extra else "") + ". Distil on data with the teacher's "
                          "label set (the training file the teacher was trained on has it)")


class TeacherTargets:
    """The teacher's log-probabilities for the training texts: from the run folder's cache when it holds the same
    teacher and texts, else computed (and written by :meth:`save` once the run folder is claimed)."""

    def __init__(self, teacher: str | Path, texts: list[str], label_map: LabelMap, output_dir: Path,
                 device: str = "auto", precision: str = "auto", batch_size: int = 128, say=print):
        self.teacher = str(teacher)
        self.fingerprint = teacher_fingerprint(check_teacher(teacher), texts)
        self.path = Path(output_dir) / TEACHER_DIR / TARGETS_FILE
        self.log_probs = self._cached(len(texts), len(label_map))
        self.from_cache = self.log_probs is not None  # a resumed run reads the targets it started with
        if self.log_probs is None:
            self.log_probs = teacher_log_probs(teacher, texts, label_map, device, precision, batch_size, say)

    def _cached(self, rows: int, classes: int) -> torch.Tensor | None:
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("fingerprint") != self.fingerprint:
                    return None
                tensor = handle.get_tensor("log_probs")
        except Exception:  # a damaged cache is recomputed, never trusted
            return None
        return tensor if tuple(tensor.shape) == (rows, classes) else None

    def save(self) -> None:
        """Write the cache (rank 0, after the run folder was claimed or a resume restored): temporary file, then
        rename. Written even when read from the cache: --overwrite cleared the folder it was read from."""
        from safetensors.torch import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = outputs.scratch(self.path)
        save_file({"log_probs": self.log_probs.contiguous()}, str(scratch),
                  metadata={"fingerprint": self.fingerprint, "teacher": self.teacher})
        outputs.open_permissions(scratch)
        scratch.replace(self.path)


def student_source(teacher: str | Path) -> Path:
    """The model folder a student copied from the teacher starts from: the teacher's own folder, or the first member
    of a seed ensemble (the members share one encoder and head shape)."""
    folder = check_teacher(teacher)
    meta = bundle.read_meta(folder)
    if meta.get("export") is not None or meta.get("kind") is not None:
        raise ConfigError(f"train.teacher: {folder} holds no PyTorch weights to copy the student from (an export or "
                          "a TF-IDF model); give the student as --student ENCODER (e.g. minilm, with "
                          "--student-layers 3), or distil from the teacher's model folder")
    members = (meta.get("ensemble") or {}).get("members")
    return folder / members[0] if members else folder
