"""The prepared audio cache shared by the audio datasets, and the random-window dataset that reads it.

Layout of a cache folder (one per dataset root)::

    manifest.json            sample rate, source/renderer, per split: samples, pieces, skipped files
    <split>.pcm              int16 stereo PCM at the target rate, interleaved (T, 2), all pieces concatenated
    <split>.pieces.json      [[name, start_sample, length], ...] in order

Preparation converts any source once (decode, resample, stereo, int16) and writes each split to a temporary
file that is renamed when complete; ``manifest.json`` is written last, so an interrupted preparation never
leaves a cache that looks complete (``is_complete`` checks the manifest).

Windows: item ``i`` is the window starting at a uniformly random sample of the concatenated split, drawn
from ``numpy.random.default_rng((seed, i))``: deterministic per index (exact resume), random across indices.
Windows may span the boundary between two pieces (the original MP3net cut songs into non-overlapping windows
and dropped songs shorter than 95 s; random crops over the concatenation use every piece and give more
variety; a boundary is at most one short cut in a 95 s window). A split shorter than one window is
zero-padded at the end. Reads are memory-mapped and opened lazily in each worker process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from framework.errors import DataError
from framework.protocols import DataInfo, Dataset

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"


def is_complete(root: Path) -> bool:
    m = Path(root) / MANIFEST
    if not m.is_file():
        return False
    try:
        manifest = json.loads(m.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all((Path(root) / f"{s}.pcm").is_file() for s in manifest.get("splits", {}))


def read_manifest(root: Path) -> dict:
    return json.loads((Path(root) / MANIFEST).read_text())


def to_int16(x: np.ndarray) -> np.ndarray:
    """(C, T) float in [-1, 1] -> (T, C) int16 (rounded, clipped)."""
    return np.clip(np.round(x.T * 32767.0), -32768, 32767).astype(np.int16)


class CacheWriter:
    """Appends pieces to the split files of a cache; ``close`` renames them and writes the manifest."""

    def __init__(self, root: Path, sample_rate: int, info: dict):
        self.root, self.sample_rate, self.info = Path(root), sample_rate, info
        self.root.mkdir(parents=True, exist_ok=True)
        self.files, self.pieces, self.samples = {}, {s: [] for s in SPLITS}, {s: 0 for s in SPLITS}
        self.skipped: list[str] = []

    def add(self, split: str, name: str, audio: np.ndarray) -> None:
        """Append one piece ``(2, T)`` float32 in [-1, 1]."""
        if split not in self.files:
            self.files[split] = open(self.root / f".{split}.pcm.tmp", "wb")
        pcm = to_int16(audio)
        self.files[split].write(pcm.tobytes())
        self.pieces[split].append([name, self.samples[split], int(pcm.shape[0])])
        self.samples[split] += int(pcm.shape[0])

    def skip(self, name: str, why: str) -> None:
        self.skipped.append(f"{name}: {why}")

    def close(self) -> dict:
        for split, f in self.files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(self.root / f".{split}.pcm.tmp", self.root / f"{split}.pcm")
            (self.root / f"{split}.pieces.json").write_text(json.dumps(self.pieces[split]))
        manifest = {
            "sample_rate": self.sample_rate, "channels": 2, "format": "int16 interleaved (T, 2)",
            "splits": {s: {"samples": self.samples[s], "hours": self.samples[s] / self.sample_rate / 3600,
                           "pieces": len(self.pieces[s])} for s in self.files},
            "skipped": self.skipped, **self.info}
        tmp = self.root / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.root / MANIFEST)
        if self.skipped:
            warnings.warn(f"{len(self.skipped)} file(s) skipped while preparing {self.root}: "
                          + "; ".join(self.skipped[:20]) + (" ..." if len(self.skipped) > 20 else ""))
        return manifest


def convert_files(root: Path, sample_rate: int, files: Iterable[tuple[str, str, Path]], info: dict,
                  min_seconds: float = 1.0, mono_to_stereo: bool = True,
                  progress: Callable | None = None) -> dict:
    """Decode ``(split, name, path)`` files into a cache; unreadable, empty or too short ones are skipped."""
    from plugins.common.audio_io import read_audio

    writer = CacheWriter(root, sample_rate, info)
    items = list(files)
    bar = progress(total=len(items), desc="prepare", unit="file") if progress else None
    for split, name, path in items:
        try:
            x = read_audio(path, sample_rate, mono_to_stereo=mono_to_stereo).numpy()
            if x.shape[1] < min_seconds * sample_rate:
                writer.skip(name, f"shorter than {min_seconds} s")
            else:
                writer.add(split, name, x)
        except DataError as exc:
            writer.skip(name, str(exc).split(": ", 1)[-1])
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return writer.close()


def split_of(key: str, validation: float, test: float) -> str:
    """Deterministic split from a stable hash of ``key`` (e.g. a relative path)."""
    import hashlib

    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    return "test" if u < test else "validation" if u < test + validation else "train"


class WindowDataset(Dataset):
    """Random fixed-length stereo windows ``(2, window_samples)`` from a prepared cache split."""

    def __init__(self, root: str | Path, split: str, window_samples: int, windows_per_epoch: int, seed: int,
                 sample_rate: int, tags: dict | None = None, prepare_hint: str = ""):
        root = Path(root)
        if not is_complete(root):
            raise DataError(f"{root}: no prepared audio cache there; run `python -m framework prepare SPEC`"
                            f"{prepare_hint} (or `run`, which prepares it)")
        manifest = read_manifest(root)
        if manifest["sample_rate"] != sample_rate:
            raise DataError(f"{root}: cache is at {manifest['sample_rate']} Hz but the spec asks for {sample_rate} Hz;"
                            f" delete the folder and prepare again, or change dataset.params.sample_rate")
        if split not in manifest["splits"] or manifest["splits"][split]["samples"] == 0:
            raise DataError(f"{root}: split '{split}' is empty; prepare more data (e.g. a larger hours:) or "
                            f"choose another split")
        self.path, self.split, self.seed = root / f"{split}.pcm", split, seed
        self.total = manifest["splits"][split]["samples"]
        self.window, self.n = window_samples, windows_per_epoch
        self._pcm = None
        self.info = DataInfo(kind="audio", shape=(2, window_samples), sample_rate=sample_rate,
                             tags={**(tags or {}), "data.cache": str(root)})

    def __len__(self) -> int:
        return self.n

    def _memmap(self) -> np.ndarray:
        if self._pcm is None:  # opened lazily: each DataLoader worker maps the file itself
            self._pcm = np.memmap(self.path, dtype=np.int16, mode="r", shape=(self.total, 2))
        return self._pcm

    def __getstate__(self):
        return {**self.__dict__, "_pcm": None}

    def __getitem__(self, index: int) -> torch.Tensor:  # -> (2, window) float32 in [-1, 1]
        pcm = self._memmap()
        if self.total <= self.window:
            out = np.zeros((self.window, 2), dtype=np.int16)
            out[:self.total] = pcm
        else:
            start = int(np.random.default_rng((self.seed, int(index))).integers(0, self.total - self.window + 1))
            out = pcm[start:start + self.window]
        return torch.from_numpy(out.T.astype(np.float32) / 32768.0)


@dataclasses.dataclass(frozen=True)
class WindowParams:
    """Params shared by the cached audio datasets (each adds its own source fields)."""

    root: str = "data/audio"
    sample_rate: int = 22016  # Hz; MP3net: 128 bins x 172 blocks/s
    window_samples: int = 2_097_024  # 16383 x 128: the MDCT gives MP3net's 16384 blocks (95.26 s)
    windows_per_epoch: int = 10_000  # items per virtual epoch of random windows
    seed: int = 0
