"""``envelope`` on synthetic ground truth: an exponentially decaying harmonic tone is measured at its decay rate and
a held one at none; a ramp's rise time is its 10-90 % time; a level change changes nothing; held tones, slow
attacks and silence are far from decaying tones while another draw of decaying tones stays at the floor; three
struck tones are three notes; bad params name their field; and the metric runs in a spec's smoke run."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from framework.plugin_manager import collect_registries
from framework.protocols import DataInfo
from framework.runner import run
from framework.spec import load_spec
from plugins.metrics.envelope import CLIP, SILENT

ROOT = Path(__file__).resolve().parents[2]
REG = collect_registries()
SR, T = 22016, 16320  # the ladder's piano-note clips: 0.74 s
ONSET = 0.01  # s, as piano_notes strikes its notes
INFO = DataInfo("audio", (2, T), SR)


def make(info=INFO, **params):
    cls = REG["metrics"].get("envelope").cls
    return cls(cls.Params(**params), representation=None, data_info=info, runtime=None)


def tones(keys, decay_db_s, g, attack_s=0.0, T=T, onset=ONSET):
    """(n,) MIDI keys, (n,) decay rates in dB/s -> (n, 2, T): 6 harmonics (1/h) with random phases, struck at
    ``onset`` s, rising linearly over ``attack_s``, then decaying exponentially; peak 0.5."""
    t = torch.arange(T, dtype=torch.float64) / SR
    f0 = 440 * 2 ** ((torch.as_tensor(keys, dtype=torch.float64) - 69) / 12)
    h = torch.arange(1, 7, dtype=torch.float64)
    phase = torch.rand(len(f0), 2, 6, 1, generator=g, dtype=torch.float64) * 2 * math.pi
    x = ((1 / h)[:, None] * torch.sin(2 * math.pi * f0[:, None, None, None] * h[:, None] * t + phase)).sum(2)
    rate = torch.as_tensor(decay_db_s, dtype=torch.float64)[:, None, None]
    since = t - onset
    rise = (since / attack_s).clamp(0, 1) if attack_s > 0 else (since >= 0).double()
    y = x * rise * 10 ** (-rate * (since - attack_s).clamp_min(0) / 20)
    return (0.5 * y / y.abs().amax((1, 2), keepdim=True)).float()


def notes_of(m, x):
    return np.concatenate(m.features(x))


def test_a_decaying_tone_is_measured_at_its_rate_and_a_held_one_at_none():
    g = torch.Generator().manual_seed(0)
    m = make()
    keys = [48, 60, 72, 84]
    decaying = notes_of(m, tones(keys, [40.0] * 4, g))
    held = notes_of(m, tones(keys, [0.0] * 4, g))
    assert decaying.shape == held.shape == (4, 4)  # one note per clip
    attack, early, late, onset = decaying.T
    assert (attack < 20).all()  # an abrupt onset: the 23 ms frames' floor (measured 10.2-10.6 ms)
    assert np.allclose(early, -40, atol=3) and np.allclose(late, -40, atol=3)  # measured -39.0, -40.0
    assert (onset > 3).all()
    assert np.abs(held[:, 1:3]).max() < 2  # no decay
    assert np.allclose(held[:, 0], attack, atol=2) and np.allclose(held[:, 3], onset, rtol=0.05)  # same start


def test_attack_time_is_the_10_to_90_percent_rise():
    g = torch.Generator().manual_seed(1)
    m = make()
    for ramp in (0.05, 0.2):  # a linear rise of the amplitude: 10 % -> 90 % takes 0.8 of it (measured 40.7, 158)
        attack = notes_of(m, tones([60, 72], [20.0, 20.0], g, attack_s=ramp))[:, 0]
        assert np.allclose(attack, 800 * ramp, rtol=0.2), (ramp, attack)


def test_a_level_change_changes_nothing():
    g = torch.Generator().manual_seed(2)
    m = make()
    x = tones([50, 65, 80], [10.0, 30.0, 60.0], g)
    assert np.allclose(notes_of(m, x), notes_of(m, 0.05 * x), atol=1e-3)


def test_held_tones_slow_attacks_and_silence_are_far_from_real_decaying_tones_and_a_second_draw_is_not():
    g = torch.Generator().manual_seed(3)
    n = 48

    def draw(**kw):
        keys = torch.randint(48, 85, (n,), generator=g).tolist()
        return tones(keys, (20 + 40 * torch.rand(n, generator=g)).tolist(), g, **kw)

    real = draw()
    m = make()
    scores = {}
    for name, fake in {"real": draw(), "held": tones(torch.randint(48, 85, (n,), generator=g).tolist(), [0.0] * n, g),
                       "slow attack": draw(attack_s=0.15), "silence": torch.zeros_like(real)}.items():
        m.reset()
        for i in range(0, n, 16):  # several updates: the statistics are over all of them
            m.update(real[i:i + 16], fake[i:i + 16])
        scores[name] = m.compute()
    floor = scores["real"]["envelope_frechet_real_floor"]
    assert scores["real"]["envelope_frechet"] < max(3 * floor, 0.2)  # measured 0.007, floor 0.013
    for name in ("held", "slow attack", "silence"):
        assert scores[name]["envelope_frechet"] > 20 * max(floor, 0.05), (name, scores[name]["envelope_frechet"])
        # measured: held 11.2, slow attack 18.9, silence 92
    assert abs(scores["held"]["envelope_decay_early_db_s_fake"]) < 2 < -scores["held"]["envelope_decay_early_db_s_real"]
    assert scores["slow attack"]["envelope_attack_ms_fake"] > 100 > 20 > scores["real"]["envelope_attack_ms_fake"]
    assert scores["silence"]["envelope_attack_ms_fake"] == CLIP["attack_ms"][1]  # a silent clip: SILENT
    assert scores["real"]["envelope_notes_per_s_fake"] == pytest.approx(SR / T)  # one note per clip
    m.reset()
    m.update(real, real)
    assert m.compute()["envelope_frechet"] == pytest.approx(0.0, abs=1e-9)


def test_each_note_of_a_phrase_is_found_and_silence_is_one_note_that_never_starts():
    g = torch.Generator().manual_seed(4)
    m = make()
    # two phrases of three notes, each a new key struck over the previous ones' decay
    x = sum(tones([k, k + 7], [30.0, 30.0], g, onset=on) for k, on in ((55, 0.05), (60, 0.3), (64, 0.55)))
    notes = m.features(x)
    assert [len(v) for v in notes] == [3, 3]
    assert np.allclose(np.concatenate(notes)[:, 1], -30, atol=4)  # each note's own partials decay at its rate
    assert np.array_equal(m.features(torch.zeros(1, 2, T))[0], np.array([SILENT]))


def test_a_single_set_of_clips_has_no_floor_and_bad_params_name_their_field():
    m = make()
    with pytest.raises(ValueError, match="before any update"):
        m.compute()
    x = tones([60], [30.0], torch.Generator().manual_seed(5))
    m.update(x, x)
    out = m.compute()
    assert "envelope_frechet_real_floor" not in out and math.isnan(out["envelope_frechet"])  # one note a side
    with pytest.raises(ValueError, match=r"params.late_ms must be > early_ms"):
        make(early_ms=100.0, late_ms=50.0)
    with pytest.raises(ValueError, match=r"params.hop_ms must be > 0"):
        make(hop_ms=0.0)
    with pytest.raises(ValueError, match="envelope needs audio data"):
        make(info=DataInfo("image", (1, 28, 28)))


def test_envelope_in_a_spec_smoke_run():
    spec = load_spec(ROOT / "experiments" / "toy_synthetic.yaml", REG, smoke=True,
                     sets=["tracking.system_metrics=false", "metrics=[{name: envelope, params: {late_ms: 300}}]"])
    result = run(spec, REG, log=lambda m: None)
    assert result.status == "FINISHED"
    m = result.metrics
    for key in ("envelope_frechet", "envelope_frechet_real_floor", "envelope_attack_ms_fake",
                "envelope_notes_per_s_real"):
        assert math.isfinite(m[f"eval/{key}"]), key
