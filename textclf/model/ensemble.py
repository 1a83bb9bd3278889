"""Ensembles as models: soft voting over members, saved and loaded as one model folder.

:func:`textclf.tools.seed_ensemble.train_ensemble` (``textclf train --seeds 1,2,3``) trains one member per seed into
``OUTPUT/seed-N/`` (a complete run each: ``best/``, ``metrics.json``, ...) and writes ``OUTPUT/ensemble/`` with
:func:`save_ensemble`::

    OUTPUT/ensemble/
        textclf.json       {"ensemble": {"members": ["members/seed-1", ...], "voting": "soft"}, ...}
        labels.json, tokenizer files, normalizer.json (when the run normalises texts)
        members/seed-N/    each member's best/ folder (hard links where the filesystem allows, else copies)

The folder is self-contained (copy it anywhere). ``Predictor.from_pretrained``, ``Trainer.from_pretrained``
(hence ``textclf evaluate``), ``textclf predict`` and ``textclf serve`` load it like any model folder.

Soft voting: :class:`EnsembleClassifier` returns, in place of logits, ``log(mean_i softmax(logits_i / T_i))``
(multi-label: ``logit(mean_i sigmoid(logits_i / T_i))``), where ``T_i`` is member ``i``'s own calibration
temperature (1 when uncalibrated). Softmax (sigmoid) of that output is exactly the mean of the members'
probabilities, so the predictor, the evaluation loss (the ensemble's negative log-likelihood) and the service need
no special case. The ensemble gets its own temperature fitted on dev like any model (``train.calibrate``).
Members must share the tokenizer and label set, as seed ensembles do.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .. import outputs
from ..data.labels import LabelMap
from ..errors import ConfigError, ModelLoadError
from . import bundle
from .classifier import LABELS_FILE, TEXTCLF_FILE, resolve_model_class
from .links import link_for

MEMBERS_DIR = "members"
ENSEMBLE_DIR = "ensemble"


class EnsembleClassifier(nn.Module):
    """Soft-voting ensemble of classifiers that share a tokenizer and a label set.

    Args:
        members: the member models (``TextClassifier`` or any module mapping ``(input_ids, attention_mask)`` to
            logits ``[B, C]``).
        label_map: the shared labels.
        temperatures: each member's calibration temperature (default 1 each).
    """

    def __init__(self, members: list[nn.Module], label_map: LabelMap, temperatures: list[float] | None = None):
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.label_map = label_map
        self.num_labels = len(label_map)
        self.link = link_for(label_map)  # softmax, or one sigmoid per label; its inverse maps the mean back
        temperatures = temperatures or [1.0] * len(members)
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32), persistent=False)

    @property
    def config(self):
        """The first member's encoder config (all members share the architecture and tokenizer)."""
        return self.members[0].config

    @property
    def encoder(self):
        """The first member's encoder (what export inspects for its input names)."""
        return self.members[0].encoder

    def member_probabilities(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[M, B, C]`` probabilities of each member (softmax, or sigmoid for multi-label), in fp32."""
        probs = []
        for member, temperature in zip(self.members, self.temperatures):
            probs.append(self.link.probabilities(member(input_ids, attention_mask).float() / temperature))
        return torch.stack(probs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B, C]`` whose softmax (multi-label: sigmoid) is the mean of the members' probabilities."""
        return self.link.logits(self.member_probabilities(input_ids, attention_mask).mean(0))

    @classmethod
    def from_pretrained(cls, folder: str | Path, model_class: type | str | None = None) -> EnsembleClassifier:
        """Load an ensemble folder written by :func:`save_ensemble` (``model_class``: the members' class when they
        were saved from a ``TextClassifier`` subclass, as for :func:`load_model`)."""
        folder = Path(folder)
        member_class = resolve_model_class(model_class)
        meta = bundle.read_meta(folder)
        spec = meta.get("ensemble") or {}
        members, temperatures = [], []
        for relative in spec.get("members", []):
            member_dir = folder / relative
            if not (member_dir / TEXTCLF_FILE).is_file():
                raise ModelLoadError(f"{folder}: ensemble member {relative} is missing ({member_dir}); the ensemble "
                                     "folder is incomplete, rebuild it with textclf train --seeds")
            members.append(member_class.from_pretrained(member_dir))
            member_meta = bundle.read_meta(member_dir)
            temperatures.append(float((member_meta.get("calibration") or {}).get("temperature", 1.0)))
        label_map = LabelMap.load(folder / LABELS_FILE)
        widths = sorted({member.num_labels for member in members})
        if members and widths != [len(label_map)]:  # else a shape error at the first batch, or misnamed outputs
            raise ModelLoadError(f"{folder / LABELS_FILE} lists {len(label_map)} labels but the ensemble's members "
                                 f"have {' and '.join(map(str, widths))} outputs; the folder is damaged: rebuild it "
                                 "with textclf train --seeds")
        return cls(members, label_map, temperatures)


def is_ensemble(folder: str | Path) -> bool:
    """True for a folder written by :func:`save_ensemble`."""
    return bundle.has_meta(folder) and "ensemble" in bundle.read_meta(folder)


def load_model(folder: str | Path, model_class: type | str | None = None) -> nn.Module:
    """A training bundle's model: :class:`TextClassifier`, or :class:`EnsembleClassifier` for an ensemble folder.

    Args:
        folder: the model folder.
        model_class: the ``TextClassifier`` subclass to load it with: the class, or ``"module:Class"`` /
            ``"file.py:Class"`` (imported here: the caller's opt-in to run that code). A folder saved from a subclass
            (``textclf.json`` names it in ``model_class``) needs it; the message of the error without it says what
            to pass. A class other than the recorded one is accepted (the weights must still fit it).
    """
    if is_ensemble(folder):
        return EnsembleClassifier.from_pretrained(folder, model_class)
    return resolve_model_class(model_class).from_pretrained(folder)


def require_labels(folder: str | Path, model: nn.Module) -> LabelMap:
    """The label map of ``model``, loaded from ``folder``; a folder without ``labels.json`` is an error naming it.

    ``TextClassifier.from_pretrained`` accepts such a folder (a model saved without label names can still be
    trained on labelled data, which brings its own), but predicting or scoring needs the names of the outputs.
    """
    if model.label_map is None:
        raise ModelLoadError(f"{folder} has no {LABELS_FILE}: the names of the model's {model.num_labels} outputs are "
                             f"unknown, so it cannot predict or be evaluated; copy {LABELS_FILE} back from the "
                             "training run's model folder (OUTPUT/best), or save the model again with its labels")
    return model.label_map


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target)  # members are read-only model files: sharing them costs no disk
    except OSError:
        shutil.copy2(source, target)
    return target


def save_ensemble(member_dirs: list[str | Path], folder: str | Path, names: list[str] | None = None,
                  extra: dict | None = None) -> Path:
    """Write an ensemble folder from member model folders (each a ``best/`` of a run).

    Args:
        member_dirs: the members' model folders; they must share labels and tokenizer.
        folder: the ensemble folder to (re)create.
        names: member folder names under ``members/`` (default ``member-1``, ...).
        extra: more entries for ``textclf.json`` (``train_config`` and ``base_model`` default to the first member's).
    """
    folder, member_dirs = Path(folder), [Path(d) for d in member_dirs]
    names = names or [f"member-{i + 1}" for i in range(len(member_dirs))]
    labels = [LabelMap.load(d / LABELS_FILE).to_dict() for d in member_dirs]
    if any(label != labels[0] for label in labels):
        raise ConfigError(f"ensemble members {[str(d) for d in member_dirs]} have different label sets")
    first = bundle.read_meta(member_dirs[0])
    tmp = outputs.scratch(folder, "partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, member in zip(names, member_dirs):
        shutil.copytree(member, tmp / MEMBERS_DIR / name, copy_function=_link_or_copy)
    # Tokenizer, labels and normaliser are the first member's (shared by construction); weights stay in members/.
    for item in member_dirs[0].iterdir():
        if item.is_file() and item.name not in (TEXTCLF_FILE, "model.safetensors"):
            shutil.copy2(item, tmp / item.name)
    meta = {"ensemble": {"members": [f"{MEMBERS_DIR}/{n}" for n in names], "voting": "soft"},
            "num_labels": first.get("num_labels"), "base_model": first.get("base_model"),
            "train_config": first.get("train_config"), "normalizer": first.get("normalizer"), **(extra or {})}
    bundle.write_meta(tmp, meta)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
