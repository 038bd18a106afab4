"""``audio_folder`` and ``maestro``: user audio converted once into the prepared cache, then random windows.

``audio_folder``: every wav/flac/ogg/mp3 under ``source`` (recursively), split by a stable hash of the relative
path (``validation`` / ``test`` fractions). ``maestro``: the MAESTRO layout (v3 ``maestro-v3.0.0.csv``, the
columnar JSON ``maestro-v3.0.0.json``, or v2's list-form JSON) with its own ``split`` column; its 44.1/48 kHz
16-bit stereo WAVs are resampled to the target rate. Mono files are duplicated to stereo unless
``mono_to_stereo: false``; 8/16/24-bit and float files work; unreadable, empty or too-short files are skipped
with one warning listing them (also in the cache manifest). The cache lives in ``<cache>`` (default
``<source>/.framework_cache_<rate>``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from framework import hookimpl
from framework.errors import DataError
from plugins.common.audio_io import EXTENSIONS
from plugins.datasets.audio_cache import WindowDataset, convert_files, is_complete, split_of


def _cache_dir(params) -> Path:
    return Path(params.cache) if params.cache else Path(params.source) / f".framework_cache_{params.sample_rate}"


class _CachedSource(WindowDataset):
    """Shared constructor/prepare of the datasets whose cache is built from files under ``source``."""

    def __init__(self, params, *, split: str):
        if not Path(params.source).is_dir():
            raise DataError(f"dataset.params.source: {params.source} is not a folder")
        super().__init__(_cache_dir(params), split, params.window_samples, params.windows_per_epoch, params.seed,
                         params.sample_rate, tags={"data.source": str(params.source)})
        self.params = params

    @classmethod
    def is_prepared(cls, params) -> bool:
        return is_complete(_cache_dir(params))

    @classmethod
    def prepare(cls, params) -> str:
        from tqdm.auto import tqdm

        src = Path(params.source)
        if not src.is_dir():
            raise DataError(f"dataset.params.source: {src} is not a folder")
        files = cls.files(params)
        if not files:
            raise DataError(f"{src}: no audio files found ({', '.join(EXTENSIONS)})")
        m = convert_files(_cache_dir(params), params.sample_rate, files, {"source": str(src)},
                          min_seconds=params.min_seconds, mono_to_stereo=params.mono_to_stereo, progress=tqdm)
        hours = {s: round(v["hours"], 3) for s, v in m["splits"].items()}
        return f"{cls.__name__}: {len(files) - len(m['skipped'])} files cached in {_cache_dir(params)} " \
               f"(hours per split {hours}; {len(m['skipped'])} skipped)"


@dataclasses.dataclass(frozen=True)
class _Common:
    source: str = "data/audio"  # the folder to read
    cache: str = ""  # where the prepared cache goes (default: <source>/.framework_cache_<rate>)
    sample_rate: int = 22016
    window_samples: int = 2_097_024  # 16383 x 128 -> MP3net's 16384 MDCT blocks
    windows_per_epoch: int = 10_000
    seed: int = 0
    mono_to_stereo: bool = True  # duplicate mono files (else they are skipped)
    min_seconds: float = 1.0  # shorter files are skipped


class AudioFolder(_CachedSource):
    @dataclasses.dataclass(frozen=True)
    class Params(_Common):
        validation: float = 0.05  # fraction of files (by path hash)
        test: float = 0.05

    @classmethod
    def files(cls, params) -> list[tuple[str, str, Path]]:
        src = Path(params.source)
        paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in EXTENSIONS and ".framework_cache" not in str(p))
        return [(split_of(str(p.relative_to(src)), params.validation, params.test), str(p.relative_to(src)), p)
                for p in paths]


class Maestro(_CachedSource):
    @dataclasses.dataclass(frozen=True)
    class Params(_Common):
        source: str = "data/maestro-v3.0.0"

    @classmethod
    def files(cls, params) -> list[tuple[str, str, Path]]:
        src = Path(params.source)
        rows = maestro_rows(src)
        return [(r["split"], r["audio_filename"], src / r["audio_filename"]) for r in rows]


def maestro_rows(src: Path) -> list[dict]:
    """(split, audio_filename) rows from MAESTRO's CSV, columnar JSON (v3) or list JSON (v2)."""
    csvs, jsons = sorted(src.glob("maestro-v*.csv")), sorted(src.glob("maestro-v*.json"))
    if csvs:
        with open(csvs[-1], newline="") as f:
            rows = list(csv.DictReader(f))
    elif jsons:
        data = json.loads(jsons[-1].read_text())
        if isinstance(data, list):  # v2: a list of row objects
            rows = data
        else:  # v3: {column: {row_index: value}}
            keys = list(data["split"])
            rows = [{col: data[col][k] for col in data} for k in keys]
    else:
        raise DataError(f"{src}: no maestro-v*.csv or maestro-v*.json; point dataset.params.source at the "
                        f"unpacked MAESTRO folder")
    for i, r in enumerate(rows):
        if r.get("split") not in ("train", "validation", "test") or not r.get("audio_filename"):
            raise DataError(f"{src}: metadata row {i} lacks a train/validation/test split or audio_filename")
    return rows


@hookimpl
def register_datasets(register):
    register("audio_folder", AudioFolder)
    register("maestro", Maestro)
