"""Synthetic datasets generated on the fly, for smoke runs and tests: no files, deterministic per index.

``synthetic_audio``: stereo sums of a few random sines with decaying envelopes plus a little noise.
``synthetic_images``: soft random disks on a dark background, ``(C, H, W)``.
Item ``i`` is drawn from ``numpy.random.default_rng((seed, i))``, so every split and every resume sees
the same data; splits use different seeds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from framework import hookimpl
from framework.protocols import DataInfo, Dataset

SPLIT_OFFSET = {"train": 0, "validation": 1, "test": 2}


def _split_seed(seed: int, split: str) -> int:
    if split not in SPLIT_OFFSET:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLIT_OFFSET)}")
    return seed * 10 + SPLIT_OFFSET[split]


class SyntheticAudio(Dataset):
    """Stereo tones: each item is 1-4 sines (80 Hz - 4 kHz), exponentially decaying, panned, peak 0.8."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        size: int = 64  # items per split
        samples: int = 16384  # T, samples per item
        sample_rate: int = 22016  # Hz (MP3net's rate: 128 bins x 172 blocks/s)
        channels: int = 2
        seed: int = 0

    def __init__(self, params: "SyntheticAudio.Params", *, split: str):
        self.params = params
        self.seed = _split_seed(params.seed, split)
        self.info = DataInfo(kind="audio", shape=(params.channels, params.samples), sample_rate=params.sample_rate,
                             tags={"data.source": "synthetic_audio"})

    def __len__(self) -> int:
        return self.params.size

    def __getitem__(self, index: int) -> torch.Tensor:  # -> (C, T)
        p = self.params
        rng = np.random.default_rng((self.seed, index))
        t = np.arange(p.samples) / p.sample_rate
        x = np.zeros((p.channels, p.samples))
        for _ in range(rng.integers(1, 5)):
            f = np.exp(rng.uniform(np.log(80), np.log(4000)))
            env = np.exp(-t * rng.uniform(0.5, 8.0))
            pan = rng.uniform(0.2, 0.8)
            tone = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * env
            gains = np.array([1 - pan, pan] if p.channels == 2 else [1.0] * p.channels)
            x += gains[:, None] * tone[None]
        x += rng.normal(0, 0.003, x.shape)
        x *= 0.8 / max(np.abs(x).max(), 1e-9)
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
