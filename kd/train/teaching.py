"""What a distilled student learns from: the teacher's logits, through the distillation loss.

The training loop (kd/train/loop.py) asks a `Teacher` for each batch's loss; this module, which the
distill stage alone imports, joins the teacher's logits to the loss (kd/losses/).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kd.losses import Loss, distillation_loss
from kd.train import device as devices
from kd.train.loop import Batch


@dataclass
class Teacher:
    """What a distilled student learns from: the teacher's logits, through `objective`'s whole
    training loss at `knobs` (kd.losses), over `epochs` epochs. The logits are `cached` per training
    row (for un-augmented images: the soft_targets stage), or computed by `model` (in eval mode)
    on the student's very input tensor ("consistent" teaching, Beyer et al. 2022)."""

    objective: Loss
    knobs: dict[str, float]
    epochs: int
    cached: torch.Tensor | None = None
    model: nn.Module | None = None
    setting: str = "kd"  # the loss and its settings in words (kd.losses.describe), for errors

    @torch.no_grad()
    def logits(self, batch: Batch) -> torch.Tensor:
        if self.model is None:
            return self.cached[batch.idx]
        with devices.autocast(batch.x.device):
            return self.model(batch.x).float()

    def loss(self, student_logits: torch.Tensor, batch: Batch, epoch: int) -> torch.Tensor:
        return distillation_loss(student_logits, self.logits(batch), batch.y, self.objective, self.knobs,
                                 epoch=epoch, epochs=self.epochs, partner_labels=batch.partner_y,
                                 lam=batch.lam)
