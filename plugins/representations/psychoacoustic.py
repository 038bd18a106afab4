"""The psychoacoustic model of audiocodec (MP3net's masking threshold) in PyTorch, and ``mdct_psy``.

Formulas: docs/reference/mp3net-spec.md §2 (from korneelvdbroek/audiocodec ``PsychoacousticModel``), the
MPEG-1 psychoacoustic model idea (Zölzer, DAFX, ch. "Perceptual audio coding"): per MDCT block, a tonality
estimate (spectral flatness), Bark-band intensities, a spreading function applied with a non-linear
superposition (power alpha), an offset that depends on tonality, the threshold in quiet, and the result
mapped back to MDCT bins as an amplitude. Coefficients below it are inaudible, so MP3net adds noise of
std threshold/6 to reals and fakes before the critic: the critic cannot use what a listener cannot hear.

Tensors are channels first, MDCT (B, C, N, K) with frequency last (the reference arrays are
[batch, blocks, freqs, channels]). Matrices are precomputed in float64 and cast to the input's dtype; under
autocast the model leaves autocast and computes in float32 at least (bf16 loses the 1e-14 floors).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor, nn

from framework import hookimpl
from framework.errors import DataError
from framework.protocols import DataInfo, Representation
from framework.runtime import no_autocast
from plugins.representations.mdct import Mdct

EPS = 1e-14  # intensity floor (amplitude 1e-7); dB(EPS) = -20
DB_MAX = 120.0  # amplitude 1 <-> 120 dB


def bark(f):
    return 6.0 * np.arcsinh(f / 600.0)


def bark_to_hz(z):
    return 600.0 * np.sinh(z / 6.0)


def _tables(sample_rate: int, bins: int, bands: int, alpha: float) -> dict[str, np.ndarray]:
    """W (K, bands), W_inv (bands, K), quiet-threshold intensities (bands,), spreading S (bands, bands), z_hat."""
    f_max = sample_rate / 2
    z_max = bark(f_max)
    dz, df = z_max / bands, f_max / bins
    edges = bark_to_hz(np.arange(bands + 1) * dz)  # band j covers [edges[j], edges[j + 1]] Hz
    lo = np.arange(bins)[:, None] * df
    overlap = np.clip(np.minimum(lo + df, edges[None, 1:]) - np.maximum(lo, edges[None, :-1]), 0, None)  # (K, bands)
    W = overlap / df
    W_inv = (overlap / (edges[1:] - edges[:-1])[None, :]).T
    f_khz = bark_to_hz(np.arange(bands) * dz + dz / 2) / 1000
    tq = np.clip(3.64 * f_khz ** -0.8 - 6.5 * np.exp(-0.6 * (f_khz - 3.3) ** 2) + 1e-3 * f_khz ** 4, -20, 120)
    zeta = np.linspace(-z_max, z_max, 2 * bands) + 0.474
    s = 10 ** (alpha * (15.81 + 7.5 * zeta - 17.5 * np.sqrt(1 + zeta ** 2)) / 10)
    i, j = np.meshgrid(np.arange(bands), np.arange(bands), indexing="ij")
    return {"W": W, "W_inv": W_inv, "quiet": 10 ** ((tq - DB_MAX) / 10), "S": s[bands - i + j],
            "z_hat": np.linspace(0, z_max, bands)}


class PsychoacousticModel(nn.Module):
    """Tonality, masking threshold, noise and filter of the original, on (B, C, N, K) MDCT tensors."""

    def __init__(self, sample_rate: int = 22016, bins: int = 128, bark_bands: int = 24, alpha: float = 0.6):
        super().__init__()
        self.sample_rate, self.bins, self.bark_bands, self.alpha = sample_rate, bins, bark_bands, alpha
        for name, value in _tables(sample_rate, bins, bark_bands, alpha).items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)), persistent=False)

    def _prep(self, X: Tensor) -> Tensor:
        if X.dim() != 4 or X.shape[-1] != self.bins:
            raise ValueError(f"expected an MDCT tensor (B, C, N, K={self.bins}), got shape {tuple(X.shape)}")
        if not X.is_floating_point():
            raise TypeError(f"expected a floating-point MDCT tensor, got {X.dtype}")
        return X.float() if X.dtype in (torch.float16, torch.bfloat16) else X

    def tonality(self, X: Tensor) -> Tensor:  # (B, C, N, K) -> (B, C, N, 1)
        """min(SFM_dB / -60, 1), SFM = geometric / arithmetic mean of X^2 over bins (spec §2.5)."""
        with no_autocast():
            X = self._prep(X)
            # The flatness is a ratio of two nearly equal numbers for noise and silence; float32 log/exp round-off
            # then moves it by ~1e-6 (the original's float32 result is within 1e-8 for silence), so reduce in
            # float64 and round once. It is a per-block scalar: the cost is negligible.
            intensity = X.double() * X.double()
            geo = torch.exp(torch.log(intensity.clamp_min(EPS)).mean(-1, keepdim=True))
            sfm_db = 10 * torch.log10(geo / (intensity.mean(-1, keepdim=True) + EPS))
            return torch.clamp_max(sfm_db / -60.0, 1.0).to(X.dtype)

    def bark_intensity(self, X: Tensor) -> Tensor:  # (B, C, N, K) -> (B, C, N, bands)
        X = self._prep(X)
        return (X * X) @ self.W.to(X.dtype)

    def masking_intensity_bark(self, X: Tensor, tonality: Tensor, drown: float = 0.0) -> Tensor:
        """M_j before the threshold in quiet (spec §2.6 step 2): (B, C, N, bands)."""
        X = self._prep(X)
        dt, a = X.dtype, self.alpha
        offset = (1 - drown) * (tonality * self.z_hat.to(dt) + 9 * tonality + 5.5)  # (B, C, N, bands)
        spread = self.bark_intensity(X).clamp_min(EPS) ** a @ self.S.to(dt)  # sum_i E_i^a S[i, j]
        return (spread * 10 ** (-a * offset / 10)).clamp_min(EPS) ** (1 / a)

    def masking_threshold(self, X: Tensor, drown: float = 0.0) -> Tensor:  # (B, C, N, K) -> (B, C, N, K)
        """Global masking threshold as an MDCT amplitude >= 1e-7 (spec §2.6)."""
        with no_autocast():
            X = self._prep(X)
            M = self.masking_intensity_bark(X, self.tonality(X), drown)
            G = torch.maximum(M, self.quiet.to(X.dtype))
            return (G @ self.W_inv.to(X.dtype)).clamp_min(EPS).sqrt()

    def add_noise(self, X: Tensor, threshold: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """X + threshold * N(0, 1) / 6 (spec §2.7): noise that stays below the masking threshold."""
        noise = torch.randn(X.shape, generator=generator, device=X.device, dtype=threshold.dtype)
        return X + threshold * noise / 6

    def filter(self, X: Tensor, threshold: Tensor, max_gradient: float = 10) -> Tensor:
        """MP3net's psychoacoustic_filter (spec §2.8): smoothly suppress coefficients below the threshold."""
        m = max_gradient
        r = X.abs() / threshold
        rc = r.clamp_max(1.0)  # keeps the unused branch finite, so gradients are NaN-free
        f = ((2 - rc) ** -m - 2.0 ** -m) / (1 - 2.0 ** -m)
        return torch.where(r < 1, f * X, X)

    @staticmethod
    def amplitude_to_db(a: Tensor) -> Tensor:
        return 10 * torch.log10((a * a).clamp_min(EPS)) + DB_MAX

    @staticmethod
    def amplitude_to_db_norm(a: Tensor) -> Tensor:
        """(dB + 20) / 140: 0 at the amplitude floor 1e-7, 1 at full scale; not clipped above."""
        db_min = 10 * math.log10(EPS) + DB_MAX
        return (PsychoacousticModel.amplitude_to_db(a) - db_min) / (DB_MAX - db_min)


class MdctPsy(Mdct):
    """``mdct_psy``: the MDCT representation plus MP3net's psychoacoustic noise in ``critic_view``.

    ``critic_view(z) = z + threshold(z) * N(0, 1) / 6`` for reals and fakes alike (spec §4.1). Gradients flow
    through the fakes' threshold (the original does not stop them). ``noise: false`` makes it the identity,
    which is the ``mdct`` ablation with the same parameters.
    """

    @dataclasses.dataclass(frozen=True)
    class Params:
        bins: int = 128  # K, MDCT bins per block
        window: str = "vorbis"  # vorbis (MP3net) | sine
        bark_bands: int = 24  # Bark bands of the psychoacoustic model
        alpha: float = 0.6  # non-linear superposition exponent of the spreading
        drown: float = 0.0  # lowers the tonality offset (0: MP3net; 1: threshold at masker level)
        noise: bool = True  # add threshold-scaled noise before the critic

    def __init__(self, params: "MdctPsy.Params", *, data_info: DataInfo):
        super().__init__(Mdct.Params(bins=params.bins, window=params.window), data_info=data_info)
        if data_info.sample_rate is None:
            raise DataError("representation 'mdct_psy' needs the dataset's sample_rate")
        if not 0.0 <= params.drown <= 1.0:
            raise ValueError(f"representation.params.drown must be in [0, 1], got {params.drown}")
        self.params = params
        self.model = PsychoacousticModel(data_info.sample_rate, params.bins, params.bark_bands, params.alpha)

    def critic_view(self, z: Tensor) -> Tensor:  # (B, C, N, K) -> (B, C, N, K)
        if not self.params.noise:
            return z
        threshold = self.model.masking_threshold(z, self.params.drown)
        return (self.model.add_noise(z.float() if z.dtype != threshold.dtype else z, threshold)).to(z.dtype)


@hookimpl
def register_representations(register):
    register("mdct_psy", MdctPsy)
