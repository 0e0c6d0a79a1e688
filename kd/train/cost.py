"""What a model costs to keep and to run: what distillation trades accuracy for.

- `size`: parameters, floating-point operations per image (what torch's own counter,
  `torch.utils.flop_counter`, counts: a multiply-add is 2 FLOPs; the Linear and Conv2d layers'
  products, not the elementwise ops; counted here from each such layer's output and weight,
  because entering that counter imports torch._dynamo, a second of every training stage's CPU;
  tests/test_cost.py holds the two equal) and the serialized size of its weights (the bytes
  `torch.save` writes for its state_dict). Functions of the architecture alone: the same on
  every machine, so they go into metrics/<model>.json.
- `speed`: CPU latency per image at batch 1 and throughput at batch 256, medians of repeated
  timed forward passes in eval mode without autograd, with the thread count they ran on. They
  vary by machine and by what else runs, so they go to MLflow and the report only.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from kd.process import cores, files
from kd.train import nets

LATENCY_RUNS, THROUGHPUT_RUNS, THROUGHPUT_BATCH = 100, 10, 256


def size(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, int]:
    """params, flops_per_image and size_bytes of `model` for inputs of `in_shape` (C, H, W)."""
    cpu = _eval_copy(model)  # a copy: the hooks below go with it
    flops = 0

    def count(layer: nn.Module, _inputs, out: torch.Tensor) -> None:
        nonlocal flops  # each output element is a dot product over a weight row: 2 FLOPs a term
        flops += 2 * out.numel() * layer.weight[0].numel()

    for layer in cpu.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            layer.register_forward_hook(count)
    with torch.no_grad():
        cpu(torch.zeros(1, *in_shape))
    return {"params": nets.count_params(model), "flops_per_image": flops,
            "size_bytes": len(files.torch_bytes(cpu.state_dict()))}


def speed(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, float]:
    """latency_ms (batch 1) and throughput_per_s (images per second at batch 256) on the CPU,
    each the median of its runs after one warm-up pass, and cost_threads."""
    cpu = _eval_copy(model)
    one, batch = torch.zeros(1, *in_shape), torch.zeros(THROUGHPUT_BATCH, *in_shape)
    with torch.no_grad(), cores.computing() as threads:
        latency = _median_seconds(cpu, one, LATENCY_RUNS)
        per_batch = _median_seconds(cpu, batch, THROUGHPUT_RUNS)
    return {"latency_ms": 1000 * latency, "throughput_per_s": THROUGHPUT_BATCH / per_batch,
            "cost_threads": threads}


def _eval_copy(model: nn.Module) -> nn.Module:
    """The model on the CPU in eval mode, leaving the caller's (maybe on a GPU, training) alone."""
    return copy.deepcopy(model).cpu().eval()


def _median_seconds(model: nn.Module, x: torch.Tensor, runs: int) -> float:
    model(x)  # warm-up: first-call allocations and kernel choice
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
