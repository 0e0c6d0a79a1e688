"""What a distilled student learns from: the teacher's logits, through the distillation loss.

The training loop (kd/train/loop.py) asks a `Teacher` for each batch's loss; this module, which the
distill stage alone imports, joins the teacher's logits to kd/losses/__init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kd.config.params import Distill
from kd.losses import distillation_loss
from kd.train import device as devices
from kd.train.loop import Batch


@dataclass
class Teacher:
    """What a distilled student learns from: the teacher's logits, through `cfg.loss`'s whole
    loss (kd.losses; T and alpha are kd's). They are `cached` per training
    row (for un-augmented images: the soft_targets stage), or computed by `model` (in eval mode)
    on the student's very input tensor ("consistent" teaching, Beyer et al. 2022)."""

    T: float
    alpha: float
    cfg: Distill
    cached: torch.Tensor | None = None
    model: nn.Module | None = None
    setting: str = "kd"  # the loss and its settings in words (kd.config.params.describe_loss), for errors

    @torch.no_grad()
    def logits(self, batch: Batch) -> torch.Tensor:
        if self.model is None:
            return self.cached[batch.idx]
        with devices.autocast(batch.x.device):
            return self.model(batch.x).float()

    def loss(self, student_logits: torch.Tensor, batch: Batch, epoch: int) -> torch.Tensor:
        return distillation_loss(student_logits, self.logits(batch), batch.y, self.T, self.alpha,
                                 batch.partner_y, batch.lam, cfg=self.cfg, epoch=epoch)
