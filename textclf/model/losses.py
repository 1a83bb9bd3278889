"""Classification losses: cross-entropy / binary cross-entropy with class weights, focal loss, label smoothing.

:func:`classification_loss` is what :meth:`Trainer.compute_loss <textclf.Trainer.compute_loss>` calls, driven by
``TrainConfig.class_weights``, ``focal_gamma`` and ``label_smoothing``. Everything is computed in fp32 (the softmax
of bf16/fp16 logits loses accuracy).

Class weights are *sample weights*: each row's loss is multiplied by the weight of its class and the batch mean is
taken over rows (as scikit-learn's ``class_weight``), not divided by the summed weights as ``F.cross_entropy(weight=)``
does. So a batch whose rows all have weight 3 has three times the loss, and "balanced" weights, which average 1 over
the training set, keep the loss (and the learning rate that suits it) on the usual scale.

For multi-label data the weights are BCE ``pos_weight`` values: the positive term of label ``c`` is multiplied by
``w_c`` (``"balanced"``: negatives / positives of that label in the training data).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.labels import LabelMap
from ..errors import ConfigError


def class_weight_vector(spec: str | Sequence[float] | None, label_map: LabelMap, train_labels: np.ndarray | None
                        ) -> torch.Tensor | None:
    """The ``[C]`` weight vector of ``TrainConfig.class_weights``.

    Args:
        spec: ``None``, ``"balanced"``, ``"label=weight,label=weight"`` (unlisted labels weigh 1) or a list of ``C``
            weights in label-id order.
        label_map: the labels.
        train_labels: the encoded training labels (ids ``[N]``, or multi-hot ``[N, C]`` for multi-label data); only
            ``"balanced"`` needs them.

    Returns:
        ``None`` (no weighting) or a float32 tensor ``[C]``. Single-label ``"balanced"``: ``N / (C * count_c)``;
        multi-label ``"balanced"``: ``negatives_c / positives_c``. A class without training rows gets weight 1.

    Raises:
        ConfigError: an unknown label name, a weight list of the wrong length, or no training labels.
    """
    if spec is None:
        return None
    num_labels = len(label_map)
    if isinstance(spec, str) and spec == "balanced":
        if train_labels is None or len(train_labels) == 0:
            raise ConfigError("train.class_weights: 'balanced' needs labelled training data")
        labels = np.asarray(train_labels)
        if label_map.multi_label:
            positives = labels.sum(0).astype(np.float64)
            negatives = len(labels) - positives
            weights = np.divide(negatives, positives, out=np.ones(num_labels), where=positives > 0)
        else:
            counts = np.bincount(labels.astype(np.int64), minlength=num_labels).astype(np.float64)
            weights = np.divide(len(labels), num_labels * counts, out=np.ones(num_labels), where=counts > 0)
        return torch.tensor(weights, dtype=torch.float32)
    if isinstance(spec, str):
        weights = np.ones(num_labels)
        for entry in spec.split(","):
            name, _, value = entry.partition("=")
            if name.strip() not in label_map:
                raise ConfigError(f"train.class_weights: unknown label {name.strip()!r} in {spec!r}; the labels are "
                                  f"{label_map.names}")
            weights[label_map.encode(name.strip())] = float(value)
        return torch.tensor(weights, dtype=torch.float32)
    weights = np.asarray(list(spec), dtype=np.float64)
    if weights.shape != (num_labels,) or (weights < 0).any():
        raise ConfigError(f"train.class_weights: expected {num_labels} weights >= 0 (one per label, in the order "
                          f"{label_map.names}), got {list(spec)}")
    return torch.tensor(weights, dtype=torch.float32)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool = False,
                        class_weights: torch.Tensor | None = None, focal_gamma: float | None = None,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean loss of a batch.

    Args:
        logits: ``[B, C]`` (any float dtype; computed in fp32).
        targets: class ids ``[B]``, or multi-hot ``[B, C]`` for multi-label data.
        multi_label: sigmoid + binary cross-entropy per label instead of softmax + cross-entropy.
        class_weights: ``[C]`` from :func:`class_weight_vector` (sample weights; multi-label: ``pos_weight``).
        focal_gamma: focal loss ``-(1 - p_t)^gamma * log p_t`` (Lin et al., 2017) instead of cross-entropy;
            ``0`` equals cross-entropy. With ``class_weights`` these act as its alpha.
        label_smoothing: ``epsilon``: single-label targets as in ``F.cross_entropy(label_smoothing=)``; multi-label
            targets become ``y (1 - epsilon) + epsilon / 2``.

    Returns:
        A scalar tensor.
    """
    logits = logits.float()
    if class_weights is not None:
        class_weights = class_weights.to(logits.device)
    if multi_label:
        targets = targets.float()
        if label_smoothing:
            targets = targets * (1 - label_smoothing) + label_smoothing / 2
        per_entry = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=class_weights, reduction="none")
        if focal_gamma:
            p = logits.sigmoid()
            p_true = p * targets + (1 - p) * (1 - targets)  # the probability given to the right answer
            per_entry = (1 - p_true).pow(focal_gamma) * per_entry
        return per_entry.mean()
    if focal_gamma is None:
        per_row = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
    else:
        log_p = F.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
        per_row = -(1 - log_p.exp()).pow(focal_gamma) * log_p
    if class_weights is not None:
        per_row = per_row * class_weights[targets]
    return per_row.mean()
