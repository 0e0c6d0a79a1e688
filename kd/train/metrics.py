"""Scores of a model's test logits: the same keys for teacher, student and distilled student.

In:  logits (N, classes) and int64 labels (N,). Out: plain floats/ints, ready for JSON and MLflow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017): sum_b |acc_b - conf_b| * n_b / N."""
    conf, pred = logits.float().cpu().softmax(1).max(1)  # logits may be on the GPU, labels not
    correct = (pred == labels.cpu()).float()
    which = torch.clamp((conf * bins).long(), max=bins - 1)
    # Per bin, sum(correct - conf) = n_b * (acc_b - conf_b).
    gap = torch.bincount(which, weights=correct - conf, minlength=bins).abs()
    return float(gap.sum()) / max(1, len(labels))


def scores(logits: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, float]:
    """Loss, accuracy and error count (the paper's unit) under `prefix_`."""
    logits, labels = logits.float().cpu(), labels.cpu()
    errors = int((logits.argmax(1) != labels).sum())
    return {f"{prefix}_loss": float(F.cross_entropy(logits, labels)),
            f"{prefix}_acc": 1.0 - errors / len(labels),
            f"{prefix}_errors": errors}


def per_class_errors(logits: torch.Tensor, labels: torch.Tensor, classes: int) -> list[int]:
    """Misclassified test images of each true class."""
    wrong = (logits.cpu().argmax(1) != labels.cpu()).long()
    return torch.bincount(labels.cpu(), weights=wrong, minlength=classes).long().tolist()


def agreement(a_logits: torch.Tensor, b_logits: torch.Tensor) -> float:
    """Fraction of images on which two models predict the same class."""
    return float((a_logits.cpu().argmax(1) == b_logits.cpu().argmax(1)).float().mean())
