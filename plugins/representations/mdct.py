"""The MDCT of audiocodec (MP3net's transform) in PyTorch, and the ``mdct`` representation.

Holds :class:`MDCT` (the transform, any even number of bins, vorbis or sine window) and :class:`Mdct` (the
registered representation). The psychoacoustic model lives in ``psychoacoustic.py``; the analysis command in
``analyze.py``.

Conventions of the original (korneelvdbroek/audiocodec ``MDCTransformer``; docs/reference/mp3net-spec.md §1.2),
with K bins, hop K and a 2K window w:

    X[n, k] = s_f * sum_{t<2K} w[t] x[(n-1)K + t] cos(pi/K (t + 1/2 - K/2)(k + 1/2)),  n = 0..M,
    s_f = sqrt2_f32 / (2K),  x = 0 outside [0, T),  T = M K

so a signal of M blocks gives M + 1 MDCT blocks (one block of zero padding at each end). The inverse is the
overlap-add of s_i w[t] sum_k Y[n, k] cos(...) with s_i = 2 sqrt2_f32, of length (N + 1) K, and
``inverse(forward(x))[..., K:K + T] == x`` (perfect reconstruction: the window is power-complementary,
Princen & Bradley 1986). sqrt2_f32 is sqrt(2) rounded to float32 (1.41421353816986...), as the original
computes it even in float64; it makes the float64 path match the reference vectors to ~1e-13 instead of ~1e-8
(and the float64 round trip is off by (sqrt2_f32 / sqrt2)^2 - 1 = -3.4e-8 relative, as in the original).

Relation to the textbook MDCT (the phase (t + 1/2 + K/2) of Princen-Bradley; the ``mdct`` package 0.4 with its
sine window, tested in tests/plugins/test_mdct.py): reversing a 2K frame maps one phase onto the other with a
sign flip, so with R the time reversal, c = -(sqrt2_f32 / sqrt2) / (2 sqrt(K)) and M = T / K, exactly

    ours(x)[n]                 = c * mdct.mdct(R x, framelength=2K)[:, M - n]
    ours.inverse(Y)[K:K + T]   = (sqrt2_f32 / sqrt2)^2 * R mdct.imdct(Y[M - n] / c, framelength=2K)

Implementation (the fast form): the signal is viewed as blocks of K samples, one matmul against a
precomputed (K, 2K) windowed cosine basis gives each block's contribution to the MDCT blocks n and n + 1, and
two shifted adds assemble them (hop K, window 2K). The inverse is the transpose: one matmul against the
(K, 2K) synthesis basis and the same two-term overlap-add. Bases are built in float64 and cast to the compute
dtype; float16/bfloat16 inputs are computed in float32 (as the original does for bfloat16) and cast back, and
autocast is left inside the transform so the output dtype follows the input. Everything is differentiable
and runs on any device.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
from torch import Tensor, nn

from framework import hookimpl
from framework.errors import DataError
from framework.protocols import DataInfo, Representation

SQRT2_F32 = float(np.sqrt(np.float32(2.0)))  # the original's float32-rounded sqrt(2) (spec §1.2, numerical notes)
WINDOWS = ("vorbis", "sine")


class InputError(DataError, ValueError):
    """A tensor handed to the MDCT or the psychoacoustic model has the wrong rank, size or values."""


class InputTypeError(DataError, TypeError):
    """A tensor handed to the MDCT or the psychoacoustic model is not floating point."""


def window_function(bins: int, kind: str = "vorbis") -> np.ndarray:
    """The 2K-sample analysis/synthesis window (float64), power-complementary: w[t]^2 + w[t + K]^2 = 1."""
    t = np.arange(2 * bins) + 0.5
    if kind == "vorbis":  # Vorbis I spec §1.3.2; audiocodec's default and MP3net's
        return np.sin(np.pi / 2 * np.sin(np.pi / (2 * bins) * t) ** 2)
    if kind == "sine":
        return np.sin(np.pi / (2 * bins) * t)
    raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {kind!r}")


def check_tensor(x: Tensor, rank: int, what: str, layout: str, check_finite: bool = True) -> None:
    """Rank, floating dtype and (optionally; it synchronises with the device) finiteness of an input."""
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{what}: expected a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise InputError(f"{what}: expected a {rank}-D tensor {layout}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputTypeError(f"{what}: expected a floating-point tensor (float32 or float64), got {x.dtype}; "
                             f"convert integer PCM with x.float() / 32768")
    if check_finite and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{what}: input contains {bad} NaN or inf value(s) of {x.numel()}; check the data or "
                         f"the generator's output")


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (bf16/fp16 lose the transform's precision)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def full_precision(x: Tensor) -> contextlib.AbstractContextManager:
    """Leave autocast for ``x``'s device: under bf16 autocast a matmul would silently drop to bf16."""
    try:
        return torch.autocast(device_type=x.device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


def _overlap_add(P: Tensor, bins: int) -> Tensor:  # (..., N, 2K) -> (..., N + 1, K)
    """out[n] = P[n, :K] + P[n - 1, K:]: each 2K-long frame spans blocks n and n + 1 (hop K)."""
    out = P.new_empty(*P.shape[:-2], P.shape[-2] + 1, bins)
    out[..., :-1, :] = P[..., :bins]
    out[..., -1, :] = 0
    out[..., 1:, :] += P[..., bins:]
    return out


class MDCT(nn.Module):
    """MDCT with the original's phase and scaling. ``forward`` (B, C, T) -> (B, C, T // K + 1, K);
    ``inverse`` (B, C, N, K) -> (B, C, (N + 1) K). dtype follows the input.

    ``check_finite``: reject NaN/inf inputs with a clear error (costs a host-device synchronisation per call;
    the representations turn it off inside the training step).
    """

    def __init__(self, bins: int = 128, window: str = "vorbis", check_finite: bool = True):
        super().__init__()
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2 or bins % 2:
            raise ValueError(f"MDCT: bins must be an even integer >= 2 (hop K, window 2K), got {bins!r}")
        self.bins, self.window_kind, self.check_finite = bins, window, check_finite
        w = window_function(bins, window)  # (2K,)
        t = np.arange(2 * bins)[:, None] + 0.5 - bins / 2  # the original's phase, not the textbook + K/2
        k = np.arange(bins)[None, :] + 0.5
        basis = w[:, None] * np.cos(np.pi / bins * t * k)  # (2K, K): frame sample t -> bin k
        # Analysis, one matrix for every block: block m of K samples is the second half of frame m and the
        # first half of frame m + 1, so block m @ [basis[K:] | basis[:K]] is its share of X[m] and of X[m + 1].
        analysis = np.concatenate([basis[bins:], basis[:bins]], axis=1) * SQRT2_F32 / (2 * bins)  # (K, 2K)
        self.register_buffer("analysis", torch.from_numpy(np.ascontiguousarray(analysis)), persistent=False)
        self.register_buffer("synthesis", torch.from_numpy(basis.T * 2 * SQRT2_F32), persistent=False)  # (K, 2K)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, window={self.window_kind!r}"

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C, T // K + 1, K)
        check_tensor(x, 3, "MDCT.forward", "(B, C, T)", self.check_finite)
        K = self.bins
        if x.shape[-1] % K:
            raise InputError(f"MDCT.forward: T = {x.shape[-1]} samples is not a multiple of bins = {K}; "
                             f"pad or trim the signal to {x.shape[-1] // K * K} or {(x.shape[-1] // K + 1) * K}")
        dt = compute_dtype(x)
        with full_precision(x):
            blocks = x.to(dt).unflatten(-1, (-1, K))  # (B, C, M, K)
            P = blocks @ self.analysis.to(device=x.device, dtype=dt)  # (B, C, M, 2K)
            X = _overlap_add(P, K)  # (B, C, M + 1, K): X[n] = x_n @ basis[K:] + x_{n-1} @ basis[:K]
        return X.to(x.dtype)

    def inverse(self, X: Tensor) -> Tensor:  # (B, C, N, K) -> (B, C, (N + 1) K)
        check_tensor(X, 4, "MDCT.inverse", "(B, C, N, K)", self.check_finite)
        K = self.bins
        if X.shape[-1] != K:
            raise InputError(f"MDCT.inverse: expected {K} bins in the last axis of (B, C, N, K), got {X.shape[-1]}")
        dt = compute_dtype(X)
        with full_precision(X):
            frames = X.to(dt) @ self.synthesis.to(device=X.device, dtype=dt)  # (B, C, N, 2K)
            out = _overlap_add(frames, K)  # (B, C, N + 1, K)
        return out.flatten(-2).to(X.dtype)


class Mdct(Representation):
    """``mdct``: the networks see MDCT coefficients (B, C, N, K) with N = T // K + 1.

    Block count: audio of T = M K samples gives M + 1 blocks (the original pads one block of zeros at each end).
    MP3net's real clips are 16384 blocks of 128 bins, i.e. audio of T = 16383 * 128 = 2,097,024 samples
    (95.25 s at 22016 Hz); ``decode`` inverts ((N + 1) K = 2,097,280 samples), crops [K : K + T] back to exactly
    T samples and clips to [-1, 1] (the original's ``repr_to_audio``). ``critic_view`` is the identity.
    """

    @dataclasses.dataclass(frozen=True)
    class Params:
        bins: int = 128  # K, MDCT bins per block (hop K, window 2K); MP3net: 128 at 22016 Hz
        window: str = "vorbis"  # vorbis (MP3net) | sine

    name = "mdct"

    def __init__(self, params: "Mdct.Params", *, data_info: DataInfo):
        super().__init__()
        where = f"representation '{self.name}'"
        if params.bins < 2 or params.bins % 2:
            raise ValueError(f"{where}: representation.params.bins must be an even integer >= 2, got {params.bins}")
        if params.window not in WINDOWS:
            raise ValueError(f"{where}: representation.params.window must be one of {', '.join(WINDOWS)}, "
                             f"got {params.window!r}")
        if data_info.kind != "audio" or len(data_info.shape) != 2:
            raise DataError(f"{where} needs audio items (C, T), got {data_info.kind} items of shape "
                            f"{tuple(data_info.shape)}; use representation 'raw' for images")
        channels, samples = data_info.shape
        if samples % params.bins:
            raise DataError(f"{where}: the dataset's items have T = {samples} samples, not a multiple of "
                            f"bins = {params.bins}; set the dataset's length to {samples // params.bins * params.bins}"
                            f" or {(samples // params.bins + 1) * params.bins} samples")
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
