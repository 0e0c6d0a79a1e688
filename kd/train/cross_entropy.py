"""Cross-entropy with the true labels, the loss of every supervised step: a teacher's and a
student baseline's whole loss, and the label term of each distillation loss (kd/losses/).

Its own module so that the training loop (kd/train/loop.py), which the teacher and student stages run,
does not import the distillation losses: editing or adding a loss reruns only distillation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_loss(logits: torch.Tensor, labels: torch.Tensor, partner_labels: torch.Tensor | None = None,
              lam: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with the true labels; for a mixup batch (image i = lam_i * image i + (1 -
    lam_i) * its partner), the same mix of the two images' cross-entropies."""
    if lam is None:
        return F.cross_entropy(logits, labels)
    own = F.cross_entropy(logits, labels, reduction="none")
    other = F.cross_entropy(logits, partner_labels, reduction="none")
    return (lam * own + (1 - lam) * other).mean()
