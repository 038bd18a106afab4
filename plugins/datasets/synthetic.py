"""Synthetic datasets generated on the fly, for smoke runs, tests and the learning ladder: no files,
deterministic per index.

``synthetic_audio``: stereo sums of a few sines with decaying envelopes plus a little noise. Its knobs make
easier or harder problems: pitches continuous (``log_uniform``), on the semitone grid, or on the MDCT bin grid
(a stationary sine there is one constant MDCT coefficient per block); how many tones, distinct or not; decay,
pan and phase ranges (equal ends fix a value); noise and peak. The defaults are the original set, item for item.
``synthetic_images``: soft random disks on a dark background, ``(C, H, W)``.
Item ``i`` is drawn from ``numpy.random.default_rng((seed, i))``, so every split and every resume sees
the same data; splits use different seeds.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from framework import hookimpl
from framework.protocols import DataInfo, Dataset

SPLIT_OFFSET = {"train": 0, "validation": 1, "test": 2}


def _split_seed(seed: int, split: str) -> int:
    if split not in SPLIT_OFFSET:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLIT_OFFSET)}")
    return seed * 10 + SPLIT_OFFSET[split]


def _check_range(name: str, pair: tuple, low: float, high: float = np.inf) -> None:
    if not (len(pair) == 2 and low <= pair[0] <= pair[1] <= high):
        raise ValueError(f"dataset.params.{name}: {list(pair)}; give [min, max] with {low} <= min <= max"
                         + (f" <= {high}" if high < np.inf else "") + " (equal ends fix the value)")


class SyntheticAudio(Dataset):
    """Stereo tones: by default each item is 1-4 sines (80 Hz - 4 kHz), exponentially decaying, panned, peak 0.8.

    Per tone, in this order: the frequency (log-uniform in [f_min, f_max], or uniform over :meth:`grid`), the decay
    rate, the pan, the phase; then the noise. An item is ``sum_tones [1 - pan, pan] * sin(2 pi f t + phase) *
    exp(-decay t)`` plus Gaussian noise, scaled to peak ``peak`` (mono and > 2 channels: every channel gain 1).
    """

    @dataclasses.dataclass(frozen=True)
    class Params:
        size: int = 64  # items per split
        samples: int = 16384  # T, samples per item
        sample_rate: int = 22016  # Hz (MP3net's rate: 128 bins x 172 blocks/s)
        channels: int = 2
        seed: int = 0
        # log_uniform: continuous; semitone: 440 * 2 ** ((m - 69) / 12), integer m; bin: multiples of
        # sample_rate / grid_bins (even multiples of the MDCT bin spacing: constant coefficients per block)
        pitch: Literal["log_uniform", "semitone", "bin"] = "log_uniform"
        f_min: float = 80.0  # Hz, lowest frequency (grid modes: lowest grid frequency allowed)
        f_max: float = 4000.0  # Hz, highest frequency, below Nyquist
        grid_bins: int = 32  # pitch bin: the MDCT's bins per block K (hop K samples)
        tones: tuple[int, int] = (1, 4)  # min, max tones per item (inclusive), uniform
        distinct: bool = False  # grid modes: the tones of an item are different grid frequencies
        decay: tuple[float, float] = (0.5, 8.0)  # exponential decay rate range, 1/s; (0, 0): stationary
        pan: tuple[float, float] = (0.2, 0.8)  # right-channel gain range (left: 1 - pan); equal ends: fixed
        phase: Literal["random", "zero"] = "random"  # zero: every tone starts at sin(0)
        noise: float = 0.003  # std of the added Gaussian noise (before peak normalisation)
        peak: float = 0.8  # every item's peak |x|

    def __init__(self, params: "SyntheticAudio.Params", *, split: str):
        self.params = p = params
        if p.pitch not in ("log_uniform", "semitone", "bin"):
            raise ValueError(f"dataset.params.pitch: {p.pitch!r}; valid: log_uniform, semitone, bin")
        if p.phase not in ("random", "zero"):
            raise ValueError(f"dataset.params.phase: {p.phase!r}; valid: random, zero")
        if p.grid_bins < 1:
            raise ValueError(f"dataset.params.grid_bins: {p.grid_bins}; must be >= 1")
        if not 0 < p.f_min <= p.f_max:
            raise ValueError(f"dataset.params.f_min, f_max: {p.f_min}, {p.f_max}; need 0 < f_min <= f_max")
        if p.f_max >= p.sample_rate / 2:
            raise ValueError(f"dataset.params.f_max: {p.f_max} Hz is not below Nyquist ({p.sample_rate / 2} Hz at "
                             f"sample_rate {p.sample_rate}); lower f_max or raise sample_rate")
        _check_range("tones", p.tones, 1)
        _check_range("decay", p.decay, 0)
        _check_range("pan", p.pan, 0, 1)
        if p.noise < 0:
            raise ValueError(f"dataset.params.noise: {p.noise}; must be >= 0")
        if not 0 < p.peak <= 1:
            raise ValueError(f"dataset.params.peak: {p.peak}; must be in (0, 1]")
        self._grid = self.grid()
        if self._grid is not None and not len(self._grid):
            raise ValueError(f"dataset.params.pitch: {p.pitch}: no grid frequency within [f_min, f_max] = "
                             f"[{p.f_min}, {p.f_max}] Hz; widen the range" + (
                                 f" or raise grid_bins (spacing {p.sample_rate / p.grid_bins:g} Hz)"
                                 if p.pitch == "bin" else ""))
        if p.distinct and self._grid is not None and len(self._grid) < p.tones[1]:
            raise ValueError(f"dataset.params.distinct: {len(self._grid)} grid frequencies in [{p.f_min}, "
                             f"{p.f_max}] Hz cannot give {p.tones[1]} distinct tones; lower tones or widen the range")
        self.seed = _split_seed(p.seed, split)
        self.info = DataInfo(kind="audio", shape=(p.channels, p.samples), sample_rate=p.sample_rate,
                             tags={"data.source": "synthetic_audio", "data.pitch": p.pitch})

    def grid(self) -> np.ndarray | None:
        """The frequencies (Hz, ascending) tones are drawn from; None for ``log_uniform`` (continuous)."""
        p = self.params
        if p.pitch == "semitone":
            lo, hi = (69 + 12 * np.log2(f / 440) for f in (p.f_min, p.f_max))
            return 440 * 2 ** ((np.arange(np.ceil(lo - 1e-9), np.floor(hi + 1e-9) + 1) - 69) / 12)
        if p.pitch == "bin":
            step = p.sample_rate / p.grid_bins  # 2 x the MDCT bin spacing sample_rate / (2 K)
            return step * np.arange(max(np.ceil(p.f_min / step - 1e-9), 1), np.floor(p.f_max / step + 1e-9) + 1)
        return None

    def __len__(self) -> int:
        return self.params.size

    def __getitem__(self, index: int) -> torch.Tensor:  # -> (C, T)
        p = self.params
        rng = np.random.default_rng((self.seed, index))
        t = np.arange(p.samples) / p.sample_rate
        x = np.zeros((p.channels, p.samples))
        free = self._grid
        for _ in range(rng.integers(p.tones[0], p.tones[1] + 1)):
            if free is None:
                f = np.exp(rng.uniform(np.log(p.f_min), np.log(p.f_max)))
            else:
                f = free[rng.integers(len(free))]
                free = free[free != f] if p.distinct else free
            env = np.exp(-t * rng.uniform(*p.decay))
            pan = rng.uniform(*p.pan)
            phase = rng.uniform(0, 2 * np.pi) if p.phase == "random" else 0.0
            tone = np.sin(2 * np.pi * f * t + phase) * env
            gains = np.array([1 - pan, pan] if p.channels == 2 else [1.0] * p.channels)
            x += gains[:, None] * tone[None]
        x += rng.normal(0, p.noise, x.shape)
        x *= p.peak / max(np.abs(x).max(), 1e-9)
        return torch.from_numpy(x.astype(np.float32))


class SyntheticImages(Dataset):
    """Soft disks of random position, radius and brightness; values in [-1, 1]. With ``classes`` > 0 item ``i``
    is labelled ``i % classes`` (arbitrary labels, to exercise class-conditional models without real data)."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        size: int = 64  # items per split
        shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
        seed: int = 0
        classes: int = 0  # > 0: labelled, item i in class i % classes

    def __init__(self, params: "SyntheticImages.Params", *, split: str):
        if params.classes < 0:
            raise ValueError(f"dataset.params.classes must be >= 0, got {params.classes}")
        self.params = params
        self.seed = _split_seed(params.seed, split)
        self.info = DataInfo(kind="image", shape=tuple(params.shape), tags={"data.source": "synthetic_images"},
                             num_classes=params.classes)

    def label(self, index: int) -> int:
        if not self.params.classes:
            return super().label(index)
        return index % self.params.classes

    def __len__(self) -> int:
        return self.params.size

    def __getitem__(self, index: int) -> torch.Tensor:  # -> (C, H, W)
        c, h, w = self.params.shape
        rng = np.random.default_rng((self.seed, index))
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.zeros((c, h, w))
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.1, 0.3) * min(h, w)
            disk = 1 / (1 + np.exp((np.hypot(yy - cy, xx - cx) - r) * 2))
            img += rng.uniform(0.5, 1.0, size=(c, 1, 1)) * disk[None]
        return torch.from_numpy((np.clip(img, 0, 1) * 2 - 1).astype(np.float32))


@hookimpl
def register_datasets(register):
    register("synthetic_audio", SyntheticAudio)
    register("synthetic_images", SyntheticImages)
