"""Audio metrics: MP3net's tonality, and a Fréchet distance on MDCT Bark-band statistics.

``tonality``: the paper's quality indicator (van den Broek 2021, §5): the mean spectral-flatness tonality of
the psychoacoustic model (1 = pure tone, 0 = white noise) over all MDCT blocks and channels, in percent, for
real and generated audio. Real piano scores about 72-73 %, the paper's fakes 40-45 %.

``frechet_mdct``: every MDCT block of every item gives one feature vector, the log10 intensity in each of the
24 Bark bands (the psychoacoustic model's band mapping) per channel, ``(2 * 24,)`` for stereo. The metric is
the Fréchet distance between the Gaussian fits of the real and generated block features. It measures
timbre and loudness distribution, not musical structure. Its floor, real against other real audio, depends
on the data; the eval logs ``frechet_mdct_real_floor`` (first half of the real items against the second half)
beside it so every value has its own baseline.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from framework import hookimpl
from framework.protocols import DataInfo, Metric
from framework.runtime import no_autocast
from plugins.common.stats import GaussianStats, frechet_distance
from plugins.representations.mdct import MDCT
from plugins.representations.psychoacoustic import PsychoacousticModel


class _AudioFrontEnd:
    """MDCT + psychoacoustic model for (B, C, T) audio, in float32, on the metric's device."""

    def __init__(self, info: DataInfo, bins: int, device: torch.device):
        if info.kind != "audio" or info.sample_rate is None:
            raise ValueError(f"audio metrics need audio data with a sample rate, got {info.kind!r}")
        self.bins = bins
        self.mdct = MDCT(bins=bins, check_finite=False).to(device)  # no per-call NaN scan (a device sync)
        self.pam = PsychoacousticModel(sample_rate=info.sample_rate, bins=bins, check_finite=False).to(device)

    def __call__(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C, N, K)
        t = x.shape[-1] - x.shape[-1] % self.bins
        with no_autocast():
            return self.mdct(x[..., :t].float())


class Tonality(Metric):
    higher_is_better = {"tonality_fake_pct": True}
    @dataclasses.dataclass(frozen=True)
    class Params:
        bins: int = 128  # MDCT bins of the analysis (MP3net: 128)

    def __init__(self, params: "Tonality.Params", *, representation, data_info: DataInfo, runtime):
        self.front = _AudioFrontEnd(data_info, params.bins, runtime.device)
        self.reset()

    def reset(self) -> None:
        self.sums = {"real": 0.0, "fake": 0.0}
        self.counts = {"real": 0, "fake": 0}

    def update(self, real: Tensor, fake: Tensor) -> None:
        for name, x in (("real", real), ("fake", fake)):
            tonality = self.front.pam.tonality(self.front(x))  # (B, C, N, 1)
            self.sums[name] += float(tonality.double().sum())
            self.counts[name] += tonality.numel()

    def compute(self) -> dict[str, float]:
        if not all(self.counts.values()):
            raise ValueError("tonality: compute() before any update()")
        return {f"tonality_{k}_pct": 100.0 * self.sums[k] / self.counts[k] for k in self.sums}


class FrechetMdct(Metric):
    higher_is_better = {"frechet_mdct": False}
    @dataclasses.dataclass(frozen=True)
    class Params:
        bins: int = 128  # MDCT bins of the analysis
        min_db: float = -100.0  # floor of the band intensities (10 log10), so silence is finite

    def __init__(self, params: "FrechetMdct.Params", *, representation, data_info: DataInfo, runtime):
        self.params = params
        self.front = _AudioFrontEnd(data_info, params.bins, runtime.device)
        self.reset()

    def reset(self) -> None:
        self.real, self.fake = GaussianStats(), GaussianStats()
        self.real_halves = (GaussianStats(), GaussianStats())
        self._items = 0

    def features(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B * N, C * bark_bands)
        X = self.front(x)  # (B, C, N, K)
        bands = (X.double() ** 2) @ self.front.pam.W.double()  # (B, C, N, bark): intensity per Bark band
        db = (10 * torch.log10(bands.clamp_min(1e-30))).clamp_min(self.params.min_db)
        b, c, n, k = db.shape
        return db.permute(0, 2, 1, 3).reshape(b * n, c * k)

    def update(self, real: Tensor, fake: Tensor) -> None:
        fr = self.features(real)
        self.real.add(fr)
        self.fake.add(self.features(fake))
        per_item = fr.shape[0] // real.shape[0]
        for i in range(real.shape[0]):  # alternate items between the two halves of the floor estimate
            self.real_halves[(self._items + i) % 2].add(fr[i * per_item:(i + 1) * per_item])
        self._items += real.shape[0]

    def compute(self) -> dict[str, float]:
        out = {"frechet_mdct": frechet_distance(*self.real.mean_cov(), *self.fake.mean_cov())}
        if self.real_halves[1].n >= 2:
            out["frechet_mdct_real_floor"] = frechet_distance(*self.real_halves[0].mean_cov(),
                                                              *self.real_halves[1].mean_cov())
        return out


@hookimpl
def register_metrics(register):
    register("tonality", Tonality)
    register("frechet_mdct", FrechetMdct)
