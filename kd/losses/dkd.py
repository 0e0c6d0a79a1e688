"""dkd: Zhao et al. (2022), "Decoupled Knowledge Distillation", CVPR, eq. 7, as the authors'
mdistiller trains it: ce * CE + warm-up * (alpha * TCKD + beta * NCKD) at temperature T, the
second term ramped up linearly over the first `warmup` share of the epochs (mdistiller: CE weight 1,
alpha 1, beta 8, T 4, 20 of 240 epochs on CIFAR-100).

TCKD is KD on the binary split (target class, all others); NCKD is KD among the non-target classes
alone. KD itself is TCKD + (1 - p_target of the teacher) * NCKD (their eq. 5), which couples the
non-target term to the teacher's confidence; DKD weighs the two freely.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from kd.config.params import NonNegative, Share, Temperature
from kd.losses import Hard, Loss
from kd.losses.common import kl_rows, weighted


def _split(logits: torch.Tensor, labels: torch.Tensor, T: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """At temperature T: log (p_target, 1 - p_target) per row (N, 2), and the log-softmax over the
    non-target classes alone (N, K - 1), in class order."""
    z = logits / T
    target = F.one_hot(labels, z.shape[1]).bool()
    others = z[~target].view(len(z), -1)
    total = torch.logsumexp(z, 1, keepdim=True)
    binary = torch.cat([z[target].unsqueeze(1), torch.logsumexp(others, 1, keepdim=True)], 1) - total
    return binary, F.log_softmax(others, 1)


def tckd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
         T: float) -> torch.Tensor:
    """DKD's target-class term per row: T^2 * KL of the binary (target, non-target) split."""
    return kl_rows(_split(student_logits, labels, T)[0], _split(teacher_logits, labels, T)[0]) * T * T


def nckd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
         T: float) -> torch.Tensor:
    """DKD's non-target-class term per row: T^2 * KL among the non-target classes."""
    return kl_rows(_split(student_logits, labels, T)[1], _split(teacher_logits, labels, T)[1]) * T * T


def dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, ce: Hard, k: SimpleNamespace,
        epoch: int, epochs: int) -> torch.Tensor:
    span = k.warmup * epochs  # in epochs, counted from 1 as mdistiller counts them
    warm = min(epoch / span, 1.0) if span else 1.0
    decoupled = k.alpha * tckd(s, t, y, k.T) + k.beta * nckd(s, t, y, k.T)
    return weighted(k.ce, ce) + warm * decoupled.mean()


LOSS = Loss(
    name="dkd", label="DKD (Zhao et al. 2022)",
    paper="Zhao et al. (2022), Decoupled Knowledge Distillation, CVPR",
    source="mdistiller, DKD with its CIFAR-100 config", fn=dkd, splits_by_label=True,
    knobs={"ce": NonNegative,  # weight of the cross-entropy with the labels
           "alpha": NonNegative,  # weight of the target-class term (TCKD)
           "beta": NonNegative,  # weight of the non-target-class term (NCKD)
           "T": Temperature,
           "warmup": Share},  # share of distill.epochs over which the KD terms ramp up
    recipe={"ce": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 0.0833})  # 20 of 240 epochs
