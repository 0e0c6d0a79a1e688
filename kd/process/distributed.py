"""Data-parallel training when a stage is started by `torchrun` (params.yaml's `launch`).

torchrun starts one process per rank and sets RANK, WORLD_SIZE and LOCAL_RANK; a stage started
by plain `python` sees none of them and runs exactly as it always has: every function here is
then the identity (rank 0 of 1, no process group, no collective).

Under torchrun:
- every rank holds the whole dataset in memory, draws the same permutation and augmentations
  from the same seeded generators, and trains on its own contiguous share of each global batch
  (`share`), so `batch_size` and `lr` mean what they mean in one process;
- DistributedDataParallel averages the gradients (gloo on the CPU, NCCL on GPUs); BatchNorm is
  SyncBatchNorm on GPUs (torch's SyncBatchNorm refuses CPU tensors, so on the CPU each rank
  normalises by its share's statistics, and rank 0's running statistics are broadcast);
- evaluation is sharded by rows and gathered in order (`gather_rows`), so every rank holds the
  same logits, scores and best epoch;
- only rank 0 prints, writes outputs and talks to MLflow; a failing rank makes torchrun stop the
  others, and a collective that waits longer than TIMEOUT raises instead of hanging.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from kd.errors import PipelineError

# The longest one rank waits for the others at a collective. Ranks do the same work between
# collectives (rank 0's extra MLflow logging takes milliseconds per epoch), so a wait this long
# means a rank is stuck or gone.
TIMEOUT = timedelta(minutes=5)


def launched() -> bool:
    """Whether torchrun started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def session() -> Iterator[None]:
    """Join the process group for the stage's duration (nothing in a single process).

    Non-zero ranks send their stdout to /dev/null, so progress prints once; their errors still
    reach stderr, prefixed with the rank by kd.process.cli.
    """
    if not launched() or dist.is_initialized():
        yield
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        yield
    except dist.DistError as e:  # a peer died or a collective timed out: one line, not a trace
        raise PipelineError(f"distributed training stopped: {str(e).splitlines()[0]}") from None
    # Only after success: a failed rank exits at once and torchrun stops the others.
    dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def check_batch(key: str, batch_size: int) -> None:
    """Each rank takes an equal share of every batch, or the averaged gradient would weight the
    images unequally."""
    w = world_size()
    if batch_size % w:
        raise PipelineError(f"{key}.batch_size {batch_size} must be divisible by the number of "
                            f"ranks ({w}); set it to a multiple of {w} or launch fewer ranks")


def share(n: int) -> slice:
    """This rank's contiguous rows of an n-row global batch (all of them in one process)."""
    per = n // world_size()
    return slice(rank() * per, (rank() + 1) * per)


def data_parallel(model: nn.Module, seed: int) -> nn.Module:
    """The module to train: the model itself in one process, else DDP around it (the same
    parameter tensors: `model` keeps seeing the trained weights)."""
    if world_size() == 1:
        return model
    # Each rank's share of the batch gets its own dropout masks (one process draws one mask for
    # the whole batch; identical seeds would repeat the masks across shares).
    torch.manual_seed(seed + rank())
    cuda = next(model.parameters()).is_cuda
    if cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place for a Sequential/Module
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[torch.cuda.current_device()] if cuda else None)


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before evaluating: without
    SyncBatchNorm each rank's last step updated them from its own share."""
    if world_size() > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


def mean(t: torch.Tensor) -> torch.Tensor:
    """The average of a tensor over the ranks."""
    if world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world_size()


def rows(n: int) -> range:
    """The rows of an n-row split this rank evaluates: a contiguous block, in rank order."""
    per = math.ceil(n / world_size())
    return range(min(n, rank() * per), min(n, (rank() + 1) * per))


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's `rows(n)` block of results, concatenated in row order, on every rank."""
    if world_size() == 1:
        return local
    per = math.ceil(n / world_size())
    padded = local.new_zeros((per, *local.shape[1:]))
    padded[:len(local)] = local
    blocks = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(blocks, padded)
    return torch.cat(blocks)[:n]
