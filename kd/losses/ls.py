"""ls: Sun et al. (2024), "Logit Standardization in Knowledge Distillation", CVPR, as their code
trains KD with it: ce * CE + kd * T^2 * KL on each row's z-scores (logits minus their mean, over
their sample standard deviation) at base temperature T (theirs on CIFAR-100: CE weight 1, KD
weight 9, base temperature 2), so the student matches the teacher's logit *relations*, not their
range."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from kd.config.params import NonNegative, Temperature
from kd.losses import Hard, Loss
from kd.losses.common import soft_loss, weighted

EPS = 1e-7  # the authors' guard for a row whose logits are all equal (standard deviation 0)


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Each row's z-scores: minus the row's mean, over its sample (n - 1) standard deviation."""
    return (logits - logits.mean(1, keepdim=True)) / (EPS + logits.std(1, keepdim=True))


def ls(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, ce: Hard, k: SimpleNamespace,
       epoch: int, epochs: int) -> torch.Tensor:
    return weighted(k.ce, ce) + k.kd * soft_loss(standardize(s), standardize(t), k.T)


LOSS = Loss(
    name="ls", label="KD + logit standardisation (Sun et al. 2024)",
    paper="Sun et al. (2024), Logit Standardization in Knowledge Distillation, CVPR",
    source="logit-standardization-KD, KD.py with --logit-stand --base-temp 2 --kd-weight 9", fn=ls,
    knobs={"ce": NonNegative,  # weight of the cross-entropy with the labels
           "kd": NonNegative,  # weight of the KD term on standardised logits
           "T": Temperature},  # base temperature
    recipe={"ce": 1.0, "kd": 9.0, "T": 2.0})
