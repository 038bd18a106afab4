"""``audio_folder``: any folder of audio files, converted once into the prepared cache, then random windows.

Every wav/flac/ogg/mp3 under ``source`` (recursively, hidden folders left out) that soundfile can read:
8/16/24-bit integer and float files, any rate (resampled to ``sample_rate`` with scipy's polyphase filter), mono
duplicated to stereo (``mono_to_stereo``). A file's split follows from a hash of its path relative to
``source`` (``validation`` and ``test`` are fractions), so adding files never moves the others between
splits. Unreadable, empty and too-short files, and files whose name is not valid UTF-8, are skipped with one
warning and listed in the cache manifest. The cache format and the window sampling are in ``audio_cache.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from framework import hookimpl
from framework.errors import DataError
from plugins.common.audio_io import EXTENSIONS
from plugins.datasets.audio_cache import FileSourceDataset, FileSourceParams, SourceFile, split_of


class AudioFolder(FileSourceDataset):
    """Random 95 s stereo windows from a folder of audio files."""

    cache_name = "audio_folder"

    @dataclasses.dataclass(frozen=True)
    class Params(FileSourceParams):
        validation: float = 0.05  # fraction of files (by relative-path hash) in the validation split
        test: float = 0.05  # fraction of files in the test split

    @classmethod
    def cache_config(cls, params: "AudioFolder.Params") -> dict:
        return {**super().cache_config(params), "validation": params.validation, "test": params.test}

    @classmethod
    def list_files(cls, params: "AudioFolder.Params") -> list[SourceFile]:
        if not (0 <= params.validation and 0 <= params.test and params.validation + params.test < 1):
            raise DataError(f"dataset.params.validation={params.validation}, test={params.test}: fractions must be "
                            f">= 0 and sum to less than 1")
        source = Path(params.source)
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(source).parts))
        return [SourceFile(split_of(p.relative_to(source).as_posix(), params.validation, params.test),
                           p.relative_to(source).as_posix(), str(p)) for p in paths]


@hookimpl
def register_datasets(register):
    register("audio_folder", AudioFolder)
