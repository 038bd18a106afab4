"""Windows per second drawn from a prepared audio cache through a torch DataLoader (the training input path).

Usage (from the repository root)::

    python benchmarks/bench_audio_windows.py                      # a synthetic 1 h cache in a temp folder
    python benchmarks/bench_audio_windows.py --cache data/piano/cache --split train
    python benchmarks/bench_audio_windows.py --workers 0 2 --batch-size 8 --batches 40

Each item is a full MP3net window: (2, 2,097,024) float32 (95.25 s at 22016 Hz, 16.8 MB). Reported: the rate
of ``dataset[i]`` alone, then windows/s and MB/s of float32 through a DataLoader (batch 8, random indices) for
each ``--workers`` value, after ``--warmup`` batches (worker start-up and first page-cache reads excluded, as
they happen once per run). The cache is read through the page cache; a cold disk is slower.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.datasets.audio_cache import CacheWriter, WindowDataset, WindowParams  # noqa: E402


def synthetic_cache(root: Path, hours: float, sample_rate: int) -> Path:
    """A cache of ``hours`` of int16 noise in 10-minute pieces, all in the train split."""
    rng = np.random.default_rng(0)
    piece = 600 * sample_rate
    with CacheWriter(root, sample_rate, {"dataset": "benchmark"}) as w:
        for i in range(max(1, round(hours * 3600 * sample_rate / piece))):
            w.add("train", f"noise{i}", rng.integers(-8000, 8000, size=(2, piece), dtype=np.int16))
        w.commit()
    return root


def measure(ds: WindowDataset, workers: int, batch_size: int, batches: int, warmup: int) -> tuple[float, float]:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0),
                                         persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        x = next(it)  # (B, 2, T)
        n += x.shape[0]
    dt = time.perf_counter() - t
    return n / dt, n * x[0].numel() * 4 / dt / 1e6


def measure_getitem(ds: WindowDataset, n: int) -> float:
    """Items per second of ``ds[i]`` alone, in this process (no DataLoader)."""
    for i in range(2):
        ds[i]
    t = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", help="a prepared cache folder (default: a synthetic one in a temp folder)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--hours", type=float, default=1.0, help="size of the synthetic cache")
    ap.add_argument("--window", type=int, default=2_097_024, help="samples per window (MP3net: 2,097,024)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to try")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else synthetic_cache(Path(tmp) / "cache", args.hours, 22016)
        ds = WindowDataset(cache, args.split, WindowParams(window_samples=args.window, windows_per_epoch=100_000))
        print(f"cache {cache} split {args.split}: {ds.total / 22016 / 3600:.2f} h; window {args.window} samples; "
              f"torch {torch.__version__}; {torch.get_num_threads()} torch thread(s)")
        print(f"dataset[i] alone, one process: {measure_getitem(ds, 4 * args.batch_size):.1f} windows/s")
        for workers in args.workers:
            wps, mbps = measure(ds, workers, args.batch_size, args.batches, args.warmup)
            print(f"num_workers={workers} batch_size={args.batch_size}: {wps:.1f} windows/s ({mbps:.0f} MB/s float32)")


if __name__ == "__main__":
    main()
