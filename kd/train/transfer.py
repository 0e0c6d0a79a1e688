"""The transfer set and bias correction of Hinton et al. (2015), section 3.

Transfer-set controls decide which training images the distilled student learns from:
- omit classes (the paper's "omit all 3s": the student never sees a 3, yet learns it from the
  soft targets of other digits),
- keep only some classes (the paper's "only 7s and 8s"),
- a random fraction (the paper's 3%-of-the-data runs: soft targets as a regulariser).

A student that never saw a class as a hard label under-predicts it; the paper raises the bias of
the omitted class (3.5 for the 3s; lowers the biases of 7 and 8 by 7.6, which under softmax is
the same as raising every other class). `best_bias_shift` chooses that shift on the *validation*
split; the test split is never used to choose it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from kd.data.splits import Dataset, stratified_sample
from kd.train import loop, metrics

# Candidate shifts for the automatic bias correction (the paper's values, 3.5 and 7.6, lie inside).
SHIFT_GRID = torch.arange(0.0, 15.01, 0.1)
logger = logging.getLogger(__name__)


def transfer_indices(labels: torch.Tensor, omit: tuple[int, ...], keep: tuple[int, ...],
                     fraction: float, seed: int) -> torch.Tensor:
    """Row numbers of the training split that form the transfer set, in ascending order.

    `keep` (if non-empty) keeps only those classes, `omit` then drops classes, and `fraction`
    keeps a random, class-stratified share of what is left (at least one image per class left).
    """
    labels = labels.cpu()
    allowed = torch.ones(len(labels), dtype=torch.bool)
    if keep:
        allowed &= torch.isin(labels, torch.tensor(keep))
    if omit:
        allowed &= ~torch.isin(labels, torch.tensor(omit))
    idx = torch.nonzero(allowed).flatten()
    return idx if fraction == 1.0 else stratified_sample(labels, fraction, seed, rows=idx)


def absent_classes(labels: torch.Tensor, idx: torch.Tensor, num_classes: int) -> list[int]:
    """Classes with no image in the transfer set: the ones whose bias needs raising."""
    present = set(labels.cpu()[idx.cpu()].unique().tolist())
    return [c for c in range(num_classes) if c not in present]


def best_bias_shift(val_logits: torch.Tensor, val_labels: torch.Tensor, classes: list[int]
                    ) -> float:
    """The shift of `classes`' logits that maximises validation accuracy (smallest on ties)."""
    logits, labels = val_logits.float().cpu(), val_labels.cpu()
    mask = torch.zeros(logits.shape[1])
    mask[classes] = 1.0
    # All candidates at once: (shifts, N, classes).
    trial = logits[None] + SHIFT_GRID[:, None, None] * mask[None, None]
    acc = (trial.argmax(2) == labels[None]).float().mean(1)
    return float(SHIFT_GRID[int(torch.argmax(acc))])  # argmax returns the first maximum


@torch.no_grad()
def add_output_bias(model: nn.Module, classes: list[int], shift: float) -> None:
    """Raise the output layer's bias of `classes` by `shift`: the saved model is the corrected one."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    last.bias[classes] += shift


def correct_bias(model: nn.Module, data: Dataset, missing: list[int], setting: float | str) -> dict:
    """Apply the bias correction for `missing` classes to `model`; return what was done.

    `setting` is a fixed shift or "auto" (chosen on the validation split). The uncorrected test
    scores are returned too, so a report can show the effect "before and after".
    """
    if not missing:
        return {"bias_correction": 0.0}
    test_logits = loop.predict(model, data.test, data)
    before = metrics.scores(test_logits, data.test.y, "test")
    shift = (best_bias_shift(loop.predict(model, data.val, data), data.val.y, missing)
             if setting == "auto" else float(setting))
    add_output_bias(model, missing, shift)
    logger.info(f"bias correction: +{shift:.1f} on the logits of classes {missing} "
                f"({'chosen on validation' if setting == 'auto' else 'from params'})")
    return {"bias_correction": shift, "test_acc_uncorrected": before["test_acc"],
            "test_errors_uncorrected": before["test_errors"]}
