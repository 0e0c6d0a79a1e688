"""A Conv2d whose gradients do not depend on the number of CPU threads.

oneDNN's CPU convolution computes the weight gradient, a sum over every image and pixel of the
batch, by giving each thread a share of the batch and adding the shares up; how it shares depends
on the thread count (from 3 threads on, for the default teacher's layers), so 2 and 8 threads
give weights that differ in the last bits, and a result that depends on the machine's cores.
The forward pass has no such split (each output element is one fixed sum), nor has the input
gradient of an unstrided convolution; a strided one's has (oneDNN's brgconv_strided kernel).

Under portable numerics (kd/numerics.py) this layer's backward therefore computes the weight (and
bias) gradient, and a strided layer's input gradient, on one thread, whose summation order is the
same on every machine; an unstrided layer's input gradient on every thread. On the GPU, under
`native` numerics, and wherever no gradient is wanted (evaluation, serving), it is exactly
nn.Conv2d. Its parameters and state_dict are nn.Conv2d's, so checkpoints load into either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kd import numerics


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

        def backward(mask):  # aten's convolution_backward: (input, weight, bias) gradients
            return torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if has_bias else None, stride, padding,
                dilation, False, [0, 0], groups, mask)

        # Strided convolutions' input gradient too: oneDNN's kernel for it (brgconv_strided)
        # also splits its sums by thread. Unstrided, it is one fixed sum per element.
        serial = [need_x and max(stride) > 1, need_w, need_b and has_bias]
        gx = backward([True, False, False])[0] if need_x and not serial[0] else None
        gw = gb = None
        if any(serial):
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                sx, gw, gb = backward(serial)
            finally:
                torch.set_num_threads(threads)
            gx = sx if serial[0] else gx
        return gx, gw, gb, None, None, None, None


class Conv2d(nn.Conv2d):
    """nn.Conv2d (zero padding) with thread-independent gradients on the CPU (see above)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or not torch.is_grad_enabled() or not numerics.portable()
                or not self.weight.requires_grad):
            return super().forward(x)
        return _FixedOrderConv.apply(x, self.weight, self.bias, self.stride, self.padding,
                                     self.dilation, self.groups)
