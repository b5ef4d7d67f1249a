"""TensorFlow "same" padding without a padded copy of the input (inference copies of TF-ported CNNs).

timm's ``Conv2dSame`` (the strided convolutions of ``tf_*`` models) pads its input with ``F.pad`` on every call,
because TF pads the right/bottom edge one pixel more than the left/top when the total is odd. On 2 CPU cores that
copy cost more than the convolution itself (lite0 at batch 16: 12 ms of a 30 ms feature pass in
``constant_pad_nd``, mostly writing the zero-filled padded tensor).

The same result comes from a plain convolution with symmetric padding ``left + 1`` and the kernel grown by one
leading zero row/column: the zero tap meets the extra left pixel, so every window covers exactly the inputs TF's
window covers, in the same order. It is exact (the outputs compared bit for bit equal on lite0's strided
layers) and needs no copy; ``benchmarks/backbone_speed.py`` times it. Dilated kernels keep the padded path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _same_split(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF "same" padding of one axis as (left, extra on the right): timm's ``get_same_padding`` split."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - 2 * (total // 2)


class PadFreeConv2dSame(nn.Conv2d):
    """A drop-in for timm's ``Conv2dSame`` that pads inside the convolution (see the module docstring); it
    shares the original's weight and bias."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None)
        self.weight, self.bias = conv.weight, conv.bias
        w = conv.weight.detach()
        # One grown kernel per axis that needs the extra right/bottom pixel (which depends on the input size).
        self.register_buffer("w_grow_h", F.pad(w, (0, 0, 1, 0)), persistent=False)
        self.register_buffer("w_grow_w", F.pad(w, (1, 0, 0, 0)), persistent=False)
        self.register_buffer("w_grow_hw", F.pad(w, (1, 0, 1, 0)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dilation != (1, 1):  # a leading zero tap would shift a dilated window by the dilation: pad
            top, extra_h = _same_split(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
            left, extra_w = _same_split(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
            x = F.pad(x, (left, left + extra_w, top, top + extra_h))
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        # int(): under torch.jit.trace the sizes become constants of a graph traced per input size.
        top, grow_h = _same_split(int(x.shape[-2]), self.kernel_size[0], self.stride[0], 1)
        left, grow_w = _same_split(int(x.shape[-1]), self.kernel_size[1], self.stride[1], 1)
        weight = {(0, 0): self.weight, (1, 0): self.w_grow_h, (0, 1): self.w_grow_w, (1, 1): self.w_grow_hw}[
            (grow_h, grow_w)
        ]
        return F.conv2d(x, weight, self.bias, self.stride, (top + grow_h, left + grow_w), 1, self.groups)


def remove_padding_copies(model: nn.Module) -> int:
    """Replace every timm ``Conv2dSame`` in ``model`` (in place) by :class:`PadFreeConv2dSame`; returns how many.

    For inference copies only: the grown kernels are snapshots of the weights, so training would not reach them.
    """
    try:
        from timm.layers import Conv2dSame
    except ImportError:  # an older timm without the class has nothing to replace
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is Conv2dSame:
                setattr(parent, name, PadFreeConv2dSame(child))
                replaced += 1
    return replaced
