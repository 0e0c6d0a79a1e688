"""dist: Huang et al. (2022), "Knowledge Distillation from A Stronger Teacher", NeurIPS, as the
authors' classification code trains it: CE + tau^2 * (beta * (1 - mean Pearson correlation of each
image's class probabilities) + gamma * (1 - mean Pearson correlation of each class's
probabilities over the batch)), probabilities at temperature tau (theirs: 1, so no temperature;
beta = gamma = 1). The second (intra-class) term is not a mean over images: under torchrun it is
each rank's share of the batch, as in the authors' own multi-GPU training."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from kd.config.params import NonNegative, Temperature
from kd.losses import Hard, Loss


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b: (N, K) -> (N,)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


def dist(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, ce: Hard, k: SimpleNamespace,
         epoch: int, epochs: int) -> torch.Tensor:
    p_s, p_t = F.softmax(s / k.tau, 1), F.softmax(t / k.tau, 1)
    inter = 1 - _pearson_rows(p_s, p_t).mean()  # each image: its classes' probabilities
    intra = 1 - _pearson_rows(p_s.T, p_t.T).mean()  # each class: its probability over the batch
    return ce() + k.tau * k.tau * (k.beta * inter + k.gamma * intra)


LOSS = Loss(
    name="dist", label="DIST (Huang et al. 2022)",
    paper="Huang et al. (2022), Knowledge Distillation from A Stronger Teacher, NeurIPS",
    source="hunto/image_classification_sota, dist_kd.py", fn=dist,
    knobs={"beta": NonNegative,  # weight of the inter-class relation (each image's classes)
           "gamma": NonNegative,  # weight of the intra-class relation (each class over a batch)
           "tau": Temperature},
    recipe={"beta": 1.0, "gamma": 1.0, "tau": 1.0})
