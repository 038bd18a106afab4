"""Layers of MP3net with TensorFlow's semantics, in PyTorch (NCHW: C channels, H = time blocks, W = bins).

* :class:`Conv` / :class:`ConvT`: Keras ``Conv2D`` / ``Conv2DTranspose`` with ``padding="same"``, Glorot-uniform
  kernels and zero biases (docs/reference/mp3net-spec.md §3.1-3.2). TF's "same" pads floor(P/2) before and the
  rest after, P = max((ceil(n/s) - 1) s + k - n, 0): a stride-2 conv on an even size pads (0, 1), not PyTorch's
  (1, 1). A "same" transposed conv is the full transposed conv cropped to [(k - s) // 2, ... + n s): for stride
  2 that keeps [0, 2n), for stride 1 [1, n + 1).
* :class:`FastConv2d`: a conv whose backward is written with ordinary differentiable convolutions, so the
  gradient penalty's double backward runs on cuDNN's regular kernels instead of PyTorch's generic
  double-backward of convolution (16x faster on an H100 for the exact GP; see docs/benchmarks.md).
* :func:`split_to_batch` / :func:`join_from_batch`: MP3net's windowing of the time axis into overlapping
  windows folded into the batch (spec §3.3), and its inverse.
* :class:`MinibatchStddev`: ProGAN's minibatch standard deviation with groups of up to 8 (spec §3.5, the
  original's intended TPU behaviour).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU = 0.2  # LeakyReLU slope of every activation (spec §3.1)


def same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """TF "same" padding (before, after) of an axis of size n for kernel k and stride s."""
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def glorot_(weight: Tensor, fan_sum: int) -> None:
    """Keras' Glorot-uniform: U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / fan_sum)
    with torch.no_grad():
        weight.uniform_(-limit, limit)


class _FastConv2dFn(torch.autograd.Function):
    """conv2d (no padding) whose backward is itself differentiable ordinary ops (not once_differentiable)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return F.conv2d(x, weight, bias, stride)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        # autocast is not active in backward: compute in the gradient's dtype (bf16 under bf16 autocast)
        xg, wg = x.to(grad.dtype), weight.to(grad.dtype)
        kh, kw = weight.shape[-2:]
        sh, sw = ctx.stride
        out_pad = (x.shape[-2] - ((grad.shape[-2] - 1) * sh + kh), x.shape[-1] - ((grad.shape[-1] - 1) * sw + kw))
        grad_x = F.conv_transpose2d(grad, wg, stride=ctx.stride, output_padding=out_pad).to(x.dtype)
        grad_w = torch.nn.grad.conv2d_weight(xg, weight.shape, grad, stride=ctx.stride).to(weight.dtype)
        grad_b = grad.sum((0, 2, 3)).to(weight.dtype) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


class Conv(nn.Module):
    """Keras Conv2D(out, k, strides, padding="same") with bias; input (B, in, H, W)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: tuple[int, int] = (1, 1), fast: bool = False):
        super().__init__()
        self.stride, self.k, self.fast = stride, k, fast
        self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out))
        glorot_(self.weight, k * k * (c_in + c_out))

    def forward(self, x: Tensor) -> Tensor:
        (ht, hb), (wl, wr) = (same_padding(x.shape[-2], self.k, self.stride[0]),
                              same_padding(x.shape[-1], self.k, self.stride[1]))
        if ht or hb or wl or wr:
            x = F.pad(x, (wl, wr, ht, hb))
        if self.fast and torch.is_grad_enabled():
            weight, bias = self.weight, self.bias
            dev = x.device.type
            dtype = torch.get_autocast_dtype(dev) if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev) else None
            if dtype is not None:  # custom Functions bypass autocast: cast here as autocast would
                x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
            return _FastConv2dFn.apply(x, weight, bias, self.stride)
        return F.conv2d(x, self.weight, self.bias, self.stride)


class ConvT(nn.Module):
    """Keras Conv2DTranspose(out, k, strides, padding="same") with bias: output (B, out, H sh, W sw)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: tuple[int, int] = (1, 1)):
        super().__init__()
        self.stride, self.k = stride, k
        self.weight = nn.Parameter(torch.empty(c_in, c_out, k, k))  # PyTorch's transposed layout (in, out, kh, kw)
        self.bias = nn.Parameter(torch.zeros(c_out))
        glorot_(self.weight, k * k * (c_in + c_out))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        y = F.conv_transpose2d(x, self.weight, self.bias, self.stride)  # full: ((n - 1) s + k) per axis
        (sh, sw), k = self.stride, self.k
        top, left = (k - sh) // 2, (k - sw) // 2
        return y[..., top:top + h * sh, left:left + w * sw]


def lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LRELU)


def split_to_batch(x: Tensor, windows: int, context: tuple[int, int]) -> Tensor:
    """(B, C, T, F) -> (B * windows, C, T / windows + a + b, F): overlapping time windows with a rows of past
    and b rows of future context (zero-padded at the ends); window n of item b goes to batch index b * S + n."""
    a, b = context
    B, C, T, Fq = x.shape
    if T % windows:
        raise ValueError(f"split_to_batch: {T} time rows do not split into {windows} windows")
    w = T // windows
    padded = F.pad(x, (0, 0, a, b))  # (B, C, T + a + b, F)
    win = padded.unfold(2, w + a + b, w)  # (B, C, S, F, w + a + b)
    return win.permute(0, 2, 1, 4, 3).reshape(B * windows, C, w + a + b, Fq)


def join_from_batch(x: Tensor, windows: int, shave: tuple[int, int]) -> Tensor:
    """(B * S, C, w, F) -> (B, C, S * (w - u - v), F): drop u first and v last rows of each window, concatenate."""
    u, v = shave
    x = x[:, :, u:x.shape[2] - v]
    BS, C, w, Fq = x.shape
    return x.reshape(BS // windows, windows, C, w, Fq).permute(0, 2, 1, 3, 4).reshape(BS // windows, C, windows * w, Fq)


class MinibatchStddev(nn.Module):
    """ProGAN's minibatch-stddev (Karras et al. 2018 §3): per group of G items (G = the largest divisor of the
    batch that is <= group_size), the population std over the group of every feature, averaged to one scalar and
    appended as an extra channel. Groups take items m, m + B/G, m + 2B/G, ... as the original's 8 TPU replicas
    did for per-replica batch position m. (B, C, H, W) -> (B, C + 1, H, W)."""

    def __init__(self, group_size: int = 8):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        g = max(d for d in range(1, min(self.group_size, B) + 1) if B % d == 0)
        y = x.float().reshape(g, B // g, C, H, W)
        std = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # (B/g,)
        feat = std.repeat(g).view(B, 1, 1, 1).expand(B, 1, H, W).to(x.dtype)
        return torch.cat([x, feat], 1)
