"""``maestro``: the MAESTRO piano recordings (Hawthorne et al. 2019), converted once into the prepared cache.

Reads the layout of the unpacked archive: ``maestro-v3.0.0.csv`` (or its columnar JSON
``{column: {row: value}}``, or v2's list-form JSON ``[{column: value}, ...]``) next to the year folders of
16-bit stereo WAVs at 44.1 or 48 kHz. The metadata's ``split`` column (train/validation/test) is kept;
``audio_filename`` is relative to ``source``. Audio is resampled to ``sample_rate`` (scipy's polyphase filter); listed
files that are missing, unreadable, empty or too short are skipped with one warning and listed in the cache
manifest. Nothing is downloaded: get the archive from https://magenta.tensorflow.org/datasets/maestro.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from framework import hookimpl
from framework.errors import DataError
from plugins.datasets.audio_cache import SPLITS, FileSourceDataset, FileSourceParams, SourceFile


def metadata_file(source: Path) -> Path:
    """The newest ``maestro-v*.csv`` (preferred) or ``maestro-v*.json`` in ``source``."""
    for pattern in ("maestro-v*.csv", "maestro-v*.json"):
        found = sorted(source.glob(pattern))
        if found:
            return found[-1]
    raise DataError(f"{source}: no maestro-v*.csv or maestro-v*.json; set dataset.params.source to the unpacked "
                    f"MAESTRO folder (the one holding maestro-v3.0.0.csv and the year folders)")


def read_rows(path: Path) -> list[dict]:
    """MAESTRO metadata rows (dicts with at least ``split`` and ``audio_filename``), in file order."""
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, list):  # v1/v2: a list of row objects
                rows = data
            else:  # v3: columnar, {column: {row index: value}}
                index = list(data["audio_filename"])
                rows = [{col: values.get(i) for col, values in data.items()} for i in index]
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read MAESTRO metadata ({exc!r}); is the file complete?") from exc
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or row.get("split") not in SPLITS or not row.get("audio_filename"):
            raise DataError(f"{path}: row {i} has no valid split (train/validation/test) and audio_filename: "
                            f"{str(row)[:200]}")
    return rows


class Maestro(FileSourceDataset):
    """Random 95 s stereo windows from MAESTRO, split by its metadata."""

    cache_name = "maestro"

    @dataclasses.dataclass(frozen=True)
    class Params(FileSourceParams):
        source: str = "data/maestro-v3.0.0"  # the unpacked archive (holds maestro-v3.0.0.csv)

    @classmethod
    def list_files(cls, params: "Maestro.Params") -> list[SourceFile]:
        source = Path(params.source)
        rows = read_rows(metadata_file(source))
        return [SourceFile(r["split"], r["audio_filename"], str(source / r["audio_filename"])) for r in rows]


@hookimpl
def register_datasets(register):
    register("maestro", Maestro)
