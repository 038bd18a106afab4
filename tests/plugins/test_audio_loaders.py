"""``audio_folder`` and ``maestro`` on tiny generated files: every format and rate the brief names (16/24-bit,
8-bit, float, mono, 44.1/48 kHz, ogg), corrupt/empty/short files and names that are not UTF-8 skipped with one
warning, MAESTRO's three metadata layouts and its split column, the cache validity check, and construction
through the registry."""

import csv
import json
import os
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from framework.errors import DataError
from framework.plugin_manager import collect_registries, make_plugin_manager

RATE = 22016
MODULES = ("plugins.datasets.audio_folder", "plugins.datasets.maestro")
DATASETS = collect_registries(make_plugin_manager(MODULES, entry_points=False))["datasets"]


def sine(seconds, rate, channels=2, freq=440.0, amp=0.5):
    x = amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)
    return np.stack([x * (1 - 0.5 * c) for c in range(channels)], 1)  # channel c at amplitude amp * (1 - c/2)


def build(name, **params):
    """``cls(cls.Params(**params), split=...)`` factory, as the framework builds plugins."""
    cls = DATASETS.get(name).cls
    return cls, cls.Params(**params)


@pytest.fixture()
def folder(tmp_path):
    src = tmp_path / "audio"
    (src / "sub").mkdir(parents=True)
    sf.write(src / "stereo16.wav", sine(2, RATE), RATE, subtype="PCM_16")
    sf.write(src / "mono8_48k.wav", sine(2, 48000, channels=1), 48000, subtype="PCM_U8")
    sf.write(src / "sub" / "stereo24_44k.flac", sine(2, 44100), 44100, subtype="PCM_24")
    sf.write(src / "float.wav", sine(2, RATE), RATE, subtype="FLOAT")
    sf.write(src / "vorbis.ogg", sine(2, 44100), 44100, format="OGG", subtype="VORBIS")
    sf.write(src / "short.wav", sine(0.2, RATE), RATE)
    sf.write(src / "empty.wav", np.zeros((0, 2)), RATE)
    (src / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    (src / ".hidden").mkdir()
    sf.write(src / ".hidden" / "ignored.wav", sine(2, RATE), RATE)
    (src / "notes.txt").write_text("not audio")
    return src


def test_registered_in_the_default_registry():
    names = set(collect_registries()["datasets"].names())
    assert {"audio_folder", "maestro", "piano"} <= names, \
        "add plugins.datasets.maestro to framework/plugin_manager.py BUILTIN_MODULES"


def test_audio_folder_converts_every_format_and_skips_bad_files_with_one_warning(folder, tmp_path):
    cls, p = build("audio_folder", source=str(folder), cache=str(tmp_path / "cache"), window_samples=4096,
                   windows_per_epoch=6, validation=0.0, test=0.0, workers=1)
    assert not cls.is_prepared(p)
    with pytest.raises(DataError, match=r"cache is missing.*python -m framework prepare"):
        cls(p, split="train")
    with pytest.warns(UserWarning) as caught:
        summary = cls.prepare(p)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "3 file(s) skipped" in text and all(f in text for f in ("corrupt.wav", "empty.wav", "short.wav"))
    assert "5 of 8 files cached" in summary and cls.is_prepared(p)
    m = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert m["skipped_count"] == 3 and m["splits"]["train"]["pieces"] == 5
    pieces = {q["name"]: q for q in json.loads((tmp_path / "cache" / "train.pieces.json").read_text())}
    assert sorted(pieces) == ["float.wav", "mono8_48k.wav", "stereo16.wav", "sub/stereo24_44k.flac", "vorbis.ogg"]
    assert all(q["samples"] == 2 * RATE for q in pieces.values())  # 48 k and 44.1 k resampled: still 2 s
    data = np.load(tmp_path / "cache" / "train.npy") / 32767.0
    ref = sine(2, RATE).T  # what every file holds, at the target rate
    for name, tol in (("stereo16.wav", 1e-4), ("float.wav", 1e-4), ("sub/stereo24_44k.flac", 3e-3)):
        q = pieces[name]
        x = data[:, q["start"]:q["start"] + q["samples"]]
        assert np.abs(x - ref)[:, 200:-200].max() < tol, name
    q = pieces["mono8_48k.wav"]
    mono = data[:, q["start"]:q["start"] + q["samples"]]
    assert np.array_equal(mono[0], mono[1])  # duplicated to stereo
    assert np.abs(mono[0] - ref[0])[200:-200].max() < 0.02  # 8-bit: 1/128 steps
    ds = cls(p, split="train")
    x = ds[5]
    assert x.shape == (2, 4096) and x.dtype == torch.float32 and torch.equal(ds[5], x)
    assert ds.info.sample_rate == RATE and ds.info.tags["data.skipped"] == "3"
    described = cls.describe(p)  # what bench reads: the same kind, shape and rate, without the cache
    assert (described.kind, described.shape, described.sample_rate) == (ds.info.kind, ds.info.shape, RATE)


def test_mono_files_can_be_refused_and_params_changes_require_preparing_again(folder, tmp_path):
    cls, p = build("audio_folder", source=str(folder), cache=str(tmp_path / "c"), validation=0.0, test=0.0,
                   mono_to_stereo=False, workers=2)  # two spawned workers: the parallel path
    with pytest.warns(UserWarning, match="mono8_48k.wav: has 1 channel"):
        cls.prepare(p)
    assert cls.is_prepared(p)
    changed = cls.Params(**{**p.__dict__, "sample_rate": 16000})
    assert not cls.is_prepared(changed)
    with pytest.raises(DataError, match="was built from other params"):
        cls(changed, split="train")


def test_audio_folder_splits_by_path_hash(tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):
        sf.write(src / f"f{i:02d}.wav", sine(1.1, 8000, freq=100), 8000, subtype="PCM_16")
    cls, p = build("audio_folder", source=str(src), cache=str(tmp_path / "c"), validation=0.25, test=0.25,
                   window_samples=1000, workers=1)
    first = {f.name: f.split for f in cls.list_files(p)}
    sf.write(src / "new.wav", sine(1.1, 8000), 8000)
    assert {f.name: f.split for f in cls.list_files(p) if f.name != "new.wav"} == first  # stable when adding
    assert set(first.values()) == {"train", "validation", "test"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to skip: no warning
        cls.prepare(p)
    for split in ("train", "validation", "test"):
        assert cls(p, split=split)[0].shape == (2, 1000)


def test_audio_folder_errors_name_the_folder(tmp_path):
    cls, p = build("audio_folder", source=str(tmp_path / "missing"))
    with pytest.raises(DataError, match="missing is not a folder"):
        cls.prepare(p)
    (tmp_path / "emptydir").mkdir()
    cls, p = build("audio_folder", source=str(tmp_path / "emptydir"), cache=str(tmp_path / "c"), workers=1)
    with pytest.raises(DataError, match="emptydir: no audio files found"):
        cls.prepare(p)


def maestro_tree(root, layout):
    """A MAESTRO-like tree: year folders of 16-bit stereo WAVs (48 and 44.1 kHz) and the metadata file."""
    rows = []
    for i, (split, rate) in enumerate([("train", 48000), ("train", 44100), ("validation", 44100), ("test", 48000)]):
        name = f"2018/MIDI-Unprocessed_{i:02d}_R1_2018_wav--{i}.wav"
        (root / "2018").mkdir(parents=True, exist_ok=True)
        sf.write(root / name, sine(1.5, rate, freq=220 * (i + 1)), rate, subtype="PCM_16")
        rows.append({"canonical_composer": "Composer", "canonical_title": f"Piece {i}", "split": split, "year": 2018,
                     "midi_filename": name.replace(".wav", ".midi"), "audio_filename": name, "duration": 1.5})
    rows.append({**rows[0], "split": "train", "audio_filename": "2018/missing.wav"})
    if layout == "csv":
        with open(root / "maestro-v3.0.0.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif layout == "json_v3":  # columnar: {column: {row index: value}}
        (root / "maestro-v3.0.0.json").write_text(json.dumps({k: {str(i): r[k] for i, r in enumerate(rows)}
                                                              for k in rows[0]}))
    else:  # v2: a list of rows
        (root / "maestro-v2.0.0.json").write_text(json.dumps(rows))
    return rows


@pytest.mark.parametrize("layout", ["csv", "json_v3", "json_v2"])
def test_maestro_layouts_keep_the_split_column(tmp_path, layout):
    src = tmp_path / "maestro-v3.0.0"
    maestro_tree(src, layout)
    cls, p = build("maestro", source=str(src), cache=str(tmp_path / "c"), window_samples=2048, windows_per_epoch=3,
                   workers=1)
    with pytest.warns(UserWarning, match="2018/missing.wav: no such file"):
        summary = cls.prepare(p)
    assert "4 of 5 files cached" in summary
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert {s: v["pieces"] for s, v in m["splits"].items()} == {"train": 2, "validation": 1, "test": 1}
    assert all(v["samples"] == v["pieces"] * int(1.5 * RATE) for v in m["splits"].values())
    for split in ("train", "validation", "test"):
        assert cls(p, split=split)[2].shape == (2, 2048)


def test_maestro_metadata_errors(tmp_path):
    cls, p = build("maestro", source=str(tmp_path))
    with pytest.raises(DataError, match="no maestro-v.*csv or maestro-v.*json"):
        cls.prepare(p)
    (tmp_path / "maestro-v3.0.0.csv").write_text("split,audio_filename\nholdout,2018/a.wav\n")
    with pytest.raises(DataError, match="row 0 has no valid split"):
        cls.prepare(p)


def test_default_cache_folder_is_per_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cls, _ = build("maestro")
    a = cls.cache_dir(cls.Params(source=str(tmp_path / "x" / "maestro")))
    b = cls.cache_dir(cls.Params(source=str(tmp_path / "y" / "maestro")))
    assert a != b and a.parent.as_posix() == "data/cache" and a.name.startswith("maestro_maestro_")


def test_a_changed_source_folder_makes_the_cache_out_of_date_and_run_converts_it_again(tmp_path):
    """A folder of only bad files gives an empty cache; after good files are added (or one is rewritten) the
    cache is out of date, constructing it says so, and the runner's preparation converts it again."""
    from framework.build import ensure_prepared
    from framework.spec import PluginBlock

    src = tmp_path / "audio"
    src.mkdir()
    sf.write(src / "short.wav", sine(0.2, RATE), RATE)
    (src / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    cls, p = build("audio_folder", source=str(src), cache=str(tmp_path / "c"), window_samples=1000,
                   validation=0.0, test=0.0, workers=1)
    with pytest.warns(UserWarning, match="2 file"):
        cls.prepare(p)
    assert cls.is_prepared(p)
    with pytest.raises(DataError, match=r"split 'train' is empty .*2 file\(s\) were skipped"):
        cls(p, split="train")

    sf.write(src / "good.wav", sine(2, RATE), RATE)
    assert not cls.is_prepared(p)
    with pytest.raises(DataError, match=r"out of date \(1 file\(s\) added in .*audio since it was prepared\); run "
                                        r"`python -m framework prepare SPEC`"):
        cls(p, split="train")
    log = []
    with pytest.warns(UserWarning, match="2 file"):
        ensure_prepared(PluginBlock("audio_folder", p, cls), log.append)
    assert "out of date" in log[0] and "converted again: 1 file(s) added since the last preparation" in log[1]
    assert cls.is_prepared(p) and cls(p, split="train").total == 2 * RATE

    sf.write(src / "good.wav", sine(3, RATE), RATE)  # rewritten: another size
    assert not cls.is_prepared(p)
    with pytest.warns(UserWarning):
        assert "1 file(s) changed" in cls.prepare(p)
    (src / "corrupt.wav").unlink()
    assert cls.source_change(p) == "1 file(s) removed"

    moved = tmp_path / "elsewhere"  # a cache used where its source folder does not exist: used as it is
    src.rename(moved)
    assert cls.is_prepared(p) and cls(p, split="train").total == 3 * RATE


def test_a_file_name_that_is_not_utf8_is_skipped_with_its_reason(tmp_path):
    src = tmp_path / "audio"
    src.mkdir()
    sf.write(src / "good.wav", sine(2, RATE), RATE)
    os.link(os.fsencode(src / "good.wav"), os.fsencode(src) + b"/caf\xe9.wav")  # a Latin-1 byte in the name
    cls, p = build("audio_folder", source=str(src), cache=str(tmp_path / "cache"), validation=0.0, test=0.0,
                   workers=1)
    with pytest.warns(UserWarning, match=r"1 file\(s\) skipped while preparing: caf\\xe9.wav: file name is not "
                                         r"valid UTF-8 \(rename the file\)"):
        assert "1 of 2 files cached" in cls.prepare(p)
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["skipped"] == [
        "caf\\xe9.wav: file name is not valid UTF-8 (rename the file)"]
