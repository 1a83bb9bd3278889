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

    def soft_target_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """Distillation's soft term (Hinton et al., 2015): ``T^2 x KL(softmax(teacher / T) || softmax(student / T))``,
        the mean over rows, in fp32 (bf16 log-probabilities are too coarse); zero when the two agree."""
        t = temperature
        student = torch.log_softmax(student.float() / t, dim=-1)
        teacher = torch.log_softmax(teacher.float() / t, dim=-1)
        return torch.nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)


class SigmoidLink:
    """Any number of labels per text: one sigmoid per label."""

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def logits(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Scores whose sigmoid is ``probabilities`` (log-odds, clamped so 0 and 1 stay finite)."""
        probabilities = probabilities.clamp(1e-7, 1 - 1e-7)
        return torch.log(probabilities) - torch.log1p(-probabilities)

    def soft_target_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """The same for independent labels: ``T^2 x`` the binary KL divergence of each label's softened sigmoid,
        the mean over rows and labels (the scale of the binary cross-entropy it is mixed with), in fp32."""
        t = temperature
        student, teacher = student.float() / t, teacher.float() / t
        p = teacher.sigmoid()
        logsig = torch.nn.functional.logsigmoid
        kl = p * (logsig(teacher) - logsig(student)) + (1 - p) * (logsig(-teacher) - logsig(-student))
        return kl.mean() * (t * t)


def link_for(label_map) -> SoftmaxLink | SigmoidLink:
    """The link of a label set (a :class:`~textclf.data.labels.LabelMap`)."""
    return SigmoidLink() if label_map.multi_label else SoftmaxLink()
