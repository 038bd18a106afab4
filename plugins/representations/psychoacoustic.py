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

Holds :class:`PsychoacousticModel` and the ``mdct_psy`` representation. Not here: the tonality metric
(plugins/metrics/audio.py) and the compression report (analyze.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor, nn

from framework import hookimpl
from framework.errors import DataError
from framework.protocols import DataInfo
from plugins.representations.mdct import InputError, Mdct, check_tensor, compute_dtype, full_precision

EPS = 1e-14  # intensity floor (amplitude 1e-7); dB(EPS) = -20
DB_MAX = 120.0  # amplitude 1 <-> 120 dB


def bark(f):
    return 6.0 * np.arcsinh(f / 600.0)


def bark_to_hz(z):
    return 600.0 * np.sinh(z / 6.0)


def _tables(sample_rate: int, bins: int, bands: int, alpha: float) -> dict[str, np.ndarray]:
    """W (K, bands), W_inv (bands, K), quiet-threshold intensities (bands,), spreading S (bands, bands), z_hat,
    all float64 (spec §2.2-2.4)."""
    f_max = sample_rate / 2
    z_max = bark(f_max)
    dz, df = z_max / bands, f_max / bins
    edges = bark_to_hz(np.arange(bands + 1) * dz)  # band j covers [edges[j], edges[j + 1]] Hz
    lo = np.arange(bins)[:, None] * df
    overlap = np.clip(np.minimum(lo + df, edges[None, 1:]) - np.maximum(lo, edges[None, :-1]), 0, None)  # (K, bands)
    W = overlap / df  # rows sum to 1: a bin's energy is shared among the bands it overlaps
    W_inv = (overlap / (edges[1:] - edges[:-1])[None, :]).T
    # threshold in quiet at the band centres (Terhardt 1979, as in Painter & Spanias 2000 eq. 1), spec §2.3
    f_khz = bark_to_hz(np.arange(bands) * dz + dz / 2) / 1000
    tq = np.clip(3.64 * f_khz ** -0.8 - 6.5 * np.exp(-0.6 * (f_khz - 3.3) ** 2) + 1e-3 * f_khz ** 4, -20, 120)
    # spreading function (Schroeder et al. 1979) sampled on 2 * bands points of [-z_max, z_max], so the
    # diagonal S[i, i] sits at +z_max / (2 bands - 1), not 0: the original's grid, kept (spec §2.4)
    zeta = np.linspace(-z_max, z_max, 2 * bands) + 0.474
    s = 10 ** (alpha * (15.81 + 7.5 * zeta - 17.5 * np.sqrt(1 + zeta ** 2)) / 10)
    i, j = np.meshgrid(np.arange(bands), np.arange(bands), indexing="ij")
    return {"W": W, "W_inv": W_inv, "quiet": 10 ** ((tq - DB_MAX) / 10), "S": s[bands - i + j],
            "z_hat": np.linspace(0, z_max, bands)}


class PsychoacousticModel(nn.Module):
    """Tonality, masking threshold, noise and filter of the original, on (B, C, N, K) MDCT tensors.

    Inputs are validated (rank, K, floating dtype and, with ``check_finite``, NaN/inf: that check costs a
    host-device synchronisation, so the ``mdct_psy`` representation turns it off). float64 inputs are computed
    in float64, float32 in float32; float16/bfloat16 inputs are computed (and returned) in float32, with
    autocast disabled inside, because the 1e-14 intensity floor underflows in half precision (spec §2.9).
    """

    def __init__(self, sample_rate: int = 22016, bins: int = 128, bark_bands: int = 24, alpha: float = 0.6,
                 check_finite: bool = True):
        super().__init__()
        if sample_rate <= 0 or bins < 1 or bark_bands < 1 or not 0 < alpha <= 1:
            raise ValueError(f"PsychoacousticModel: need sample_rate > 0, bins >= 1, bark_bands >= 1 and "
                             f"0 < alpha <= 1, got sample_rate={sample_rate}, bins={bins}, bark_bands={bark_bands}, "
                             f"alpha={alpha}")
        self.sample_rate, self.bins, self.bark_bands, self.alpha = sample_rate, bins, bark_bands, alpha
        self.check_finite = check_finite
        for name, value in _tables(sample_rate, bins, bark_bands, alpha).items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)), persistent=False)

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}, bins={self.bins}, bark_bands={self.bark_bands}, alpha={self.alpha}"

    def _prep(self, X: Tensor, what: str) -> Tensor:
        check_tensor(X, 4, f"PsychoacousticModel.{what}", f"(B, C, N, K={self.bins})", self.check_finite)
        if X.shape[-1] != self.bins:
            raise InputError(f"PsychoacousticModel.{what}: expected an MDCT tensor (B, C, N, K={self.bins}), got "
                             f"shape {tuple(X.shape)}; build the model with bins={X.shape[-1]}")
        return X.to(compute_dtype(X))

    def _const(self, name: str, X: Tensor) -> Tensor:
        return getattr(self, name).to(device=X.device, dtype=X.dtype)

    def tonality(self, X: Tensor) -> Tensor:  # (B, C, N, K) -> (B, C, N, 1)
        """min(SFM_dB / -60, 1), SFM = geometric / arithmetic mean of X^2 over bins (spec §2.5; no lower clip).
        1 for a pure tone, about 0.09 for white noise, 0 for silence."""
        X = self._prep(X, "tonality")
        with full_precision(X):
            return self._tonality(X)

    def bark_intensity(self, X: Tensor) -> Tensor:  # (B, C, N, K) -> (B, C, N, bands)
        """E_j = sum_i X_i^2 W[i, j]: plain intensity per Bark band, no floor (spec §2.2)."""
        X = self._prep(X, "bark_intensity")
        with full_precision(X):
            return self._bark_intensity(X)

    def masking_intensity_bark(self, X: Tensor, tonality: Tensor, drown: float = 0.0) -> Tensor:
        """M_j before the threshold in quiet (spec §2.6 steps 1-2), (B, C, N, bands); ``tonality`` (B, C, N, 1)."""
        X = self._prep(X, "masking_intensity_bark")
        with full_precision(X):
            return self._masking_intensity_bark(X, tonality.to(X.dtype), drown)

    def masking_threshold(self, X: Tensor, drown: float = 0.0) -> Tensor:  # (B, C, N, K) -> (B, C, N, K)
        """Global masking threshold as an MDCT amplitude >= 1e-7 (spec §2.6): MP3net's
        ``psychoacoustic_masking_ampl``. ``drown`` in [0, 1] lowers the tonality offset (MP3net: 0)."""
        X = self._prep(X, "masking_threshold")
        with full_precision(X):
            M = self._masking_intensity_bark(X, self._tonality(X), drown)
            G = torch.maximum(M, self._const("quiet", X))  # threshold in quiet (spec §2.3)
            return (G @ self._const("W_inv", X)).clamp_min(EPS).sqrt()

    # The steps on validated tensors in the compute dtype, autocast off.

    def _tonality(self, X: Tensor) -> Tensor:
        # The flatness is a ratio of two nearly equal numbers for noise and silence; float32 log/exp round-off
        # then moves it by ~1e-6 (the original's float32 result is within 1e-8 for silence), so reduce in
        # float64 and round once. It is a per-block scalar: the cost is small next to the matmuls.
        Xd = X.double()
        intensity = Xd * Xd
        geo = torch.exp(torch.log(intensity.clamp_min(EPS)).mean(-1, keepdim=True))
        sfm_db = 10 * torch.log10(geo / (intensity.mean(-1, keepdim=True) + EPS))
        return torch.clamp_max(sfm_db / -60.0, 1.0).to(X.dtype)

    def _bark_intensity(self, X: Tensor) -> Tensor:
        return (X * X) @ self._const("W", X)

    def _masking_intensity_bark(self, X: Tensor, T: Tensor, drown: float) -> Tensor:
        a = self.alpha
        # offset (dB) of the maskee band j on the stretched grid z_hat = linspace(0, z_max, bands) (spec §2.6)
        offset = (1 - drown) * (T * self._const("z_hat", X) + 9 * T + 5.5)  # (B, C, N, bands)
        # non-linear superposition of the spread maskers (power alpha), floors before both powers (spec §2.6)
        spread = self._bark_intensity(X).clamp_min(EPS) ** a @ self._const("S", X)  # sum_i E_i^a S[i, j]
        return (spread * 10 ** (-a * offset / 10)).clamp_min(EPS) ** (1 / a)

    def add_noise(self, X: Tensor, threshold: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """X + threshold * N(0, 1) / 6 (spec §2.7): noise that stays below the masking threshold (|noise| >
        threshold has probability 2e-9). dtype: that of ``threshold``; ``generator`` for reproducible noise."""
        noise = torch.randn(X.shape, generator=generator, device=X.device, dtype=threshold.dtype)
        return X + threshold * noise / 6

    def filter(self, X: Tensor, threshold: Tensor, max_gradient: float = 10) -> Tensor:
        """MP3net's psychoacoustic_filter (spec §2.8): with r = |X| / threshold, X * f(r) below the threshold,
        f(r) = ((2 - r)^-m - 2^-m) / (1 - 2^-m), f(0) = 0, f(1) = 1; X unchanged at or above it."""
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


CRITIC_SCALES = ("amplitude", "threshold", "log_threshold")  # what MdctPsy.critic_view shows the critic


class MdctPsy(Mdct):
    """``mdct_psy``: the MDCT representation plus MP3net's psychoacoustic noise in ``critic_view``.

    ``critic_view(z) = z + threshold(z) * N(0, 1) / 6``, threshold = masking_threshold(z, drown), for reals
    and fakes alike (spec §2.7, §4.1), from the global RNG (the runner seeds it). Gradients flow through the
    fakes' threshold (the original does not stop them). ``noise: false`` makes it the identity, which is the
    ``mdct`` ablation with the same parameters. ``critic_scale: threshold`` (not in the paper) shows the critic
    that divided by the threshold, i.e. in units of audibility: a coefficient at 1 is just masked, whatever its
    band, so errors in the quiet high band weigh as much as in the loud low band (on raw amplitudes the critic's
    unit-gradient budget goes to the loud bins; docs/notes/mp3net-small-cpu.md, "Level per MDCT bin"). Measured on the small spec:
    worse, the penalty does not hold in these units (docs/notes/mp3net-small-cpu.md, "A critic in masking-threshold units").
    ``critic_scale: log_threshold`` (not in the paper either) compresses that ratio, asinh(X / threshold): linear
    within the threshold (the noise stays N(0, 1/36)), logarithmic above it.
    encode/decode/shape as ``mdct`` (N = T // K + 1 blocks; MP3net's 16384-block clips are T = 16383 * 128
    samples). Needs the dataset's sample_rate (the Bark scale).
    """

    @dataclasses.dataclass(frozen=True)
    class Params:
        bins: int = 128  # K, MDCT bins per block
        window: str = "vorbis"  # vorbis (MP3net) | sine
        bark_bands: int = 24  # Bark bands of the psychoacoustic model
        alpha: float = 0.6  # non-linear superposition exponent of the spreading
        drown: float = 0.0  # lowers the tonality offset (0: MP3net; 1: threshold at masker level)
        noise: bool = True  # add threshold-scaled noise before the critic
        critic_scale: str = "amplitude"  # amplitude (MP3net) | threshold: X / masking threshold | log_threshold:
        # asinh(X / masking threshold)

    name = "mdct_psy"

    def __init__(self, params: "MdctPsy.Params", *, data_info: DataInfo):
        super().__init__(Mdct.Params(bins=params.bins, window=params.window), data_info=data_info)
        if not data_info.sample_rate:
            raise DataError("representation 'mdct_psy' needs the dataset's sample_rate (the Bark scale depends "
                            "on it); this dataset reports none: use an audio dataset, or representation 'mdct'")
        if not 0.0 <= params.drown <= 1.0:
            raise ValueError(f"representation 'mdct_psy': representation.params.drown must be in [0, 1], "
                             f"got {params.drown}")
        if params.bark_bands < 1 or not 0.0 < params.alpha <= 1.0:
            raise ValueError(f"representation 'mdct_psy': representation.params.bark_bands must be >= 1 and alpha "
                             f"in (0, 1], got bark_bands={params.bark_bands}, alpha={params.alpha}")
        if params.critic_scale not in CRITIC_SCALES:
            raise ValueError(f"representation 'mdct_psy': representation.params.critic_scale must be one of "
                             f"{', '.join(CRITIC_SCALES)}, got {params.critic_scale!r}")
        self.params = params
        self.model = PsychoacousticModel(data_info.sample_rate, params.bins, params.bark_bands, params.alpha,
                                         check_finite=False)

    def critic_view(self, z: Tensor) -> Tensor:  # (B, C, N, K) -> (B, C, N, K)
        scale = self.params.critic_scale
        if not self.params.noise and scale == "amplitude":
            return z
        threshold = self.model.masking_threshold(z, self.params.drown)  # (B, C, N, K), float32 at least
        seen = z.float() if z.dtype != threshold.dtype else z
        if self.params.noise:
            seen = self.model.add_noise(seen, threshold)
        if scale != "amplitude":
            seen = seen / threshold
            if scale == "log_threshold":
                seen = torch.asinh(seen)
        return seen.to(z.dtype)


@hookimpl
def register_representations(register):
    register("mdct_psy", MdctPsy)
