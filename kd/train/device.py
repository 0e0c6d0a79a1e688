"""Which device to train on, and the autocast that goes with it."""

from __future__ import annotations

import contextlib
import os

import torch


def pick() -> torch.device:
    """The GPU when there is one (under torchrun, this rank's: LOCAL_RANK), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = os.environ.get("LOCAL_RANK")
    return torch.device("cuda") if local is None else torch.device("cuda", int(local))


def autocast(device: torch.device):
    """bf16 mixed precision on CUDA (no loss scaling needed, unlike fp16); plain fp32 on the CPU,
    where bf16 matmuls are slower than fp32 on most x86 cores."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
