"""The distillation loss of Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531, section 2 / eq. 2:

    loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

- KL is averaged over the batch (`reduction="batchmean"`); `"mean"` would also divide by the
  number of classes and silently shrink the soft term.
- T^2 keeps the soft term's gradient scale independent of T: d/ds of the soft term is
  T * (softmax(s/T) - softmax(t/T)) / batch, which tends to (s - t) / (classes * batch) at high T
  for zero-mean logits (the paper's logit-matching limit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    p_teacher = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (T * T)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, T: float, alpha: float) -> torch.Tensor:
    """alpha * soft_loss + (1 - alpha) * cross-entropy with the true labels (Hinton eq. 2)."""
    hard = F.cross_entropy(student_logits, labels)
    if alpha == 0:
        return hard
    return alpha * soft_loss(student_logits, teacher_logits, T) + (1 - alpha) * hard
