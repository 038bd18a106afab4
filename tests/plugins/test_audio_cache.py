"""The prepared audio cache: atomic writes, validity checks, exact windows, determinism, picklability, resampling.

Windows are checked against what was written: each piece is a ramp that encodes (piece, sample index), so a
window's content tells exactly where it was read from.
"""

import json
import pickle

import numpy as np
import pytest
import torch

from framework.errors import DataError
from plugins.datasets.audio_cache import (SCALE, CacheWriter, WindowDataset, WindowParams, imap_ordered, is_complete,
                                          read_manifest, resample, split_of, to_int16)

RATE = 22016


def ramp(piece: int, n: int) -> np.ndarray:
    """int16 (2, n): left = sample index mod 10000, right = 20000 + piece (tells pieces apart)."""
    return np.stack([np.arange(n) % 10000, np.full(n, 20000 + piece)]).astype(np.int16)


def write_cache(root, lengths, split="train", config=None):
    with CacheWriter(root, RATE, config or {"test": 1}) as w:
        for i, n in enumerate(lengths):
            w.add(split, f"piece{i}", ramp(i, n))
        return w.commit({"source": "test"})


def as_int(x: torch.Tensor) -> np.ndarray:
    return np.rint(x.numpy() * SCALE).astype(np.int64)


def test_commit_writes_planar_int16_and_manifest(tmp_path):
    m = write_cache(tmp_path / "c", [1000, 500])
    a = np.load(tmp_path / "c" / "train.npy")
    assert a.shape == (2, 1500) and a.dtype == np.int16
    assert np.array_equal(a[:, 1000:], ramp(1, 500))
    pieces = json.loads((tmp_path / "c" / "train.pieces.json").read_text())
    assert pieces == [{"name": "piece0", "start": 0, "samples": 1000},
                      {"name": "piece1", "start": 1000, "samples": 500}]
    size = (tmp_path / "c" / "train.npy").stat().st_size
    assert m["splits"]["train"] == {"samples": 1500, "pieces": 2, "bytes": size, "hours": round(1500 / RATE / 3600, 4)}
    assert m["splits"]["validation"]["samples"] == 0 and m["source"] == "test"
    assert is_complete(tmp_path / "c", {"test": 1}) and not is_complete(tmp_path / "c", {"test": 2})


def test_interrupted_preparation_never_looks_complete(tmp_path):
    root = tmp_path / "c"
    w = CacheWriter(root, RATE, {})
    w.add("train", "a", ramp(0, 100))
    assert not is_complete(root) and not root.exists()  # killed here: only root.partial exists
    with pytest.raises(RuntimeError):
        with CacheWriter(root, RATE, {}) as w2:  # the next preparation discards the stale partial folder
            w2.add("train", "a", ramp(0, 100))
            raise RuntimeError("interrupted")
    assert not root.exists() and not (tmp_path / "c.partial").exists()


def test_rebuild_replaces_a_cache_and_corruption_is_detected(tmp_path):
    root = tmp_path / "c"
    write_cache(root, [100])
    write_cache(root, [300, 300])
    assert read_manifest(root)["splits"]["train"]["samples"] == 600 and not (tmp_path / "c.old").exists()
    with open(root / "train.npy", "r+b") as f:
        f.truncate(500)
    assert not is_complete(root)


def test_int16_round_trip_is_exact_to_one_step_and_bounded():
    x = np.array([[-1.2, -1.0, -0.5, 0.0, 1e-6, 0.5, 1.0, 1.3]], dtype=np.float32)
    q = to_int16(x)
    assert q.min() == -32767 and q.max() == 32767
    assert np.abs(q / SCALE - np.clip(x, -1, 1)).max() <= 0.5 / SCALE


def test_windows_are_exact_slices_and_deterministic_per_index(tmp_path):
    write_cache(tmp_path / "c", [5000, 3000, 7000])
    p = WindowParams(window_samples=2000, windows_per_epoch=50, seed=3)
    ds = WindowDataset(tmp_path / "c", "train", p)
    full = np.concatenate([ramp(0, 5000), ramp(1, 3000), ramp(2, 7000)], axis=1)
    starts = [ds.start_of(i) for i in range(50)]
    for i in range(50):
        x = ds[i]
        assert x.shape == (2, 2000) and x.dtype == torch.float32 and x.abs().max() <= 1.0
        assert np.array_equal(as_int(x), full[:, starts[i]:starts[i] + 2000])
    again = pickle.loads(pickle.dumps(WindowDataset(tmp_path / "c", "train", p)))
    assert torch.equal(again[7], ds[7])  # same index, fresh process-like copy: same window
    assert len(set(starts)) > 45 and min(starts) < 1500 and max(starts) > 11500  # spread over [0, 13000]
    assert any(len(set(as_int(ds[i])[1])) == 2 for i in range(50))  # some windows span a piece boundary
    other_seed = WindowDataset(tmp_path / "c", "train", WindowParams(window_samples=2000, windows_per_epoch=50))
    assert [other_seed.start_of(i) for i in range(50)] != starts


def test_windows_inside_pieces_skip_short_pieces(tmp_path):
    write_cache(tmp_path / "c", [5000, 1000, 2500])
    ds = WindowDataset(tmp_path / "c", "train", WindowParams(window_samples=2000, windows_per_epoch=200,
                                                             cross_pieces=False))
    seen = set()
    for i in range(200):
        right = set(as_int(ds[i])[1])
        assert len(right) == 1  # never spans a boundary
        seen |= right
    assert seen == {20000, 20002}  # the 1000-sample piece is shorter than a window: never drawn
    with pytest.raises(DataError, match="no piece of split 'train' is as long as"):
        WindowDataset(tmp_path / "c", "train", WindowParams(window_samples=6000, cross_pieces=False))


def test_split_shorter_than_a_window_is_zero_padded(tmp_path):
    write_cache(tmp_path / "c", [300])
    x = WindowDataset(tmp_path / "c", "train", WindowParams(window_samples=1000, windows_per_epoch=2))[1]
    assert np.array_equal(as_int(x)[:, :300], ramp(0, 300)) and not x[:, 300:].any()


def test_missing_cache_empty_split_and_bad_params_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: the prepared audio cache is missing.*python -m framework prepare"):
        WindowDataset(tmp_path / "nowhere", "train", WindowParams())
    write_cache(tmp_path / "c", [300], config={"a": 1})
    with pytest.raises(DataError, match="was built from other params"):
        WindowDataset(tmp_path / "c", "train", WindowParams(), config={"a": 2})
    with pytest.raises(DataError, match="split 'validation' is empty"):
        WindowDataset(tmp_path / "c", "validation", WindowParams())
    with pytest.raises(DataError, match="cache is at 22016 Hz, dataset.params.sample_rate is 22050"):
        WindowDataset(tmp_path / "c", "train", WindowParams(sample_rate=22050))
    ds = WindowDataset(tmp_path / "c", "train", WindowParams(windows_per_epoch=3))
    with pytest.raises(IndexError):
        ds[3]


def test_dataloader_workers_see_the_same_windows(tmp_path):
    write_cache(tmp_path / "c", [20000])
    ds = WindowDataset(tmp_path / "c", "train", WindowParams(window_samples=1024, windows_per_epoch=8))
    assert len(pickle.dumps(ds)) < 4096  # the memory map is not pickled: workers open their own
    serial = torch.cat(list(torch.utils.data.DataLoader(ds, batch_size=4)))
    parallel = torch.cat(list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)))
    assert serial.shape == (8, 2, 1024) and torch.equal(serial, parallel)


@pytest.mark.parametrize("rate", [44100, 48000, 16000])
def test_resample_keeps_a_sine_and_the_duration(rate):
    t = np.arange(rate) / rate  # 1 s
    x = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t)] * 2).astype(np.float32)
    y = resample(x, rate, RATE)
    assert y.shape == (2, RATE) and y.dtype == np.float32
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE)
    assert np.abs(y[:, 500:-500] - ref[500:-500]).max() < 2e-3  # away from the filter's edge transients


def test_split_of_is_stable_and_follows_the_fractions():
    keys = [f"dir/file{i}.wav" for i in range(4000)]
    splits = [split_of(k, 0.1, 0.2) for k in keys]
    assert splits == [split_of(k, 0.1, 0.2) for k in keys]
    frac = {s: splits.count(s) / len(keys) for s in ("train", "validation", "test")}
    assert abs(frac["validation"] - 0.1) < 0.02 and abs(frac["test"] - 0.2) < 0.02


def test_imap_ordered_keeps_order_and_admit_stops_early():
    done = []

    def admit(job, in_flight):
        return sum(done) + sum(in_flight) < 10

    out = []
    for r in imap_ordered(abs, [-4, -3, -5, -6, -7], 1, admit):
        done.append(r)
        out.append(r)
    assert out == [4, 3, 5]  # after 12 >= 10 nothing more is started
