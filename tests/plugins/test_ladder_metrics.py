"""The learning ladder's pass criteria on synthetic ground truth: stationary sines are concentrated and a
loudness+tilt baseline made from them is not; a generator that plays one tone is far from 8 real pitches while two
draws of the real pitches are close; harmonic tones are found (share and key), noise is not; bad params name their
field."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from framework.plugin_manager import collect_registries
from framework.protocols import DataInfo
from framework.runtime import Runtime
from plugins.metrics.ladder import baseline_audio, loudness_tilt_baseline

ROOT = Path(__file__).resolve().parents[2]
METRICS = collect_registries()["metrics"]
SR, K = 22016, 32
SINE_T, TONE_T = 2016, 8192  # 63 MDCT blocks of 32 bins (92 ms); 0.37 s, FFT bins of 2.7 Hz
# MDCT bin centres (k + 1/2) sr / (2K), 3 bins apart: one peak bin per pitch. (A sine on a bin edge, a multiple of
# sr / (2K) such as synthetic_audio's pitch: bin grid, splits its energy between two bins by its phase: two peak bins.)
PITCH_BINS = (2, 5, 8, 11, 14, 17, 20, 23)


def make(name, info=DataInfo("audio", (2, SINE_T), SR), **params):
    cls = METRICS.get(name).cls
    return cls(cls.Params(**params), representation=None, data_info=info, runtime=Runtime())


def sines(bins, g, T=SINE_T):  # (n,) MDCT bins -> (n, 2, T): one stationary sine per clip, random phase per channel
    f = (torch.as_tensor(bins, dtype=torch.float64) + 0.5) * SR / (2 * K)
    phase = torch.rand(len(f), 2, 1, generator=g, dtype=torch.float64) * 2 * math.pi
    return (0.5 * torch.sin(2 * math.pi * f[:, None, None] * torch.arange(T) / SR + phase)).float()


def random_pitches(n, g):
    return [PITCH_BINS[i] for i in torch.randint(len(PITCH_BINS), (n,), generator=g)]


def tones(keys, g, T=TONE_T, harmonics=8):  # (n,) MIDI keys -> (n, 2, T): 1/h partials, decaying, random phases
    f = 440 * 2 ** ((torch.as_tensor(keys, dtype=torch.float64) - 69) / 12)[:, None] * torch.arange(1, harmonics + 1)
    t = torch.arange(T, dtype=torch.float64) / SR
    phase = torch.rand(len(f), 2, harmonics, 1, generator=g, dtype=torch.float64) * 2 * math.pi
    amp = torch.where(f < SR / 2, 1 / torch.arange(1, harmonics + 1), 0.0)[:, None, :, None]
    x = (amp * torch.sin(2 * math.pi * f[:, None, :, None] * t + phase)).sum(2) * torch.exp(-4 * t)
    return (0.9 * x / x.abs().amax((1, 2), keepdim=True)).float()


def test_sines_are_concentrated_and_the_loudness_tilt_baseline_is_not():
    g = torch.Generator().manual_seed(0)
    real = sines(random_pitches(64, g), g)
    m = make("peak_concentration")
    m.update(real[:40], baseline_audio(real[:40], K, 40, g))  # two updates: the means are over all clips
    m.update(real[40:], baseline_audio(real[40:], K, 24, g))
    out = m.compute()
    assert out["peak_conc_real"] >= 0.95 and out["peak_conc_block_real"] >= 0.9  # measured 0.986, 0.927
    assert out["peak_conc_fake"] < 0.4 and out["peak_conc_block_fake"] < 0.5  # measured ~0.15, ~0.28
    m.reset()
    silence = torch.zeros_like(real[:4])
    m.update(silence, silence)
    assert m.compute() == {k: 0.0 for k in out}  # no energy: no peak


def test_baseline_keeps_the_rms_envelope_and_decodes_like_the_mdct_representation():
    g = torch.Generator().manual_seed(1)
    real_mdct = torch.randn(8, 2, 41, K, generator=g) * torch.linspace(1, 0, K) * torch.rand(41, 1, generator=g)
    z = loudness_tilt_baseline(real_mdct, 2000, g)
    assert z.shape == (2000, 2, 41, K)
    # the std per (block, bin) is the data's RMS there: 4000 draws each, ~1 % sampling error
    assert torch.allclose(z.square().mean((0, 1)).sqrt(), real_mdct.square().mean((0, 1)).sqrt(), rtol=0.05)
    real = torch.zeros(4, 2, 40 * K - 5)
    real[..., : 20 * K] = torch.randn(4, 2, 20 * K, generator=g) * 0.1  # loud first half, silent second half
    audio = baseline_audio(real, K, 3, g)
    assert audio.shape == (3, 2, 39 * K) and audio.abs().max() <= 1  # T cropped to 39 blocks, as decode would
    assert audio[..., 21 * K:].eq(0).all() and audio[..., : 19 * K].square().mean() > 1e-3  # aligned with the data


def test_pitch_tv_separates_a_collapsed_generator_from_another_draw_of_the_pitches():
    g = torch.Generator().manual_seed(2)
    real, other = sines(random_pitches(64, g), g), sines(random_pitches(64, g), g)
    m = make("pitch_histogram")
    m.update(real, sines([PITCH_BINS[3]] * 64, g))  # collapse: one tone whatever the input
    collapsed = m.compute()
    assert collapsed["pitch_tv"] >= 0.7 and collapsed["pitch_distinct_fake"] == 1  # measured 0.86
    assert collapsed["pitch_distinct_real"] == 8
    m.reset()
    m.update(real[:32], other[:32])
    m.update(real[32:], other[32:])
    out = m.compute()
    assert out["pitch_tv"] < 0.35 and out["pitch_distinct_fake"] == 8  # measured 0.22
    assert out["pitch_tv_real_floor"] == collapsed["pitch_tv_real_floor"] < 0.5  # the same real clips, n/2 each


def test_pitch_tv_floor_alternates_items():
    g = torch.Generator().manual_seed(3)
    real = sines([PITCH_BINS[i // 4] for i in range(32)], g)  # sorted: the two halves share no pitch, even/odd do
    m = make("pitch_histogram")
    m.update(real, real.flip(0))
    out = m.compute()
    assert out["pitch_tv"] == 0 and out["pitch_tv_real_floor"] == 0


def test_harmonic_tones_are_found_and_noise_is_not():
    g = torch.Generator().manual_seed(4)
    info = DataInfo("audio", (2, TONE_T), SR)
    keys = torch.randint(40, 90, (32,), generator=g)
    real = tones(keys, g)
    noise = (torch.randn(32, 2, TONE_T, generator=g) * 0.2).clamp(-1, 1)
    m = make("harmonic_concentration", info)
    m.update(real, noise)
    out = m.compute()
    assert out["harmonic_conc_real"] >= 0.8 and out["harmonic_conc_fake"] < 0.4  # measured 0.98, 0.17
    m.reset()
    m.update(real, baseline_audio(real, K, 32, g))
    assert m.compute()["harmonic_conc_fake"] < 0.4  # measured 0.11
    share, found = m.fit(real)
    assert share.shape == (32,) and (found == keys).float().mean() >= 0.9  # measured: all 32
    _, found = m.fit(tones(keys, g, harmonics=1))  # pure sines: every subharmonic ties; the highest key wins
    assert (found == keys).float().mean() >= 0.9
    frames = make("harmonic_concentration", info, fft=2048)  # Welch frames: the same answer, coarser bins
    assert torch.equal(frames.fit(real)[1], keys)


def test_pitch_histogram_key_mode():
    g = torch.Generator().manual_seed(5)
    info = DataInfo("audio", (2, TONE_T), SR)
    keys = [48, 50, 52, 53, 55, 57, 59, 60]
    m = make("pitch_histogram", info, mode="key")
    m.update(tones(keys * 4, g), tones([57] * 32, g))
    out = m.compute()
    assert out["pitch_distinct_real"] == 8 and out["pitch_distinct_fake"] == 1
    assert out["pitch_tv"] == pytest.approx(0.875)  # 7/8 of the real keys are never played
    m.reset()
    m.update(tones(keys * 4, g), tones(keys[::-1] * 4, g))
    assert m.compute()["pitch_tv"] == 0


@pytest.mark.parametrize("name, params, field", [
    ("peak_concentration", {"bins": 31}, "bins"),
    ("peak_concentration", {"radius": -1}, "radius"),
    ("pitch_histogram", {"bins": 0}, "bins"),
    ("pitch_histogram", {"mode": "cent"}, "mode"),
    ("pitch_histogram", {"mode": "key", "min_key": 90, "max_key": 80}, "min_key"),
    ("harmonic_concentration", {"min_key": 97}, "min_key"),
    ("harmonic_concentration", {"max_key": 140}, "max_key"),
    ("harmonic_concentration", {"harmonics": 0}, "harmonics"),
    ("harmonic_concentration", {"width": 0.0}, "width"),
    ("harmonic_concentration", {"fft": SINE_T + 1}, "fft"),
])
def test_bad_params_name_their_field(name, params, field):
    with pytest.raises(ValueError, match=rf"metrics\.N\.params\.{field} must"):
        make(name, **params)


@pytest.mark.parametrize("name, params", [("harmonic_concentration", {}), ("pitch_histogram", {"mode": "key"})])
def test_harmonic_fit_needs_a_sample_rate(name, params):
    with pytest.raises(ValueError, match=r"data_info\.sample_rate"):
        make(name, DataInfo("audio", (2, SINE_T)), **params)
    make("pitch_histogram", DataInfo("audio", (2, SINE_T)))  # peak bins need none


def test_cli_lists_the_ladder_metrics():
    out = subprocess.run([sys.executable, "-m", "framework", "plugins"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("peak_concentration", "pitch_histogram", "harmonic_concentration"):
        assert name in out.stdout
