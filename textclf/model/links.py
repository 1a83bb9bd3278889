"""Link functions: how a classifier's logits become probabilities, and how probabilities become logits again.

One label per text reads its logits through a softmax (a row's probabilities sum to one); multi-label reads each
label through its own sigmoid. The task objects (:mod:`textclf.eval.tasks`) take probabilities through a link, and
a soft-voting ensemble (:mod:`textclf.model.ensemble`) averages its members' probabilities and maps the mean back
to logits with the inverse, so the two never disagree about the function.
"""

from __future__ import annotations

import torch


class SoftmaxLink:
    """One label per text."""

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)

    def logits(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Scores whose softmax is ``probabilities`` (log-probabilities; a zero stays finite)."""
        return torch.log(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny))


class SigmoidLink:
    """Any number of labels per text: one sigmoid per label."""

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def logits(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Scores whose sigmoid is ``probabilities`` (log-odds, clamped so 0 and 1 stay finite)."""
        probabilities = probabilities.clamp(1e-7, 1 - 1e-7)
        return torch.log(probabilities) - torch.log1p(-probabilities)


def link_for(label_map) -> SoftmaxLink | SigmoidLink:
    """The link of a label set (a :class:`~textclf.data.labels.LabelMap`)."""
    return SigmoidLink() if label_map.multi_label else SoftmaxLink()
