"""Standard MIDI file reading shared by the piano plugins: :func:`midi_notes` turns a format 0/1 file into a note
array (onset s, offset s, channel, key, velocity) with its tempo map applied.

Written here rather than taken from a MIDI package, so that every user reads a file the same way: the piano set
(``plugins/datasets/piano.py``, which renders the notes through either renderer of ``piano_render.py``), the
transcriber's labels (``plugins/metrics/transcriber_train.py``) and the benchmarks. A note-on with velocity 0 is a
key-off; a key struck again while it sounds is released first in, first out; SMPTE time division is not supported.
"""

from __future__ import annotations

import numpy as np


def _varlen(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    while True:
        b = data[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            return value, i


def midi_notes(data: bytes) -> np.ndarray:
    """Notes of a standard MIDI file (format 0/1): float64 ``(n, 5)`` rows (onset s, offset s, channel, key,
    velocity), tempo map applied. Written here so both renderers share one reading of the file."""
    if data[:4] != b"MThd":
        raise ValueError("not a standard MIDI file")
    ntracks, division = int.from_bytes(data[10:12], "big"), int.from_bytes(data[12:14], "big")
    if division & 0x8000:
        raise ValueError("SMPTE time division is not supported")
    events, tempos, i = [], [(0, 500000)], 14  # (tick, on, channel, key, velocity); tempo: us per quarter
    for _ in range(ntracks):
        if data[i:i + 4] != b"MTrk":
            raise ValueError("corrupt MIDI track header")
        end, i = i + 8 + int.from_bytes(data[i + 4:i + 8], "big"), i + 8
        tick, status = 0, 0
        while i < end:
            delta, i = _varlen(data, i)
            tick += delta
            if data[i] & 0x80:
                status, i = data[i], i + 1
            if status == 0xFF:  # meta event
                kind, (length, i) = data[i], _varlen(data, i + 1)
                if kind == 0x51:
                    tempos.append((tick, int.from_bytes(data[i:i + 3], "big")))
                i += length
            elif status in (0xF0, 0xF7):  # sysex
                length, i = _varlen(data, i)
                i += length
            else:
                kind, ch = status & 0xF0, status & 0x0F
                n = 1 if kind in (0xC0, 0xD0) else 2
                if kind in (0x80, 0x90):
                    events.append((tick, kind == 0x90 and data[i + 1] > 0, ch, data[i], data[i + 1]))
                i += n
        i = end
    return _pair_notes(events, sorted(tempos), division)


def _pair_notes(events: list, tempos: list, division: int) -> np.ndarray:
    ticks = np.array([t for t, _ in tempos], dtype=np.float64)
    us = np.array([u for _, u in tempos], dtype=np.float64)
    seconds_at = np.concatenate([[0.0], np.cumsum(np.diff(ticks) * us[:-1] / 1e6 / division)])

    def seconds(tick: int) -> float:
        k = int(np.searchsorted(ticks, tick, side="right")) - 1
        return float(seconds_at[k] + (tick - ticks[k]) * us[k] / 1e6 / division)

    sounding: dict[tuple[int, int], list] = {}
    notes = []
    for tick, on, ch, key, vel in sorted(events, key=lambda e: (e[0], e[1])):  # key-offs first at one tick
        if on:
            sounding.setdefault((ch, key), []).append((tick, vel))
        elif sounding.get((ch, key)):
            t0, v0 = sounding[(ch, key)].pop(0)
            notes.append((seconds(t0), seconds(tick), ch, key, v0))
    return np.array(sorted(notes), dtype=np.float64).reshape(-1, 5)
