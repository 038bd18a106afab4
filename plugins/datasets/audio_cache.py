"""The prepared audio cache shared by the audio datasets (``piano``, ``maestro``, ``audio_folder``), the
conversion of audio files into it, and the random-window dataset that reads it.

Layout of a cache folder::

    manifest.json          format version, sample rate, the config it was built from, per split: samples,
                           pieces, bytes; skipped files (with the reason) and their count; source/renderer
    <split>.npy            int16 (C=2, T): every piece of the split concatenated, channel-planar, so one
                           window is two contiguous reads from the page cache (no de-interleaving)
    <split>.pieces.json    [{"name", "start", "samples"}, ...]: the piece boundaries, in order

Atomicity: a cache is built in a sibling ``<folder>.partial`` and renamed into place only when complete
(manifest written last), so an interrupted preparation never leaves a cache that looks complete; a stale
``.partial`` is discarded by the next preparation. ``is_complete`` also checks the manifest's config
(the params that determine the content) and every file size, so a spec that changes e.g. the sample rate
prepares again instead of silently reading stale data. A cache converted from a folder of files also records
each source file's name, split, size and mtime (``source_files``): when the folder changes (files added,
removed or rewritten) the cache is out of date, and ``run`` converts it again. Where the source folder does
not exist (a cache copied to another machine without its source) the cache is used as it is.

Windows: item ``i`` of a split is the window whose first sample is drawn from
``numpy.random.default_rng((seed, split, i))``: deterministic per index (a resumed run sees the same batches),
uniform over the split. With ``cross_pieces: true`` (default) a window may span the boundary between two
concatenated pieces, so every piece is used, short ones included (the music21 corpus has many pieces
shorter than 95 s); the price is at most a hard cut between two pieces in some windows. With
``cross_pieces: false`` windows lie inside one piece, and pieces shorter than a window are never drawn
(MP3net's rule, spec §4.4; it also used non-overlapping windows, we draw random offsets). A split shorter
than one window is zero-padded at the end. This module does not decode MIDI or render anything
(see ``piano.py``) and does not know any source's layout (see ``maestro.py``, ``audio_folder.py``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from framework.errors import DataError
from framework.protocols import DataInfo, Dataset
from plugins.common.audio_io import EXTENSIONS, audio_info, read_audio, resample

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
FORMAT = "framework-audio-cache"
VERSION = 1
SCALE = 32767.0  # int16 full scale; -32768 is never written, so decoded samples lie in [-1, 1] exactly


# ------------------------------------------------------------------------------------------------ params

@dataclasses.dataclass(frozen=True)
class WindowParams:
    """The Params fields every cached audio dataset shares (each dataset's ``Params`` subclasses this)."""

    sample_rate: int = 22016  # Hz; MP3net's rate: 128 bins x 172 blocks/s (spec §0)
    # 16383 x 128 (95.25 s): the MDCT of T samples has T // 128 + 1 = 16384 blocks, MP3net's clip (spec §0)
    window_samples: int = 2_097_024
    windows_per_epoch: int = 10_000  # __len__: random windows per virtual epoch
    seed: int = 0  # window offsets: item i of a split is drawn from default_rng((seed, split, i))
    cross_pieces: bool = True  # windows may span piece boundaries (false: inside one piece, MP3net's rule)
    workers: int = 0  # processes that decode/render during prepare; 0: every core


# --------------------------------------------------------------------------------------- manifest / check

def _normalise(config: dict) -> dict:
    return json.loads(json.dumps(config, sort_keys=True))


def read_manifest(root: str | Path) -> dict:
    return json.loads((Path(root) / MANIFEST).read_text())


def is_complete(root: str | Path, config: dict | None = None) -> bool:
    """Whether ``root`` holds a finished cache (built from ``config``, when given)."""
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except (OSError, ValueError):
        return False
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        return False
    if config is not None and manifest.get("config") != _normalise(config):
        return False
    for split, s in manifest.get("splits", {}).items():
        f = root / f"{split}.npy"
        if s["samples"] and (not f.is_file() or f.stat().st_size != s["bytes"]):
            return False
    return True


def fingerprint(files: Sequence["SourceFile"]) -> list[list]:
    """``[name, split, size, mtime_ns]`` per source file (size -1: missing): what a converted cache depends on."""
    rows = []
    for f in files:
        try:
            st = os.stat(f.path)
            rows.append([f.name, f.split, st.st_size, st.st_mtime_ns])
        except OSError:
            rows.append([f.name, f.split, -1, 0])
    return rows


def describe_changes(old: list[list], new: list[list]) -> str:
    """``"2 file(s) added, 1 file(s) changed"`` between two fingerprints; empty when they are equal."""
    a, b = {r[0]: r[1:] for r in old}, {r[0]: r[1:] for r in new}
    counts = {"added": len(b.keys() - a.keys()), "removed": len(a.keys() - b.keys()),
              "changed": sum(a[k] != b[k] for k in a.keys() & b.keys())}
    return ", ".join(f"{n} file(s) {what}" for what, n in counts.items() if n)


# ------------------------------------------------------------------------------------------------ writing

class CacheWriter:
    """Builds a cache in ``<root>.partial`` and moves it into place on :meth:`commit`.

    Use as a context manager: leaving the block with an exception removes the partial folder.
    """

    def __init__(self, root: str | Path, sample_rate: int, config: dict):
        self.root, self.sample_rate, self.config = Path(root), sample_rate, config
        self.tmp = self.root.with_name(self.root.name + ".partial")
        if self.tmp.exists():  # left by an interrupted preparation
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self._channels: dict[str, list] = {}  # split -> two open per-channel files
        self.pieces: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self.samples = {s: 0 for s in SPLITS}
        self.skipped: list[str] = []

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._close_files()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add(self, split: str, name: str, pcm: np.ndarray) -> None:
        """Append one piece: int16 ``(2, T)`` (see :func:`to_int16`)."""
        if split not in SPLITS:
            raise DataError(f"{name}: unknown split {split!r}; splits: {', '.join(SPLITS)}")
        if split not in self._channels:
            self._channels[split] = [open(self.tmp / f".{split}.{c}.raw", "wb") for c in (0, 1)]
        for c, f in enumerate(self._channels[split]):
            f.write(np.ascontiguousarray(pcm[c]).tobytes())
        self.pieces[split].append({"name": name, "start": self.samples[split], "samples": int(pcm.shape[1])})
        self.samples[split] += int(pcm.shape[1])

    def skip(self, name: str, why: str) -> None:
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")  # a bad byte as \xe9
        self.skipped.append(f"{name}: {why}")

    def _close_files(self) -> None:
        for files in self._channels.values():
            for f in files:
                f.close()

    def _assemble(self, split: str, samples: int) -> int:
        """Concatenate the two channel files into ``<split>.npy`` (2, samples) int16; returns its size."""
        out = self.tmp / f"{split}.npy"
        with open(out, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(np.int16).str, "fortran_order": False,
                                                     "shape": (2, samples)})
            for c in (0, 1):
                part = self.tmp / f".{split}.{c}.raw"
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, f, 16 << 20)
                part.unlink()
            f.flush()
            os.fsync(f.fileno())
        return out.stat().st_size

    def commit(self, info: dict | None = None) -> dict:
        """Finish every split, write the manifest, move the cache into place; returns the manifest."""
        self._close_files()
        splits = {}
        for split in SPLITS:
            samples = self.samples[split]
            size = self._assemble(split, samples) if split in self._channels else 0
            (self.tmp / f"{split}.pieces.json").write_text(json.dumps(self.pieces[split]))
            splits[split] = {"samples": samples, "pieces": len(self.pieces[split]), "bytes": size,
                             "hours": round(samples / self.sample_rate / 3600, 4)}
        manifest = {"format": FORMAT, "version": VERSION, "sample_rate": self.sample_rate, "channels": 2,
                    "dtype": "int16", "layout": "(C, T) per split, pieces concatenated; value / 32767",
                    "config": _normalise(self.config), "splits": splits, "skipped_count": len(self.skipped),
                    "skipped": self.skipped, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {})}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = self.root.with_name(self.root.name + ".old")
        if self.root.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.root, old)
        os.replace(self.tmp, self.root)
        shutil.rmtree(old, ignore_errors=True)
        if self.skipped:
            warnings.warn(f"{self.root}: {len(self.skipped)} file(s) skipped while preparing: "
                          + "; ".join(self.skipped[:20]) + (" ..." if len(self.skipped) > 20 else "")
                          + f" (all listed in {self.root / MANIFEST})", stacklevel=3)
        return manifest


def to_int16(x: np.ndarray) -> np.ndarray:
    """``(C, T)`` float in [-1, 1] -> ``(C, T)`` int16, rounded and clipped to +-32767."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * SCALE), -SCALE, SCALE).astype(np.int16)


# --------------------------------------------------------------------------------------------- converting

@dataclasses.dataclass(frozen=True)
class SourceFile:
    split: str
    name: str  # the piece's name in the cache index (a relative path)
    path: str


def _decode(job: tuple[SourceFile, int, bool, float]) -> tuple[SourceFile, np.ndarray | str]:
    """Worker: one file -> int16 ``(2, T)`` at the target rate, or the reason it is skipped."""
    src, sample_rate, mono_to_stereo, min_seconds = job
    if not Path(src.path).is_file():
        return src, "no such file"
    try:
        src.name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as surrogates: the index stores names as text
        return src, "file name is not valid UTF-8 (rename the file)"
    try:
        file_rate = audio_info(src.path)[0]
        x = read_audio(src.path, file_rate, mono_to_stereo=mono_to_stereo).numpy()  # (2, T) at the file's rate
    except DataError as exc:
        return src, str(exc).split(": ", 1)[-1]
    except Exception as exc:  # a decoder crash on one file must not stop a long preparation
        return src, f"cannot decode ({type(exc).__name__}: {exc})"
    x = resample(x, file_rate, sample_rate)
    if x.shape[1] < min_seconds * sample_rate:
        return src, f"too short ({x.shape[1] / sample_rate:.2f} s < min_seconds {min_seconds})"
    return src, to_int16(x)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; torch's own threads would oversubscribe


def imap_ordered(fn: Callable, jobs: Sequence, workers: int,
                 admit: Callable[[Any, list], bool] | None = None) -> Iterator:
    """``fn(job)`` for each job, results in order, computed in ``workers`` processes (0: every core; 1: here).

    At most two jobs per worker are in flight, so results never pile up behind a slow job. ``admit(job,
    in_flight_jobs)`` may hold back the next job (checked again whenever a result has been consumed); the
    iteration ends when it refuses with nothing in flight. Closing the iterator early cancels what has not
    started and waits for what has.
    """
    admit = admit or (lambda job, in_flight: True)
    todo = collections.deque(jobs)
    workers = min(workers or os.cpu_count() or 1, len(todo))
    if workers <= 1:
        while todo and admit(todo[0], []):
            yield fn(todo.popleft())
        return
    # spawn, not fork: forking a process whose torch/OpenMP threads are running can deadlock the child
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)
    pending: collections.deque = collections.deque()  # (job, future), in job order
    try:
        while True:
            while todo and len(pending) < 2 * workers and admit(todo[0], [j for j, _ in pending]):
                job = todo.popleft()
                pending.append((job, pool.submit(fn, job)))
            if not pending:
                return
            yield pending.popleft()[1].result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def convert_files(root: str | Path, files: Sequence[SourceFile], *, sample_rate: int, config: dict,
                  info: dict | None = None, mono_to_stereo: bool = True, min_seconds: float = 1.0,
                  workers: int = 0, progress: bool = True) -> dict:
    """Decode, resample and store ``files`` as a cache at ``root``; returns the manifest.

    Unreadable, empty, too short (and, with ``mono_to_stereo: false``, mono) files and files whose name is not
    valid UTF-8 are skipped and listed in the manifest and in one warning; they never stop the preparation.
    """
    from tqdm.auto import tqdm

    jobs = [(f, sample_rate, mono_to_stereo, min_seconds) for f in files]
    with CacheWriter(root, sample_rate, config) as writer:
        bar = tqdm(total=len(jobs), desc=f"cache {Path(root).name}", unit="file", disable=not progress)
        for src, result in imap_ordered(_decode, jobs, workers):
            if isinstance(result, str):
                writer.skip(src.name, result)
            else:
                writer.add(src.split, src.name, result)
            bar.update(1)
        bar.close()
        return writer.commit(info)


def split_of(key: str, validation: float, test: float) -> str:
    """Deterministic split of ``key`` (e.g. a relative path) from a stable hash, independent of the other keys."""
    import hashlib

    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()  # a name's bytes, valid UTF-8 or not
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "test" if u < test else "validation" if u < test + validation else "train"


# ------------------------------------------------------------------------------------------------ reading

class WindowDataset(Dataset):
    """Random stereo windows ``(2, window_samples)`` float32 in [-1, 1] from one split of a prepared cache.

    Picklable: the memory map is opened lazily in the process that reads (each DataLoader worker maps
    the file itself; the OS page cache is shared).
    """

    @classmethod
    def describe(cls, params: WindowParams) -> DataInfo:  # stereo windows of window_samples, without the cache
        return DataInfo(kind="audio", shape=(2, params.window_samples), sample_rate=params.sample_rate)

    def __init__(self, root: str | Path, split: str, params: WindowParams, *, config: dict | None = None,
                 tags: dict | None = None, prepare_hint: str = "python -m framework prepare SPEC"):
        root = Path(root)
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
        if not is_complete(root, config):
            what = "is missing or incomplete" if not is_complete(root) else "was built from other params"
            raise DataError(f"{root}: the prepared audio cache {what}; run `{prepare_hint}` "
                            f"(`python -m framework run` prepares it too)")
        manifest = read_manifest(root)
        if manifest["sample_rate"] != params.sample_rate:
            raise DataError(f"{root}: cache is at {manifest['sample_rate']} Hz, dataset.params.sample_rate is "
                            f"{params.sample_rate}; prepare again")
        self.total = manifest["splits"][split]["samples"]
        if self.total == 0:
            skipped = manifest.get("skipped_count", 0)
            raise DataError(f"{root}: split '{split}' is empty (no piece was assigned to it"
                            + (f"; {skipped} file(s) were skipped, the reasons are in {root / MANIFEST}" if skipped
                               else "") + "); prepare more data or change the split fractions")
        if params.window_samples < 1 or params.windows_per_epoch < 1:
            raise DataError("dataset.params.window_samples and windows_per_epoch must be >= 1")
        self.path, self.split, self.params = root / f"{split}.npy", split, params
        self.pieces = json.loads((root / f"{split}.pieces.json").read_text())
        self._starts = self._valid_starts(params)
        self._pcm: np.ndarray | None = None
        self.info = DataInfo(kind="audio", shape=(2, params.window_samples), sample_rate=params.sample_rate,
                             tags={"data.cache": str(root), **(tags or {})})

    def _valid_starts(self, params: WindowParams) -> tuple[np.ndarray, np.ndarray] | None:
        """Piece-local start ranges (first sample, cumulative count) when windows stay inside pieces."""
        if params.cross_pieces:
            return None
        long = [p for p in self.pieces if p["samples"] >= params.window_samples]
        if not long:
            raise DataError(f"{self.path}: no piece of split '{self.split}' is as long as window_samples="
                            f"{params.window_samples}; set cross_pieces: true or shorten the window")
        first = np.array([p["start"] for p in long], dtype=np.int64)
        counts = np.array([p["samples"] - params.window_samples + 1 for p in long], dtype=np.int64)
        return first, np.cumsum(counts)

    def __len__(self) -> int:
        return self.params.windows_per_epoch

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pcm": None}  # a memmap is not sent to workers; each opens its own

    def start_of(self, index: int) -> int:
        """First sample (in the concatenated split) of window ``index``."""
        rng = np.random.default_rng((self.params.seed, SPLITS.index(self.split), int(index)))
        w = self.params.window_samples
        if self._starts is None:
            return int(rng.integers(0, max(self.total - w, 0) + 1))
        first, cum = self._starts
        u = int(rng.integers(0, cum[-1]))
        k = int(np.searchsorted(cum, u, side="right"))
        return int(first[k] + u - (cum[k - 1] if k else 0))

    def __getitem__(self, index: int) -> torch.Tensor:  # -> (2, T) float32 in [-1, 1]
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range (windows_per_epoch={len(self)})")
        if self._pcm is None:
            self._pcm = np.load(self.path, mmap_mode="r")  # (2, total) int16
        w, start = self.params.window_samples, self.start_of(index)
        seg = self._pcm[:, start:start + w]  # shorter than w only when the split is shorter than a window
        out = np.empty((2, w), dtype=np.float32) if seg.shape[1] == w else np.zeros((2, w), dtype=np.float32)
        np.multiply(seg, np.float32(1.0 / SCALE), out=out[:, :seg.shape[1]])  # int16 -> float32 in one pass
        return torch.from_numpy(out)


def cache_tags(manifest: dict, **extra: Any) -> dict[str, str]:
    """MLflow tags describing a cache: its size and where the audio came from."""
    tags = {"data.hours": f"{sum(s['hours'] for s in manifest['splits'].values()):.3f}",
            "data.skipped": str(manifest.get("skipped_count", 0))}
    for key in ("source", "renderer"):
        if key in manifest:
            tags[f"data.{key}"] = str(manifest[key])
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


# ------------------------------------------------------------------------------- datasets read from files

@dataclasses.dataclass(frozen=True)
class FileSourceParams(WindowParams):
    """Params of a dataset converted from a folder of audio files (``maestro``, ``audio_folder``)."""

    source: str = "data/audio"  # the folder to read (only ``prepare`` reads it)
    cache: str = ""  # where the prepared cache goes; empty: data/cache/<dataset>_<source name>_<path hash>
    mono_to_stereo: bool = True  # duplicate mono files to both channels (false: skip them)
    min_seconds: float = 1.0  # shorter files are skipped


class FileSourceDataset(WindowDataset):
    """A :class:`WindowDataset` whose cache is converted from the files that :meth:`list_files` names.

    Subclasses set ``cache_name`` and implement ``list_files(params) -> [SourceFile, ...]``.
    """

    cache_name = "audio"

    def __init__(self, params: FileSourceParams, *, split: str):
        root = self.cache_dir(params)
        change = self.source_change(params)
        if change:
            raise DataError(f"{root}: the prepared audio cache is out of date ({change} in {params.source} since it "
                            f"was prepared); run `python -m framework prepare SPEC` (`python -m framework run` "
                            f"converts it again by itself)")
        manifest = read_manifest(root) if is_complete(root) else {}
        super().__init__(root, split, params, config=self.cache_config(params), tags=cache_tags(manifest) if
                         manifest else {}, prepare_hint=f"python -m framework prepare SPEC  # converts {params.source}")

    @classmethod
    def list_files(cls, params: FileSourceParams) -> list[SourceFile]:
        raise NotImplementedError

    @classmethod
    def cache_dir(cls, params: FileSourceParams) -> Path:
        if params.cache:
            return Path(params.cache)
        import hashlib

        source = Path(params.source).resolve()
        digest = hashlib.sha256(str(source).encode("utf-8")).hexdigest()[:8]
        return Path("data") / "cache" / f"{cls.cache_name}_{source.name}_{digest}"

    @classmethod
    def cache_config(cls, params: FileSourceParams) -> dict:
        """The params that determine the cache's content (a change means: prepare again)."""
        return {"dataset": cls.cache_name, "source": str(Path(params.source).resolve()),
                "sample_rate": params.sample_rate, "mono_to_stereo": params.mono_to_stereo,
                "min_seconds": params.min_seconds}

    @classmethod
    def source_change(cls, params: FileSourceParams) -> str:
        """How the source files differ from those the cache was converted from, in words; empty when they do
        not, when there is no complete cache, or when the source folder is absent (nothing to compare)."""
        root = cls.cache_dir(params)
        if not is_complete(root) or not Path(params.source).is_dir():
            return ""
        recorded = read_manifest(root).get("source_files")
        if recorded is None:
            return "no file list recorded: the cache was made by an older version"
        return describe_changes(recorded, fingerprint(cls.list_files(params)))

    @classmethod
    def is_prepared(cls, params: FileSourceParams) -> bool:
        return is_complete(cls.cache_dir(params), cls.cache_config(params)) and not cls.source_change(params)

    @classmethod
    def prepare(cls, params: FileSourceParams) -> str:
        source = Path(params.source)
        if not source.is_dir():
            raise DataError(f"dataset.params.source: {source} is not a folder; point it at the folder that holds "
                            f"the audio")
        files = cls.list_files(params)
        if not files:
            raise DataError(f"{source}: no audio files found; {cls.cache_name} reads "
                            f"{', '.join(EXTENSIONS)} files")
        root, change = cls.cache_dir(params), cls.source_change(params)
        m = convert_files(root, files, sample_rate=params.sample_rate, config=cls.cache_config(params),
                          info={"source": str(source.resolve()), "source_files": fingerprint(files)},
                          mono_to_stereo=params.mono_to_stereo, min_seconds=params.min_seconds,
                          workers=params.workers)
        hours = ", ".join(f"{s} {v['hours']:.3g} h" for s, v in m["splits"].items())
        return (f"{cls.cache_name}: {len(files) - m['skipped_count']} of {len(files)} files cached in {root} "
                f"({hours}); {m['skipped_count']} skipped" + (f" (converted again: {change} since the last "
                                                               f"preparation)" if change else ""))
