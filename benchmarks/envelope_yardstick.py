"""Does ``envelope`` (``plugins/metrics/envelope.py``) hear envelopes, and only envelopes? Held-out real piano clips,
versions of them that keep the pitches but break the envelope, versions that keep both, and a loudness+tilt
baseline, each scored against real reference clips, repeated over draws; ``frechet_transcriber`` beside it.

    python benchmarks/envelope_yardstick.py [--data notes phrases] [--n 256] [--phrases 32] [--repeats 5]
        [--transcriber-root data/transcriber] [--out outputs/envelope_yardstick]

Data:

- ``notes``: the learning ladder's single-piano-note rung (``piano_notes`` with samples 16320, keys 48-84,
  velocities 40-74, one note per clip: 0.74 s, the note struck 10 ms in and released at 0.51 s). Reference: ``--n``
  items of the validation split; the cases are made from as many items of the test split. Draw r takes items
  r n .. (r + 1) n - 1 of both splits.
- ``phrases``: ``--phrases`` clips of 2.97 s (65472 samples, rung 6's and the demo's window) cut 1 s into random
  phrases (notes at 4 per second on average, Poisson, keys 36-96, velocities 40-74 (the soundfont's 75-107 layer is
  muffled, docs of ``piano_notes``), held 0.1-1 s), each note rendered alone by the project's piano renderer and
  summed (so that every note can be changed on its own), at one fixed gain. Reference and cases: independent
  phrases, drawn per repeat.

Cases (the "fake" side; every change is made to each note on its own, before the notes are summed):

1. ``real``: the held-out clips as they are;
2. ``level -6 dB``: half the amplitude (pitch and envelope kept);
3. ``pitch +1 semitone``: the notes rendered again one key up (same velocity, timing and gain);
4. ``sustained (decay x0)``: each note's amplitude envelope flattened after its peak: the note multiplied by
   peak / envelope(t) (envelope: RMS in 20 ms Hann windows, gain at most +40 dB) from its peak to its key-off and by
   the key-off's gain after it: the same partials at a steady level until the key is released (an organ);
5. ``decay x0.5`` / ``decay x2``: the same with the gain (envelope / peak)^(k - 1), so the decay in dB is k times the
   real one (half as fast, twice as fast);
6. ``slow attack 50 ms`` / ``slow attack 200 ms``: each note faded in with a raised-cosine ramp of that length
   from its onset;
7. ``reversed (swell)``: each note's sound from its onset to its end (key-off + 0.3 s) played backwards in the same
   place: the partials swell and stop;
8. ``loudness+tilt``: ``plugins.metrics.ladder.baseline_audio(real, 64, n)``: noise with the data's MDCT RMS per
   (block, bin): the ladder's baseline, which keeps the data's mean envelope and has no notes;
9. ``silence``.

Printed: a markdown table per data set, mean ± std over ``--repeats`` of ``envelope_frechet``, its separation from the
``real`` row in standard deviations ((case - real) / sqrt(std_case^2 + std_real^2)), the generated side's median
attack, decays and onset strength and notes per second, and ``frechet_transcriber`` (with its own separation)
when a valid cache of it is in ``--transcriber-root`` (never built here: ``python -m framework build-transcriber``
builds it, ~13 min on 2 cores); written: ``envelope_yardstick.json`` in ``--out``. docs/metrics.md, "Envelopes",
quotes its output.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from framework.protocols import DataInfo
from plugins.common.piano_render import choose_renderer, render_notes
from plugins.datasets.piano_notes import PianoNotes, _render
from plugins.metrics.envelope import Envelope
from plugins.metrics.ladder import baseline_audio

RATE = 22016
NOTES = dict(samples=16320, keys=(48, 84), velocities=(40, 74), notes=(1, 1))  # the ladder rung's data
PHRASE_SAMPLES, PHRASE_START, PHRASE_SECONDS = 65472, 1.0, 5.0  # clip, where it is cut, length of the phrase drawn
TAIL = 0.3  # seconds after a key-off that a note still sounds (the renderer's release): "reversed" flips up to it
CASES = ("real", "level -6 dB", "pitch +1 semitone", "sustained (decay x0)", "decay x0.5", "decay x2",
         "slow attack 50 ms", "slow attack 200 ms", "reversed (swell)", "loudness+tilt", "silence")
KEEP = ("real", "level -6 dB", "pitch +1 semitone")  # cases that keep pitch and envelope: should stay near real


# ------------------------------------------------------------------------------------------- changes to one note

def rms_envelope(y: np.ndarray, window: int = int(0.02 * RATE)) -> np.ndarray:
    """(C, T) -> (T,): RMS over channels in a Hann window of ``window`` samples centred on each sample."""
    w = np.hanning(window)
    return np.sqrt(np.maximum(np.convolve((y.astype(np.float64) ** 2).sum(0), w / w.sum(), mode="same"), 0))


def change(y: np.ndarray, case: str, onset: int, offset: int) -> np.ndarray:
    """One note's audio ``(C, T)``, struck at sample ``onset`` and released at ``offset`` -> the case's version."""
    if case.startswith("decay x") or case.startswith("sustained"):
        k = 0.0 if case.startswith("sustained") else float(case.split("x")[1])
        env = rms_envelope(y)
        peak = onset + int(np.argmax(env[onset:]))
        gain = np.ones(y.shape[1])
        ratio = np.maximum(env[peak:], 1e-12) / max(env[peak], 1e-12)  # <= 1 after the peak
        gain[peak:] = np.clip(ratio ** (k - 1.0), 0.0, 100.0)  # at most +40 dB
        if k < 1 and offset > peak:  # held until the key-off, then released from there as the real note is
            gain[offset:] = gain[offset]
        return (y * gain).astype(np.float32)
    if case.startswith("slow attack"):
        n = int(float(case.split()[2]) * 1e-3 * RATE)
        ramp = np.ones(y.shape[1])
        ramp[:onset] = 0.0
        ramp[onset:onset + n] = 0.5 - 0.5 * np.cos(np.pi * np.arange(min(n, y.shape[1] - onset)) / n)
        return (y * ramp).astype(np.float32)
    if case == "reversed (swell)":
        end = min(y.shape[1], offset + int(TAIL * RATE))
        out = y.copy()
        out[:, onset:end] = y[:, onset:end][:, ::-1]
        return out
    if case == "level -6 dB":
        return (y * 0.5).astype(np.float32)
    raise ValueError(case)


# ------------------------------------------------------------------------------------------- the two data sets

class Notes:
    """The rung's data: items of the piano_notes splits, and the cases made from them note by note."""

    def __init__(self):
        self.val = PianoNotes(PianoNotes.Params(size=1 << 20, **NOTES), split="validation")
        self.test = PianoNotes(PianoNotes.Params(size=1 << 20, **NOTES), split="test")
        self.info = self.val.info

    def reference(self, r: int, n: int) -> np.ndarray:
        return np.stack([self.val[i].numpy() for i in range(r * n, (r + 1) * n)])

    def case(self, name: str, r: int, n: int) -> np.ndarray:
        ds, p = self.test, self.test.params
        onset, offset = int(round(p.lead * RATE)), int(round((p.lead + p.hold) * RATE))
        out = []
        for i in range(r * n, (r + 1) * n):
            if name == "pitch +1 semitone":
                keys, vel = ds._draw(i)
                y = _render(ds.renderer, RATE, p.samples, p.lead, p.hold, tuple(k + 1 for k in keys), vel)
                out.append(np.clip(y * ds.gain, -1, 1).astype(np.float32))
            else:
                y = ds[i].numpy()
                out.append(y if name == "real" else change(y, name, onset, offset))
        return np.stack(out)


class Phrases:
    """Random phrases (see the module docstring), every note rendered alone and kept, so each case changes notes."""

    def __init__(self):
        self.renderer = choose_renderer("auto", "")
        self.info = DataInfo(kind="audio", shape=(2, PHRASE_SAMPLES), sample_rate=RATE)
        self.gain = 0.25  # fixed: about -6 dBFS peaks for 4 notes per second at these velocities
        self._notes: dict[tuple, np.ndarray] = {}

    def phrase(self, seed: tuple) -> np.ndarray:
        """(notes, 5) onset, offset, channel, key, velocity; onsets over PHRASE_SECONDS, Poisson at 4 per second."""
        rng = np.random.default_rng(seed)
        onsets = np.cumsum(rng.exponential(0.25, size=64))
        onsets = onsets[onsets < PHRASE_SECONDS]
        n = len(onsets)
        return np.stack([onsets, onsets + rng.uniform(0.1, 1.0, n), np.zeros(n), rng.integers(36, 97, n),
                         rng.integers(40, 75, n)], 1)

    def note(self, key: int, velocity: int, hold: float) -> np.ndarray:
        """One note struck at 0 and released at ``hold`` s, (2, T), rendered once per (key, velocity, hold)."""
        k = (key, velocity, round(hold, 4))
        if k not in self._notes:
            self._notes[k] = render_notes(np.array([[0.0, hold, 0, key, velocity]]), self.renderer, RATE)
        return self._notes[k]

    def clip(self, seed: tuple, name: str) -> np.ndarray:
        start = int(PHRASE_START * RATE)
        out = np.zeros((2, start + PHRASE_SAMPLES + int(3 * RATE)), dtype=np.float32)
        for on, off, _, key, vel in self.phrase(seed):
            key = int(key) + (name == "pitch +1 semitone")
            y = self.note(key, int(vel), off - on)
            if name not in ("real", "pitch +1 semitone"):
                y = change(y, name, 0, int(round((off - on) * RATE)))
            at = int(round(on * RATE))
            m = min(y.shape[1], out.shape[1] - at)
            out[:, at:at + m] += y[:, :m]
        return np.clip(out[:, start:start + PHRASE_SAMPLES] * self.gain, -1, 1)

    def reference(self, r: int, n: int) -> np.ndarray:
        return np.stack([self.clip((7, r, i), "real") for i in range(n)])

    def case(self, name: str, r: int, n: int) -> np.ndarray:
        return np.stack([self.clip((8, r, i), name) for i in range(n)])


# ------------------------------------------------------------------------------------------- scoring

def score(metrics: list, reference: np.ndarray, candidate: np.ndarray, batch: int = 32) -> dict[str, float]:
    for m in metrics:
        m.reset()
    for i in range(0, len(reference), batch):
        real, fake = torch.from_numpy(reference[i:i + batch]), torch.from_numpy(candidate[i:i + batch])
        for m in metrics:
            m.update(real, fake)
    return {k: float(v) for m in metrics for k, v in m.compute().items()}


def transcriber_metric(root: str, info: DataInfo):
    """``frechet_transcriber`` when a valid cache is in ``root``, else None: this script never builds (or rebuilds an
    out-of-date) transcriber, which ``FrechetTranscriber`` would do."""
    from plugins.metrics import transcriber as tr

    if tr.read_sidecar(root, "default") is None:
        return None
    from plugins.metrics.notes import FrechetTranscriber, TranscriberParams

    runtime = type("R", (), {"device": torch.device("cpu")})()
    return FrechetTranscriber(TranscriberParams(root=root, recipe="default"), data_info=info, runtime=runtime)


def measure(data, n: int, repeats: int, transcriber) -> dict[str, list[dict]]:
    envelope = Envelope(Envelope.Params(), data_info=data.info)
    metrics = [envelope] + ([transcriber] if transcriber is not None else [])
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for r in range(repeats):
        reference = data.reference(r, n)
        real = data.case("real", r, n)
        for name in CASES:
            if name == "real":
                x = real
            elif name == "loudness+tilt":
                x = baseline_audio(torch.from_numpy(real), 64, n, torch.Generator().manual_seed(r)).numpy()
            elif name == "silence":
                x = np.zeros_like(real)
            else:
                x = data.case(name, r, n)
            t = min(x.shape[-1], reference.shape[-1])
            results.setdefault(name, []).append(score(metrics, reference[..., :t], x[..., :t]))
        print(f"  repeat {r + 1}/{repeats} ({time.perf_counter() - started:.0f} s)", flush=True)
    return results


def table(results: dict[str, list[dict]], transcriber: bool) -> str:
    def ms(name, key):
        v = np.array([r[key] for r in results[name]])
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    real_m, real_s = ms("real", "envelope_frechet")
    cols = ["envelope_frechet", "vs real (std)", "attack ms", "early decay dB/s", "late decay dB/s", "onset dB",
            "notes/s", "frechet_transcriber"]
    lines = ["| case | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for name, rs in results.items():
        m, s = ms(name, "envelope_frechet")
        z = "-" if name == "real" else f"{(m - real_m) / max(math.hypot(s, real_s), 1e-12):+.1f}"
        cells = [f"{m:.3g} ± {s:.2g}", z]
        for key, fmt in (("envelope_attack_ms_fake", "{:.1f}"), ("envelope_decay_early_db_s_fake", "{:.0f}"),
                         ("envelope_decay_late_db_s_fake", "{:.0f}"), ("envelope_onset_db_fake", "{:.1f}"),
                         ("envelope_notes_per_s_fake", "{:.2f}")):
            cells.append(fmt.format(ms(name, key)[0]))
        if transcriber:  # with its own separation from real, in stds
            tm, ts = ms(name, "frechet_transcriber")
            rm, rs_ = ms("real", "frechet_transcriber")
            tz = "" if name == "real" else f" ({(tm - rm) / max(math.hypot(ts, rs_), 1e-12):+.1f})"
            cells.append(f"{tm:,.0f} ± {ts:,.0f}{tz}")
        else:
            cells.append("not measured")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    floors = [r["envelope_frechet_real_floor"] for r in results["real"]]  # one reference per draw
    lines.append("")
    lines.append(f"real-vs-real floor (even against odd reference items): {np.mean(floors):.3g} ± "
                 f"{np.std(floors, ddof=1):.2g}; reference medians: attack "
                 f"{np.mean([r['envelope_attack_ms_real'] for r in results['real']]):.1f} ms, early decay "
                 f"{np.mean([r['envelope_decay_early_db_s_real'] for r in results['real']]):.0f} dB/s, late decay "
                 f"{np.mean([r['envelope_decay_late_db_s_real'] for r in results['real']]):.0f} dB/s, onset "
                 f"{np.mean([r['envelope_onset_db_real'] for r in results['real']]):.1f} dB, "
                 f"{np.mean([r['envelope_notes_per_s_real'] for r in results['real']]):.2f} notes/s")
    if transcriber:
        tf = [r["frechet_transcriber_real_floor"] for r in results["real"] if "frechet_transcriber_real_floor" in r]
        lines.append(f"frechet_transcriber real-vs-real floor: {np.mean(tf):,.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", choices=("notes", "phrases"), default=["notes", "phrases"])
    ap.add_argument("--n", type=int, default=256, help="clips per side for notes (the rung's eval_samples)")
    ap.add_argument("--phrases", type=int, default=32, help="clips per side for phrases")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--transcriber-root", default="data/transcriber")
    ap.add_argument("--out", default="outputs/envelope_yardstick")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    out: dict = {"args": vars(args)}
    for which in args.data:
        data = Notes() if which == "notes" else Phrases()
        n = args.n if which == "notes" else args.phrases
        transcriber = transcriber_metric(args.transcriber_root, data.info)
        print(f"{which}: {n} clips x {data.info.shape[-1]} samples per side, {args.repeats} repeats", flush=True)
        results = measure(data, n, args.repeats, transcriber)
        out[which] = results
        print(f"\n### {which}\n\n{table(results, transcriber is not None)}\n", flush=True)
        if transcriber is None:
            print(f"frechet_transcriber: not measured (no valid cache in {args.transcriber_root}; build it with "
                  f"`python -m framework build-transcriber`, ~13 min on 2 cores, then rerun this command)\n")
    print(f"{time.perf_counter() - started:.0f} s")
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "envelope_yardstick.json").write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {path / 'envelope_yardstick.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
