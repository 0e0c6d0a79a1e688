"""Conv2d and BatchNorm2d whose sums do not depend on the number of CPU threads.

Under portable numerics (kd/process/numerics.py) a result must be the same bytes at any thread count, yet
two CPU kernels split a sum between threads, each thread adding up a share and the shares added
at the end, in a way that depends on how many threads there are:
  - oneDNN's convolution weight gradient (a sum over every image and pixel of the batch), and a
    strided convolution's input gradient (its brgconv_strided kernel);
  - ATen's BatchNorm: the batch mean and variance forward, the per-channel sums of the gradient
    and of gradient x input backward.
These layers compute the same quantities from sums whose order is fixed by the tensors' shapes
alone, with every thread working, on channels-last (N, H, W, C) tensors:
  - a convolution's gradients image chunk by image chunk: fixed chunks of CHUNK images, each
    chunk's gradients computed by oneDNN on one thread (one fixed order), the chunks shared among
    a pool of one-thread workers as many as the process has threads; the weight gradient is the
    chunks' sum, added in chunk order, a strided input gradient their concatenation;
  - a per-channel sum as one sum per image over its pixels (ATen parallelises that reduction over
    the images, its outer-most kept axis, so each sum is one thread's), then per channel the sum
    of those partial sums, laid out (C, N) so each channel is one contiguous row, one thread's.
The forward convolution and an unstrided one's input gradient have no split sum (each output
element is one fixed sum), and run on every thread as they are. (MKL's strict mode does not
make a matrix multiply with a long inner dimension and a small output thread-independent: at
12 and 16 threads its im2col weight gradient differed, so that lead was not taken.)
Everything else is nn.Conv2d / nn.BatchNorm2d: parameters, buffers and
state_dict, so checkpoints load into either; on the GPU, under `native` numerics and wherever no
gradient or batch statistic is wanted (evaluation, serving) they are exactly the nn layers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from kd.process import numerics

CHUNK = 16  # images per one-thread gradient: fixed, so a sum's order is the batch's alone

_pool: tuple[int, ThreadPoolExecutor] | None = None  # (its workers, the pool) once needed


def _fixed(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether a layer must take its fixed-order path: training on the CPU under portable
    numerics, with a gradient or a batch statistic to compute."""
    return (x.device.type == "cpu" and numerics.portable() and torch.is_grad_enabled()
            and any(p is not None and p.requires_grad for p in params))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> the (N, H*W, C) view of its channels-last layout (copied only if not)."""
    n, c = t.shape[:2]
    return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n, -1, c)


def channel_sums(rows: torch.Tensor) -> torch.Tensor:
    """(N, L, C) -> (C,): per image, then per channel (see the module's docstring)."""
    return rows.sum(1).t().contiguous().sum(1)


def _one_thread() -> None:
    """A worker's setup. torch sets a thread's count from its process-wide default on the
    thread's first parallel op, unless the thread has asked for its count before
    (get_num_threads): ask first, or the worker would later take the default back."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def _workers() -> ThreadPoolExecutor:
    """A pool of as many workers as this process has threads, each computing on one thread."""
    global _pool
    threads = torch.get_num_threads()
    if _pool is None or _pool[0] != threads:
        if _pool is not None:
            _pool[1].shutdown(wait=False)
        pool = ThreadPoolExecutor(threads, "fixed-order", _one_thread)
        # Start every worker now (each waits at the barrier until all have started): a worker's
        # set_num_threads(1) is its own (OpenMP and MKL keep it per thread), but torch also
        # records it as the default of threads that start later, which is put back here.
        started = threading.Barrier(threads)
        list(pool.map(lambda _: started.wait(), range(threads)))
        torch.set_num_threads(threads)
        _pool = (threads, pool)
    return _pool[1]


def _in_chunks(fn: Callable[[slice], torch.Tensor], images: int) -> list[torch.Tensor]:
    """fn over fixed chunks of CHUNK images, in order, each on one thread, the chunks shared
    among the workers (a result does not depend on which worker computed it, nor on how many
    there are)."""
    return list(_workers().map(fn, [slice(i, i + CHUNK) for i in range(0, images, CHUNK)]))


class _FixedOrderConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad = grad.contiguous(memory_format=torch.channels_last)

        def onednn(part: slice | None, mask: list[bool]) -> tuple[torch.Tensor, ...]:
            """aten's convolution_backward of the images in `part` (None: all of them)."""
            g, i = (grad, x) if part is None else (grad[part], x[part])
            return torch.ops.aten.convolution_backward(
                g, i, weight, None, stride, padding, dilation, False, [0, 0], groups, mask)

        gx = gw = gb = None
        if need_x and max(stride) == 1:  # one fixed sum per element, on every thread
            gx = onednn(None, [True, False, False])[0]
        elif need_x:  # each image's input gradient is its own: chunks, concatenated
            gx = torch.cat(_in_chunks(lambda p: onednn(p, [True, False, False])[0], x.shape[0]))
        if need_w:  # a sum over the images: per chunk, the chunks added in order
            parts = _in_chunks(lambda p: onednn(p, [False, True, False])[1], x.shape[0])
            gw = parts[0]
            for part in parts[1:]:
                gw = gw + part
        if need_b and has_bias:
            gb = channel_sums(_rows(grad))
        return gx, gw, gb, None, None, None, None


class Conv2d(nn.Conv2d):
    """nn.Conv2d (zero padding) with thread-independent gradients on the CPU (see above)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fixed(x, self.weight, self.bias) or isinstance(self.padding, str):
            return super().forward(x)
        return _FixedOrderConv.apply(x, self.weight, self.bias, self.stride, self.padding,
                                     self.dilation, self.groups)


class _FixedOrderBatchNorm(torch.autograd.Function):
    # Each big intermediate (centred**2 forward, grad * centred backward) is written into the
    # output's own memory before the output: a fresh 10 MB temporary costs its page faults.
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        rows = _rows(x)  # (N, H*W, C)
        count = rows.shape[0] * rows.shape[1]
        mean = channel_sums(rows) / count
        centred = rows - mean  # kept for backward in place of x
        # its own tensor, written through a view: autograd lets ReLU(inplace) follow it
        out = torch.empty_like(x, memory_format=torch.channels_last)
        y = _rows(out)
        var = channel_sums(torch.mul(centred, centred, out=y)) / count  # centred: no cancellation
        invstd = torch.rsqrt(var + eps)
        torch.addcmul(bias, centred, invstd * weight, out=y)
        ctx.save_for_backward(centred, invstd, weight)
        ctx.count = count
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad, _mean, _var):
        centred, invstd, weight = ctx.saved_tensors
        g = _rows(grad)
        gx = torch.empty_like(grad, memory_format=torch.channels_last)
        dx = _rows(gx)
        sum_g, sum_gc = channel_sums(g), channel_sums(torch.mul(g, centred, out=dx))
        # d/dx of weight * (x - mean) * invstd, through the batch's mean and invstd:
        # weight * invstd * (g - sum_g / count - (x - mean) * invstd^2 * sum_gc / count)
        scale = weight * invstd
        torch.addcmul(-scale * sum_g / ctx.count, g, scale, out=dx)
        dx.addcmul_(centred, -scale * invstd * invstd * sum_gc / ctx.count)
        return gx, sum_gc * invstd, sum_g, None


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d with thread-independent batch statistics on the CPU (see above)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or not self.affine or not self.track_running_stats
                or self.momentum is None or x.device.type != "cpu" or not numerics.portable()):
            return super().forward(x)
        out, mean, var = _FixedOrderBatchNorm.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():  # as nn.BatchNorm2d: the variance unbiased, momentum-averaged
            count = x.numel() // x.shape[1]
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * (count / max(count - 1, 1)), self.momentum)
            self.num_batches_tracked.add_(1)
        return out
