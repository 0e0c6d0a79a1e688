"""What the hardware can do, for comparison: the GEMM rate of an MLP's layer shapes, the cost of an
optimiser step, and evaluation throughput (kd.loop.predict against a DataLoader loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from benchmarks.common import sync
from benchmarks.loops import Role, Setup, build, subset
from kd import device as devices
from kd import loop
from kd.archs import parse_arch


def layer_shapes(arch: str, in_features: int, classes: int) -> list[tuple[int, int]]:
    """(in, out) of each Linear of an `mlp:` architecture, e.g. 784->1200->1200->10."""
    kind, widths = parse_arch(arch)
    if kind != "mlp":
        raise ValueError(f"the GEMM reference needs an mlp: architecture, not {arch}")
    sizes = [in_features, *widths, classes]
    return list(zip(sizes[:-1], sizes[1:], strict=True))


def gemm_rate(dev: torch.device, batch: int, shapes: list[tuple[int, int]]
              ) -> Callable[[int], float]:
    """FLOP/s of the GEMMs one training step of these layers does, and nothing else, over
    `iters` steps.

    Per Linear(in, out) on a batch B, in the orientation nn.Linear uses: forward X @ W^T, backward
    dY @ W (input gradient) and dY^T @ X (weight gradient): 3 x 2*B*in*out FLOPs. Under the
    loop's autocast (fp32 on the CPU, bf16 on CUDA), so the ceiling matches what training runs.
    """
    g = torch.Generator(device=dev).manual_seed(0)
    mats = [(torch.randn(o, i, generator=g, device=dev), torch.randn(batch, i, generator=g, device=dev),
             torch.randn(batch, o, generator=g, device=dev)) for i, o in shapes]
    flops_per_step = sum(6 * batch * i * o for i, o in shapes)

    def run(iters: int) -> float:
        sync(dev)
        t0 = time.perf_counter()
        with devices.autocast(dev):
            for _ in range(iters):
                for w, x, dy in mats:
                    torch.mm(x, w.t())
                    torch.mm(dy, w)
                    torch.mm(dy.t(), x)
        sync(dev)
        return iters * flops_per_step / (time.perf_counter() - t0)
    return run


def optimizer_step_ms(s: Setup, r: Role, **sgd_kw) -> Callable[[int], float]:
    """Milliseconds of one SGD step (the loop's settings) over the model's parameters."""
    model = build(s, r).train()
    opt = torch.optim.SGD(model.parameters(), lr=r.train.lr, momentum=r.train.momentum,
                          nesterov=r.train.momentum > 0, weight_decay=r.train.weight_decay, **sgd_kw)
    x = torch.zeros((r.train.batch_size, *s.ds.in_shape), device=s.dev)
    F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long, device=s.dev)).backward()

    def run(iters: int) -> float:
        sync(s.dev)
        t0 = time.perf_counter()
        for _ in range(iters):
            opt.step()
        sync(s.dev)
        return 1000 * (time.perf_counter() - t0) / iters
    return run


def eval_rates(s: Setup, r: Role, n: int, batches: tuple[int, ...]
               ) -> dict[str, Callable[[int], float]]:
    """Contenders for test-split samples/s: kd.loop.predict at each batch size, and a DataLoader
    loop (batch 1000, as pytorch/examples' mnist does) as the usual way. Each call scores the
    first n test images once (the argument is unused: an evaluation is one pass)."""
    model = build(s, r).eval()
    data = subset(s.ds, 1, n)
    tv_test = torch.utils.data.Subset(s.tv_test, range(n))

    def timed(fn: Callable[[], object]) -> Callable[[int], float]:
        def run(_: int) -> float:
            sync(s.dev)
            t0 = time.perf_counter()
            fn()
            sync(s.dev)
            return n / (time.perf_counter() - t0)
        return run

    @torch.no_grad()
    def usual() -> torch.Tensor:
        outs = []
        for x, _ in DataLoader(tv_test, batch_size=1000, num_workers=s.workers):
            with devices.autocast(s.dev):
                outs.append(model(x.to(s.dev)).float())
        return torch.cat(outs)
    fns = {f"predict@{b}": timed(lambda b=b: loop.predict(model, data.test, data, b))
           for b in batches}
    return {**fns, "usual": timed(usual)}
