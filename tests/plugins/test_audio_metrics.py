"""Audio metrics through the registry: tonality against the spec's reference points (white noise ~9 %, a
pure tone at the clip of 100 %), Fréchet distance zero for identical sets and larger for noise."""

import math

import pytest
import torch

from framework.plugin_manager import collect_registries
from framework.protocols import DataInfo
from framework.runtime import Runtime

METRICS = collect_registries()["metrics"]
INFO = DataInfo(kind="audio", shape=(2, 128 * 100), sample_rate=22016)


def make(name):
    cls = METRICS.get(name).cls
    return cls(cls.Params(), representation=None, data_info=INFO, runtime=Runtime())


def test_tonality_reference_points():
    torch.manual_seed(0)
    t = torch.arange(INFO.shape[1]) / 22016
    tone = (0.5 * torch.sin(2 * math.pi * 1000 * t)).expand(4, 2, -1)
    noise = (torch.randn(4, 2, INFO.shape[1]) * 0.2).clamp(-1, 1)
    m = make("tonality")
    m.update(tone, noise)
    out = m.compute()
    assert out["tonality_real_pct"] > 90  # a pure tone: spectral flatness far below -60 dB in most blocks
    assert out["tonality_fake_pct"] == pytest.approx(9, abs=2)  # white noise ~0.09 (spec §2.5)


def test_frechet_mdct_zero_for_identical_sets_and_large_for_noise():
    torch.manual_seed(1)
    real = (torch.randn(4, 2, INFO.shape[1]) * 0.05).clamp(-1, 1)
    m = make("frechet_mdct")
    m.update(real, real)
    assert m.compute()["frechet_mdct"] == pytest.approx(0, abs=1e-6)
    m.reset()
    m.update(real, (torch.randn_like(real) * 0.5).clamp(-1, 1))
    out = m.compute()
    assert out["frechet_mdct"] > 10 * out["frechet_mdct_real_floor"]
