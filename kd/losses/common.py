"""What several losses share: the softened KL divergence, and a weight that skips its term at 0."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    KL is averaged over the batch (`reduction="batchmean"`); `"mean"` would also divide by the
    number of classes and silently shrink the soft term. T^2 keeps the soft term's gradient scale
    independent of T: d/ds of the soft term is T * (softmax(s/T) - softmax(t/T)) / batch, which
    tends to (s - t) / (classes * batch) at high T for zero-mean logits (the paper's
    logit-matching limit).
    """
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    p_teacher = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (T * T)


def kl_rows(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of each row, from log-probabilities: (N, K) -> (N,)."""
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1)


def weighted(weight: float, term: Callable[[], torch.Tensor]) -> torch.Tensor | float:
    """weight * term(), without computing the term (nor reading a label) at weight 0."""
    return weight * term() if weight else 0.0
