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


def hard_loss(logits: torch.Tensor, labels: torch.Tensor, partner_labels: torch.Tensor | None = None,
              lam: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with the true labels; for a mixup batch (image i = lam_i * image i + (1 -
    lam_i) * its partner), the same mix of the two images' cross-entropies."""
    if lam is None:
        return F.cross_entropy(logits, labels)
    own = F.cross_entropy(logits, labels, reduction="none")
    other = F.cross_entropy(logits, partner_labels, reduction="none")
    return (lam * own + (1 - lam) * other).mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, T: float, alpha: float,
                      partner_labels: torch.Tensor | None = None,
                      lam: torch.Tensor | None = None) -> torch.Tensor:
    """alpha * soft_loss + (1 - alpha) * cross-entropy with the true labels (Hinton eq. 2).

    alpha = 1 is function matching (Beyer et al. 2022): the labels are never read, so the
    transfer set may be unlabelled.
    """
    if alpha == 1:
        return soft_loss(student_logits, teacher_logits, T)
    hard = hard_loss(student_logits, labels, partner_labels, lam)
    if alpha == 0:
        return hard
    return alpha * soft_loss(student_logits, teacher_logits, T) + (1 - alpha) * hard
