"""Layers of MP3net with TensorFlow's semantics, in PyTorch (NCHW: C channels, H = N time blocks, W = K bins).

* :class:`Conv` / :class:`ConvT`: Keras ``Conv2D`` / ``Conv2DTranspose`` with ``padding="same"``, Glorot-uniform
  kernels and zero biases (docs/reference/mp3net-spec.md §3.1-3.2). TF's "same" pads floor(P/2) before and the
  rest after, P = max((ceil(n/s) - 1) s + k - n, 0): a stride-2 conv on an even size pads (0, 1), not PyTorch's
  (1, 1). A "same" transposed conv is the full transposed conv ((n - 1) s + k outputs) cropped to
  [(k - s) // 2, (k - s) // 2 + n s): for stride 2 that keeps [0, 2n), for stride 1 [1, n + 1).
* :class:`Conv` with ``fast=True``: its backward is written with ordinary differentiable convolutions
  (:class:`_FastConv2dFn`), so the exact gradient penalty's double backward runs on the regular convolution kernels
  instead of PyTorch's built-in double backward of convolution, whose second-order terms are convolutions of
  unusual shapes that cuDNN runs very slowly (the project measured the full penalty of MP3net's critic 16x faster
  on an H100 this way). Same values and gradients as the stock conv (tested in float64); on CPU about as fast.
* :func:`he_uniform_`: He et al. 2015's init for the same layers, an option of the model (not the paper's).
* :func:`split_to_batch` / :func:`join_from_batch`: MP3net's overlapping time windows folded into the batch
  (spec §3.3), batch index b * S + n as the original.
* :class:`MinibatchStddev`: ProGAN's minibatch standard deviation with groups of 8 (spec §3.5: the original's
  intended behaviour on 8 TPU replicas, not its degenerate single-device behaviour).

Not here: the blocks and networks (plugins/models/mp3net.py). Kernels are 1x1 or 3x3 and square only, which is
all MP3net uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2  # every activation of G and D is LeakyReLU(0.2) (spec §3.1)


def lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


def full_precision(x: Tensor) -> Tensor:
    """float32 for autocast's bf16/fp16 results; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """TF "same" padding (before, after) of an axis of size n for kernel k and stride s (spec §3.2)."""
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def glorot_uniform_(weight: Tensor, fan_in: int, fan_out: int) -> Tensor:
    """Keras' default kernel init: U(-l, l), l = sqrt(6 / (fan_in + fan_out)) (spec §3.1)."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.uniform_(-limit, limit)


def dense(n_in: int, n_out: int) -> nn.Linear:
    """Keras Dense: Glorot-uniform kernel, zero bias (PyTorch's nn.Linear defaults differ)."""
    layer = nn.Linear(n_in, n_out)
    glorot_uniform_(layer.weight, n_in, n_out)
    nn.init.zeros_(layer.bias)
    return layer


class _FastConv2dFn(torch.autograd.Function):
    """conv2d without padding whose backward is itself made of differentiable ordinary ops.

    The input gradient is ``conv_transpose2d(grad, weight)`` and the weight gradient the ordinary weight-gradient
    convolution. No ``once_differentiable``: autograd records the backward, so the gradient penalty's second
    derivative differentiates these two ops, whose derivatives are again plain convolutions. Autocast is not active
    in backward, so the saved tensors are cast to the gradient's dtype there, and the gradients back to the dtypes
    of the inputs they belong to (an fp32 parameter gets an fp32 gradient).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, stride: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return F.conv2d(x, weight, bias, stride)  # under autocast: bf16/fp16, as the stock conv

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            (sh, sw), (kh, kw) = ctx.stride, weight.shape[-2:]
            # the rows/columns of x beyond the last stride step receive no gradient: output_padding restores them
            extra = (x.shape[-2] - (grad.shape[-2] - 1) * sh - kh, x.shape[-1] - (grad.shape[-1] - 1) * sw - kw)
            grad_x = F.conv_transpose2d(grad, weight.to(grad.dtype), stride=ctx.stride, output_padding=extra)
            grad_x = grad_x.to(x.dtype)
        if need_w:
            grad_w = torch.nn.grad.conv2d_weight(x.to(grad.dtype), weight.shape, grad, stride=ctx.stride)
            grad_w = grad_w.to(weight.dtype)
        if need_b:
            grad_b = grad.sum((0, 2, 3)).to(weight.dtype)
        return grad_x, grad_w, grad_b, None


class Conv(nn.Module):
    """Keras ``Conv2D(c_out, k, stride, padding="same")`` with bias: (B, c_in, H, W) -> (B, c_out, H/sh, W/sw)
    (ceil). ``fast``: the differentiable-backward conv while gradients are enabled (exact GP speed-up)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: tuple[int, int] = (1, 1), fast: bool = False):
        super().__init__()
        self.k, self.stride, self.fast = k, tuple(stride), fast
        self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))  # Keras [kh, kw, in, out] = permute(3, 2, 0, 1)
        self.bias = nn.Parameter(torch.zeros(c_out))
        glorot_uniform_(self.weight, k * k * c_in, k * k * c_out)

    def forward(self, x: Tensor) -> Tensor:
        (top, bottom), (left, right) = (same_padding(x.shape[-2], self.k, self.stride[0]),
                                        same_padding(x.shape[-1], self.k, self.stride[1]))
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        if self.fast and torch.is_grad_enabled():
            return _FastConv2dFn.apply(x, self.weight, self.bias, self.stride)
        return F.conv2d(x, self.weight, self.bias, self.stride)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, k={self.k}, stride={self.stride}, fast={self.fast}"


class ConvT(nn.Module):
    """Keras ``Conv2DTranspose(c_out, k, stride, padding="same")`` with bias: (B, c_in, H, W) ->
    (B, c_out, H sh, W sw). Neither framework flips the kernel: y[s i + k] += w[k] x[i] (spec §3.2)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: tuple[int, int] = (1, 1)):
        super().__init__()
        self.k, self.stride = k, tuple(stride)
        # PyTorch's transposed layout (in, out, kh, kw) = Keras [kh, kw, out, in].permute(3, 2, 0, 1)
        self.weight = nn.Parameter(torch.empty(c_in, c_out, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out))
        glorot_uniform_(self.weight, k * k * c_out, k * k * c_in)  # Keras' fans of [kh, kw, out, in]; same sum

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        y = F.conv_transpose2d(x, self.weight, self.bias, self.stride)  # full: (n - 1) s + k per axis
        (sh, sw), k = self.stride, self.k
        top, left = (k - sh) // 2, (k - sw) // 2
        return y[..., top:top + h * sh, left:left + w * sw]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}, k={self.k}, stride={self.stride}"


def he_uniform_(module: nn.Module, slope: float = LRELU_SLOPE) -> nn.Module:
    """Re-draw every Conv, ConvT and Dense kernel of ``module`` from He et al. (2015)'s uniform init for leaky ReLU:
    U(-l, l), l = sqrt(6 / ((1 + slope^2) fan_in)), fan_in = the inputs that reach one output (a transposed conv
    of stride s reaches k^2 c_in / s_h s_w). Biases stay zero. Not the paper's init (Glorot, spec §3.1): in a
    Glorot conv whose channels double, followed by LeakyReLU(0.2), the signal keeps ~1/3 of its variance, so
    MP3net's untrained critic has an input gradient of ~1e-4 where the gradient penalty asks for 1
    (docs/notes/mp3net-small-cpu.md, "Initialisation")."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                fan_in = m.in_features
            elif isinstance(m, Conv):
                fan_in = m.k * m.k * m.weight.shape[1]
            elif isinstance(m, ConvT):
                fan_in = m.k * m.k * m.weight.shape[0] / (m.stride[0] * m.stride[1])
            else:
                continue
            limit = math.sqrt(6.0 / ((1.0 + slope ** 2) * fan_in))
            m.weight.uniform_(-limit, limit)
    return module


def split_to_batch(x: Tensor, windows: int, context: tuple[int, int]) -> Tensor:
    """(B, C, T, F) -> (B S, C, T/S + a + b, F), S = ``windows``, (a, b) = ``context``.

    The time axis is zero-padded with a rows before and b after; window n holds padded rows [n w, n w + w + a + b),
    w = T/S, so consecutive windows overlap by a + b rows. Window n of item b goes to batch index b S + n, as the
    original's stack-and-reshape (spec §3.3).
    """
    a, b = context
    B, C, T, K = x.shape
    if T % windows:
        raise ValueError(f"split_to_batch: {T} time rows do not split into {windows} windows")
    w = T // windows
    padded = F.pad(x, (0, 0, a, b))  # (B, C, T + a + b, F)
    win = padded.unfold(2, w + a + b, w)  # (B, C, S, F, w + a + b)
    return win.permute(0, 2, 1, 4, 3).reshape(B * windows, C, w + a + b, K)


def join_from_batch(x: Tensor, windows: int, shave: tuple[int, int]) -> Tensor:
    """(B S, C, w, F) -> (B, C, S (w - u - v), F): drop the first u and last v rows of every window, then lay the
    windows end to end in order n = 0 .. S-1 (the inverse of :func:`split_to_batch` for shave = context)."""
    u, v = shave
    x = x[:, :, u:x.shape[2] - v]
    BS, C, w, K = x.shape
    return x.reshape(BS // windows, windows, C, w, K).transpose(1, 2).reshape(BS // windows, C, windows * w, K)


class MinibatchStddev(nn.Module):
    """ProGAN's minibatch standard deviation (Karras et al. 2018 §3, one feature): (B, C, H, W) -> (B, C+1, H, W).

    The batch is cut into groups of ``group_size`` items; for every group the population std over its items of
    every (c, h, w) feature, with 1e-8 added to the variance, is averaged to one scalar, appended as a constant
    extra channel to each of the group's items. The group of item i is {i mod B/G + j B/G}: items that sit at the
    same position of B/G consecutive sub-batches, as the original's 8 TPU replicas (spec §3.5, item 9).

    When ``group_size`` does not divide the batch, the largest divisor of B not above ``group_size`` is used
    (ProGAN requires divisibility; this keeps odd evaluation batches working, e.g. 12 items -> groups of 6; a
    batch of one gets a std of sqrt(1e-8)). Computed in float32 at least under autocast.
    """

    def __init__(self, group_size: int = 8):
        super().__init__()
        if group_size < 1:
            raise ValueError(f"minibatch-stddev group size must be >= 1, got {group_size}")
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        g = max(d for d in range(1, min(self.group_size, B) + 1) if B % d == 0)
        y = full_precision(x).reshape(g, B // g, C, H, W)
        std = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # (B/g,): one scalar per group
        feature = std.repeat(g).view(B, 1, 1, 1).expand(B, 1, H, W).to(x.dtype)
        return torch.cat([x, feature], 1)
