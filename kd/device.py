"""Which device to train on, and the autocast that goes with it."""

from __future__ import annotations

import contextlib

import torch


def pick() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 mixed precision on CUDA (no loss scaling needed, unlike fp16); plain fp32 on the CPU,
    where bf16 matmuls are slower than fp32 on most x86 cores."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
