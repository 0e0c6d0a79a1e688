"""kd: Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531, section 2 / eq. 2: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) +
(1 - alpha) * CE, with params.yaml's top-level `T` and `alpha` (`alpha = 1`, function matching,
reads no label)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from kd.config.params import Share, Temperature
from kd.losses import Hard, Loss
from kd.losses.common import soft_loss


def kd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, ce: Hard, k: SimpleNamespace,
       epoch: int, epochs: int) -> torch.Tensor:
    if k.alpha == 1:  # function matching: no label is read
        return soft_loss(s, t, k.T)
    if k.alpha == 0:
        return ce()
    return k.alpha * soft_loss(s, t, k.T) + (1 - k.alpha) * ce()


LOSS = Loss(
    name="kd", label="KD (Hinton et al. 2015)",
    paper="Hinton, Vinyals & Dean (2015), Distilling the Knowledge in a Neural Network",
    source="the paper, section 2", fn=kd, top_level=True,
    knobs={"T": Temperature, "alpha": Share},  # the soft term's temperature and weight
    recipe={})  # the paper fixes neither: T and alpha are chosen on validation (docs/results.md)
