"""A fitted TF-IDF + linear model as a model folder: plain arrays and JSON, no pickle.

The TF-IDF baseline (:mod:`textclf.tools.baseline`) is fitted with scikit-learn; what it needs to classify a text is
small and plain: the n-gram settings, the vocabulary, the idf weights, one linear layer and how its scores become
probabilities. :class:`TfidfModel` holds exactly that, computes the probabilities with numpy (the same arithmetic as
scikit-learn's ``predict_proba``, checked in ``tests/test_baseline_folder.py``), and reads and writes a model folder
that ``Predictor``, ``textclf predict``, ``evaluate`` and ``serve`` load like any other::

    DIR/textclf.json       {"kind": "tfidf", "num_labels": ..., ...}
    DIR/labels.json        label names
    DIR/tfidf.json         n-gram settings, vocabulary (in feature order), how scores become probabilities
    DIR/tfidf.safetensors  idf [F], weight [K, F], bias [K], and the calibration's slopes and offsets [K]

Nothing in the folder is code: loading it runs none, unlike a pickled scikit-learn model, and a file written by one
scikit-learn version reads the same with any other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit  # scipy comes with scikit-learn

from .. import outputs
from ..data.labels import LABELS_FILE, LabelMap
from ..errors import ModelLoadError
from . import bundle

KIND = "tfidf"
SETTINGS_FILE = "tfidf.json"
ARRAYS_FILE = "tfidf.safetensors"
# How the linear scores become probabilities:
#   calibrated  Platt scaling per class, p_k = 1 / (1 + exp(a_k s_k + b_k)), then normalised to sum to one (with two
#               classes the one score is the second class's, and the first gets 1 - p), as scikit-learn's
#               CalibratedClassifierCV(method="sigmoid") computes it;
#   softmax     a softmax over the margins (an SVM whose smallest class was too small to calibrate);
#   sigmoid     independent per-label probabilities (multi-label: one logistic regression per label).
OUTPUTS = ("calibrated", "softmax", "sigmoid")
_FORMAT = 1
_TINY = 1e-12  # probabilities are clipped here before the logarithm: a log of zero has no logit


def is_tfidf_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a TF-IDF model folder (``textclf.json`` says ``"kind": "tfidf"``)."""
    return bundle.has_meta(folder) and bundle.read_meta(folder).get("kind") == KIND


@dataclass
class TfidfModel:
    """TF-IDF features, one linear layer and the mapping of its scores to probabilities.

    Attributes:
        vectorizer: the n-gram settings (``analyzer``, ``ngram_range``, ``lowercase``, ``token_pattern``...), as
            keyword arguments of scikit-learn's ``TfidfVectorizer``.
        vocabulary: the n-grams, in feature order.
        idf: inverse document frequencies ``[F]``.
        weight, bias: the linear layer, ``[K, F]`` and ``[K]``; its ``K`` scores belong to the labels ``columns``.
        columns: the label index of each score column (a class absent from the training rows has none and always
            gets probability 0); with two ``calibrated`` classes, one score for ``columns[1]``.
        output: one of ``OUTPUTS``.
        slope, offset: the ``calibrated`` output's Platt parameters ``[K]`` (zeros otherwise).
        label_map: the labels.
    """

    vectorizer: dict[str, Any]
    vocabulary: list[str]
    idf: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    columns: list[int]
    output: str
    slope: np.ndarray
    offset: np.ndarray
    label_map: LabelMap

    def __post_init__(self) -> None:
        self._features = None  # the TfidfVectorizer rebuilt from the arrays, made on first use

    # ---- inference -----------------------------------------------------------------------------------------------

    def features(self, texts: list[str]):
        """The sparse TF-IDF matrix ``[N, F]`` of ``texts`` (scikit-learn's vectorizer, given the saved vocabulary
        and idf, so the n-grams are cut exactly as in training)."""
        if self._features is None:
            from sklearn.feature_extraction.text import TfidfVectorizer

            settings = {**self.vectorizer, "ngram_range": tuple(self.vectorizer["ngram_range"])}
            vectorizer = TfidfVectorizer(**settings, vocabulary={term: i for i, term in enumerate(self.vocabulary)},
                                         sublinear_tf=True, dtype=np.float32)
            vectorizer.idf_ = self.idf
            self._features = vectorizer
        return self._features.transform(texts)

    def scores(self, texts: list[str]) -> np.ndarray:
        """The linear layer's scores ``[N, K]`` (float64, as scikit-learn computes them)."""
        return np.asarray(self.features(texts) @ self.weight.T.astype(np.float64)) + self.bias

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities ``[N, num_labels]`` (float64) in ``label_map`` order: rows sum to one for single-label
        models; independent per-label probabilities for multi-label ones."""
        scores = self.scores(list(texts))
        out = np.zeros((len(scores), len(self.label_map)))
        columns = np.asarray(self.columns)
        if self.output == "sigmoid":
            out[:, columns] = expit(scores)
        elif self.output == "softmax":
            if len(columns) == 2 and scores.shape[1] == 1:
                scores = np.concatenate([-scores, scores], axis=1)
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            out[:, columns] = scores / scores.sum(axis=1, keepdims=True)
        else:
            calibrated = expit(-(self.slope * scores + self.offset))
            if len(columns) == 2:
                out[:, columns[1]] = calibrated[:, 0]
                out[:, columns[0]] = 1.0 - calibrated[:, 0]
            else:
                total = calibrated.sum(axis=1, keepdims=True)
                uniform = np.full_like(calibrated, 1.0 / len(columns))
                out[:, columns] = np.divide(calibrated, total, out=uniform, where=total != 0)
        return out

    def logits(self, texts: list[str]) -> np.ndarray:
        """Scores ``[N, num_labels]`` (float32) whose softmax (single-label) or sigmoid (multi-label) are
        :meth:`predict_proba`'s probabilities: what a prediction backend hands the task."""
        p = np.clip(self.predict_proba(texts), _TINY, 1.0)
        if self.label_map.multi_label:
            return (np.log(p) - np.log1p(-np.minimum(p, 1.0 - _TINY))).astype(np.float32)
        return np.log(p).astype(np.float32)

    # ---- the folder ----------------------------------------------------------------------------------------------

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        """Write the model files into ``folder`` (created if needed); ``extra`` entries go into ``textclf.json``.
        The caller has checked the folder (``TfidfBaseline.save``, or a folder ``run_baseline`` claimed)."""
        from safetensors.numpy import save_file

        from .. import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"idf": self.idf, "weight": self.weight, "bias": self.bias, "slope": self.slope,
                  "offset": self.offset}
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()},
                  str(folder / ARRAYS_FILE))
        outputs.open_permissions(folder / ARRAYS_FILE)
        settings = {"format": _FORMAT, "vectorizer": self.vectorizer, "output": self.output,
                    "columns": self.columns, "vocabulary": self.vocabulary}
        outputs.write_file_atomically(folder / SETTINGS_FILE, json.dumps(settings, ensure_ascii=False) + "\n")
        self.label_map.save(folder / LABELS_FILE)
        bundle.write_meta(folder, {"kind": KIND, "textclf_version": __version__, "num_labels": len(self.label_map),
                                   "num_features": len(self.vocabulary), **(extra or {})})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TfidfModel:
        """Read a folder written by :meth:`save`; a missing or damaged file is a ``ModelLoadError`` naming it."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta = bundle.read_meta(folder)
        if meta.get("kind") != KIND:
            raise ModelLoadError(f"{folder} is not a TF-IDF model folder (its textclf.json has no \"kind\": "
                                 f"\"{KIND}\")")
        damaged = "the model folder is damaged: fit the baseline again (textclf baseline --output DIR)"
        for name in (SETTINGS_FILE, ARRAYS_FILE, LABELS_FILE):
            if not (folder / name).is_file():
                raise ModelLoadError(f"{folder / name} is missing; {damaged}")
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
            arrays = load_file(str(folder / ARRAYS_FILE))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as exc:
            raise ModelLoadError(f"{folder} cannot be read ({exc}); {damaged}") from None
        if not isinstance(settings, dict) or settings.get("format") != _FORMAT:
            raise ModelLoadError(f"{folder / SETTINGS_FILE} is not a TF-IDF model of format {_FORMAT}; {damaged}")
        label_map = LabelMap.load(folder / LABELS_FILE)
        try:
            model = cls(settings["vectorizer"], settings["vocabulary"], arrays["idf"], arrays["weight"],
                        arrays["bias"], [int(c) for c in settings["columns"]], settings["output"], arrays["slope"],
                        arrays["offset"], label_map)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{folder} lacks {exc}; {damaged}") from None
        model._check(folder, damaged)
        return model

    def _check(self, folder: Path, damaged: str) -> None:
        features, outputs = len(self.vocabulary), len(self.columns)
        scores = 1 if self.output != "sigmoid" and outputs == 2 else outputs
        problems = [
            self.output not in OUTPUTS and f"output {self.output!r} is not one of {OUTPUTS}",
            self.idf.shape != (features,) and f"idf has shape {self.idf.shape}, the vocabulary {features} terms",
            self.weight.shape != (scores, features) and f"weight has shape {self.weight.shape}, not "
                                                         f"({scores}, {features})",
            any(s.shape != (scores,) for s in (self.bias, self.slope, self.offset)) and "bias, slope or offset "
                                                                                        "has the wrong length",
            any(not 0 <= c < len(self.label_map) for c in self.columns) and
            f"columns name labels outside 0..{len(self.label_map) - 1}",
        ]
        problems = [p for p in problems if p]
        if problems:
            raise ModelLoadError(f"{folder}: {'; '.join(problems)}; {damaged}")


