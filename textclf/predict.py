"""Inference: :class:`Predictor` turns raw texts into labels and probabilities, batched and fast.

Texts are tokenized in one batched call, sorted by length so each batch carries almost no padding, run
under ``torch.inference_mode`` (and bf16/fp16 autocast where the hardware has it), and put back in input
order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .collate import make_collate, sequential_shard
from .labels import LabelMap
from .modeling import TEXTCLF_FILE, TextClassifier, load_tokenizer
from .runtime import resolve_device, resolve_precision, setup_runtime


@dataclass
class Prediction:
    """One text's result: the predicted label (labels, for multi-label) and probabilities."""

    label: str | list[str]
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    truncated: bool = False

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score,
                "top_k": [{"label": name, "score": score} for name, score in self.top_k],
                "truncated": self.truncated}


class Predictor:
    """Batched inference with a trained classifier.

    Args:
        model: the classifier (moved to ``device`` and put in eval mode).
        tokenizer: its fast tokenizer.
        label_map: the label vocabulary (default: the model's own).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        max_length: tokens per text; longer texts are truncated and flagged ``truncated=True``.
        precision: ``"auto"`` (bf16/fp16 autocast where supported), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        batch_size: texts per forward pass.
    """

    def __init__(self, model: TextClassifier, tokenizer, label_map: LabelMap | None = None,
                 device: str | torch.device = "auto", max_length: int = 128, precision: str = "auto",
                 batch_size: int = 64):
        device = device if isinstance(device, torch.device) else resolve_device(device)
        self.runtime = setup_runtime(str(device), resolve_precision(precision, device))
        self.model = model.to(self.runtime.device).eval()
        self.tokenizer = tokenizer
        self.label_map = label_map or model.label_map
        self.max_length = max_length
        self.batch_size = batch_size
        self.threshold = 0.5  # multi-label decision threshold
        self.collate = make_collate(tokenizer.pad_token_id or 0, self.runtime.pad_to_multiple_of)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "auto", precision: str = "auto",
                        batch_size: int = 64, max_length: int | None = None) -> Predictor:
        """Load a model folder (``OUTPUT/best``, ``OUTPUT/last`` or any ``save_pretrained`` output)."""
        folder = Path(folder)
        model = TextClassifier.from_pretrained(folder)
        meta = json.loads((folder / TEXTCLF_FILE).read_text(encoding="utf-8"))
        trained_length = meta.get("train_config", {}).get("max_length", 128)
        return cls(model, load_tokenizer(str(folder)), model.label_map, device, max_length or trained_length,
                   precision, batch_size)

    def logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Raw logits ``[N, num_labels]`` (float32), in input order."""
        logits, _ = self._forward(list(texts), batch_size or self.batch_size)
        return logits

    def predict_proba(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Class probabilities ``[N, num_labels]``: softmax, or per-label sigmoid for multi-label models."""
        return self._probabilities(self.logits(texts, batch_size))

    def predict(self, texts: str | list[str], top_k: int = 1, batch_size: int | None = None):
        """Predict labels for one text (returns one :class:`Prediction`) or a list (returns a list)."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        logits, truncated = self._forward(batch, batch_size or self.batch_size)
        probabilities = self._probabilities(logits)
        names = self.label_map.names
        k = max(1, min(top_k, len(names)))
        results = []
        for row, was_truncated in zip(probabilities, truncated):
            order = np.argsort(-row)[:k]
            ranked = [(names[i], float(row[i])) for i in order]
            if self.label_map.multi_label:
                chosen = [names[i] for i in np.flatnonzero(row >= self.threshold)]
                label, score = chosen, float(row.max()) if len(row) else 0.0
            else:
                label, score = ranked[0]
            results.append(Prediction(label, score, ranked, bool(was_truncated)))
        return results[0] if single else results

    # ---- internals ------------------------------------------------------------------------------------

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(logits)
        return (tensor.sigmoid() if self.label_map.multi_label else tensor.softmax(-1)).numpy()

    def _forward(self, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros((0, len(self.label_map)), dtype=np.float32), np.zeros(0, dtype=bool)
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False,
                                 return_attention_mask=False, return_token_type_ids=False,
                                 return_overflowing_tokens=False, return_length=True)
        ids = encoded["input_ids"]
        lengths = np.asarray([len(row) for row in ids])
        # A text is truncated when it filled max_length exactly and re-tokenizing without the limit is longer.
        full = lengths >= self.max_length
        truncated = np.zeros(len(texts), dtype=bool)
        if full.any():
            candidates = [texts[i] for i in np.flatnonzero(full)]
            long_lengths = [len(r) for r in self.tokenizer(candidates, truncation=False)["input_ids"]]
            truncated[np.flatnonzero(full)] = np.asarray(long_lengths) > self.max_length
        out = np.empty((len(texts), len(self.label_map)), dtype=np.float32)
        with torch.inference_mode():
            for rows in sequential_shard(len(texts), batch_size, lengths=lengths):
                batch = self.collate([{"input_ids": ids[i]} for i in rows])
                batch = {k: v.to(self.runtime.device) for k, v in batch.items()}
                with self.runtime.autocast():
                    logits = self.model(batch["input_ids"], batch["attention_mask"])
                out[rows] = logits.float().cpu().numpy()
        return out, truncated
