"""The MDCT of audiocodec (MP3net's transform) in PyTorch, and the ``mdct`` representation.

Conventions of the original (korneelvdbroek/audiocodec ``MDCTransformer``; docs/reference/mp3net-spec.md §1.2),
with K bins, hop K and a 2K window w:

    X[n, k] = s_f * sum_{t<2K} w[t] x[(n-1)K + t] cos(pi/K (t + 1/2 - K/2)(k + 1/2)),  n = 0..M,
    s_f = sqrt2_f32 / (2K),  x = 0 outside [0, T),  T = M K

so a signal of M blocks gives M + 1 MDCT blocks (one block of zero padding at each end). The inverse is the
overlap-add of s_i w[t] sum_k Y[n, k] cos(...) with s_i = 2 sqrt2_f32, of length (N + 1) K, and
``inverse(forward(x))[..., K:K + T] == x`` (perfect reconstruction: the window is power-complementary).

Note the phase (t + 1/2 - K/2): the textbook MDCT (Princen-Bradley; the `mdct` package) uses
(t + 1/2 + K/2). Reversing a 2K frame maps one phase onto the other with a sign flip, so, exactly (tested):
ours(x)[n] = -(sqrt2_f32/sqrt2) / (2 sqrt(K)) * mdct.mdct(x[::-1], framelength=2K)[:, M - n] (sine window). sqrt2_f32 is
sqrt(2) rounded to float32 (1.41421353816986...), as the original computes it even in float64; it makes the
float64 path match the reference vectors to ~1e-13 instead of ~1e-8.

Implementation: frames of 2K samples with hop K (``unfold``) times one precomputed (2K, K) windowed cosine
basis: one matmul forward, one matmul plus a two-term overlap-add inverse. Bases are built in float64 and
cast to the input's dtype; everything is differentiable and runs on any device.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from framework import hookimpl
from framework.errors import DataError
from framework.protocols import DataInfo, Representation

SQRT2_F32 = float(np.sqrt(np.float32(2.0)))  # the original's float32-rounded sqrt(2)
WINDOWS = ("vorbis", "sine")


def window(bins: int, kind: str = "vorbis") -> np.ndarray:
    """The 2K-sample analysis/synthesis window (float64)."""
    t = np.arange(2 * bins) + 0.5
    if kind == "vorbis":
        return np.sin(np.pi / 2 * np.sin(np.pi / (2 * bins) * t) ** 2)
    if kind == "sine":
        return np.sin(np.pi / (2 * bins) * t)
    raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {kind!r}")


def _check_signal(x: Tensor, rank: int, what: str) -> None:
    if x.dim() != rank:
        layout = "(B, C, T)" if rank == 3 else "(B, C, N, K)"
        raise ValueError(f"{what}: expected a {rank}-D tensor {layout}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what}: expected a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: input contains NaN or inf")


class MDCT(nn.Module):
    """MDCT with the original's phase and scaling. ``forward`` (B, C, T) -> (B, C, T // K + 1, K);
    ``inverse`` (B, C, N, K) -> (B, C, (N + 1) K). dtype follows the input (float32 or float64)."""

    def __init__(self, bins: int = 128, window: str = "vorbis", check_finite: bool = True):
        super().__init__()
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.bins, self.window_kind, self.check_finite = bins, window, check_finite
        w = globals()["window"](bins, window)  # (2K,)
        t = np.arange(2 * bins)[:, None] + 0.5 - bins / 2
        k = np.arange(bins)[None, :] + 0.5
        cos = np.cos(np.pi / bins * t * k)  # (2K, K)
        self.register_buffer("fwd", torch.from_numpy(w[:, None] * cos * SQRT2_F32 / (2 * bins)), persistent=False)
        self.register_buffer("inv", torch.from_numpy((w[:, None] * cos * 2 * SQRT2_F32).T.copy()), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C, T // K + 1, K)
        if self.check_finite:
            _check_signal(x, 3, "MDCT.forward")
        K = self.bins
        if x.shape[-1] % K:
            raise ValueError(f"MDCT.forward: T = {x.shape[-1]} samples is not a multiple of bins = {K}; "
                             f"pad or trim the signal to {x.shape[-1] // K * K} or {(x.shape[-1] // K + 1) * K}")
        frames = F.pad(x, (K, K)).unfold(-1, 2 * K, K)  # (B, C, M + 1, 2K)
        return frames @ self.fwd.to(x.dtype)  # (B, C, M + 1, K)

    def inverse(self, X: Tensor) -> Tensor:  # (B, C, N, K) -> (B, C, (N + 1) K)
        if self.check_finite:
            _check_signal(X, 4, "MDCT.inverse")
        K = self.bins
        if X.shape[-1] != K:
            raise ValueError(f"MDCT.inverse: expected {K} bins in the last axis, got {X.shape[-1]}")
        frames = X @ self.inv.to(X.dtype)  # (B, C, N, 2K)
        head, tail = frames[..., :K], frames[..., K:]  # each frame covers blocks n and n + 1
        out = F.pad(head, (0, 0, 0, 1)) + F.pad(tail, (0, 0, 1, 0))  # (B, C, N + 1, K)
        return out.flatten(-2)


class Mdct(Representation):
    """``mdct``: the networks see MDCT coefficients (B, C, N, K) with N = T // K + 1.

    MP3net's clips are 16384 blocks of 128 bins: audio of T = 16383 * 128 = 2,097,024 samples. ``decode``
    inverts and crops back to exactly T samples, clipped to [-1, 1] (the original's ``repr_to_audio``).
    """

    @dataclasses.dataclass(frozen=True)
    class Params:
        bins: int = 128  # K, MDCT bins per block (hop K, window 2K); MP3net: 128 at 22016 Hz
        window: str = "vorbis"  # vorbis (MP3net) | sine

    def __init__(self, params: "Mdct.Params", *, data_info: DataInfo):
        super().__init__()
        if data_info.kind != "audio" or len(data_info.shape) != 2:
            raise DataError(f"representation 'mdct' needs audio items (C, T), got {data_info.kind} {data_info.shape}")
        channels, samples = data_info.shape
        if samples % params.bins:
            raise DataError(f"representation 'mdct': the dataset's items have T = {samples} samples, not a multiple "
                            f"of bins = {params.bins}; set the dataset's length to a multiple of {params.bins}")
        self.params, self.samples = params, samples
        self.mdct = MDCT(params.bins, params.window, check_finite=False)
        self.shape = (channels, samples // params.bins + 1, params.bins)

    def encode(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C, N, K)
        return self.mdct(x)

    def decode(self, z: Tensor) -> Tensor:  # (B, C, N, K) -> (B, C, T)
        K = self.params.bins
        return self.mdct.inverse(z)[..., K:K + self.samples].clamp(-1.0, 1.0)


@hookimpl
def register_representations(register):
    register("mdct", Mdct)
