"""Does the transcriber yardstick (``plugins/metrics/notes.py``) measure what it claims? Held-out real clips,
degraded versions of them, generators and noise, each scored against real reference clips, repeated over draws.

    python benchmarks/transcriber_yardstick.py --checkpoint runs/RUN/checkpoint.pt [--repeats 5] [--clips 16]
        [--samples 65472] [--root data/transcriber] [--out outputs/yardstick] [--space embedding|features]

Reference set: ``--clips`` random windows of ``--samples`` samples (default: the demo's 16 clips of 2.97 s) from
the validation split of the transcriber's own rendered piano set (``--root``; never trained on). Rows, each
compared with a fresh reference draw in every repeat (so the spread counts both sides' sampling):

1. ``real``: as many windows of the test split (other pieces);
2. ``noise 20 dB``, ``noise 10 dB``: the same test windows plus white Gaussian noise at that SNR per clip;
3. ``low-pass 2 kHz``: the same windows with every rFFT bin above 2 kHz zeroed;
4. ``pitch +1``: the test pieces rendered again from their MIDI one semitone up (same renderer, trim and
   level), windows at the same offsets; a case that should stay close to ``real``;
5. ``trained G`` / ``untrained G``: ``--checkpoint``'s generator, and the same spec's generator as initialised
   from its seed (``framework.generate.load_model(weights=False)``), fresh latents per repeat;
6. ``piano-shaped noise``: Gaussian noise with the test windows' mean power spectrum averaged over a third of
   an octave (random phases) at their mean level (:func:`shaped_noise`);
7. ``silence``;
8. ``noise, unsmoothed piano spectrum``: as 6 without the averaging: a drone of the keys the windows play
   (reported beside the order, as ``pitch +1`` is).

Printed: a markdown table of mean ± std (and relative std) over ``--repeats`` of ``frechet_transcriber``,
``frechet_mdct`` (for comparison), the generated side's note statistics and the pitch-class distance, plus
whether the rows come in the expected order (and how many of the pairs of rows do); ``--space features``
scores ``frechet_transcriber`` after the ReLU instead, for comparison; written to ``--out``: ``yardstick.json``
and ``yardstick.png``
(``frechet_transcriber`` per row, log scale, error bars = std). docs/metrics.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from plugins.metrics import transcriber as tr
from plugins.metrics import transcriber_train as trt
from plugins.metrics import notes as notes_mod
from plugins.metrics.notes import FrechetTranscriber, NoteStats, TranscriberParams

ORDER = ["real", "noise 20 dB", "noise 10 dB", "low-pass 2 kHz", "trained G", "untrained G", "piano-shaped noise",
         "silence"]  # the expected order, best to worst (pitch +1 is reported beside it)


def split_audio(root: Path, rows: list[dict], split: str) -> list[np.ndarray]:
    from plugins.common.audio_io import read_audio

    return [read_audio(root / r["audio_filename"], tr.SAMPLE_RATE).numpy() for r in rows if r["split"] == split]


def render_shifted(root: Path, rows: list[dict], renderer: str, semitones: int) -> list[np.ndarray]:
    """The test pieces rendered from their MIDI ``semitones`` up, cut where the originals start (so a window at
    the same offset holds the same notes) and peak-normalised like them."""
    from plugins.common.midi import midi_notes
    from plugins.common.piano_render import render_notes
    from plugins.datasets.piano import PEAK_DBFS

    out = []
    for r in rows:
        if r["split"] != "test":
            continue
        notes = midi_notes((root / r["midi_filename"]).read_bytes())
        notes[:, 3] += semitones
        audio = render_notes(notes, renderer, tr.SAMPLE_RATE)
        start = int(round(r["audio_start_seconds"] * tr.SAMPLE_RATE))
        audio = audio[:, start:start + int(round(r["duration"] * tr.SAMPLE_RATE))]
        out.append(audio * np.float32(10 ** (PEAK_DBFS / 20) / np.abs(audio).max()))
    return out


def midi_rolls(root: Path, rows: list[dict], sounding: trt.Sounding) -> list[np.ndarray]:
    """The test pieces' piano rolls of sounding notes (the transcriber's target) from their MIDI, bool
    ``(frames, 88)``, aligned with the FLACs."""
    from plugins.common.audio_io import audio_info
    from plugins.common.midi import midi_notes

    out = []
    for r in rows:
        if r["split"] == "test":
            notes = midi_notes((root / r["midi_filename"]).read_bytes())
            notes[:, :2] -= r["audio_start_seconds"]
            out.append(trt.piano_roll(notes, tr.frames_of(audio_info(root / r["audio_filename"])[2]), sounding))
    return out


def windows(pieces: list[np.ndarray], n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """``n`` windows ``(n, 2, length)`` at random offsets, pieces drawn proportionally to length, and the
    offsets ``[(piece, start)]`` (to cut the same windows from a re-rendered version)."""
    sizes = np.array([p.shape[1] for p in pieces], dtype=np.float64)
    picks = []
    for j in rng.choice(len(pieces), size=n, p=sizes / sizes.sum()):
        picks.append((int(j), int(rng.integers(0, max(pieces[j].shape[1] - length, 0) + 1))))
    return cut(pieces, picks, length), picks


def cut(pieces: list[np.ndarray], picks: list, length: int) -> np.ndarray:
    out = np.zeros((len(picks), 2, length), dtype=np.float32)
    for i, (j, start) in enumerate(picks):
        seg = pieces[j][:, start:start + length]
        out[i, :, :seg.shape[1]] = seg
    return out


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    power = (x.astype(np.float64) ** 2).mean(axis=(1, 2), keepdims=True)
    noise = rng.standard_normal(x.shape) * np.sqrt(power / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def low_pass(x: np.ndarray, hz: float) -> np.ndarray:
    spec = np.fft.rfft(x, axis=-1)
    spec[..., np.fft.rfftfreq(x.shape[-1], 1 / tr.SAMPLE_RATE) > hz] = 0
    return np.fft.irfft(spec, n=x.shape[-1], axis=-1).astype(np.float32)


def shaped_noise(x: np.ndarray, rng: np.random.Generator, octaves: float | None = 1 / 3) -> np.ndarray:
    """Gaussian noise with the mean power spectrum of ``x`` (all clips, both channels) smoothed over ``octaves``
    (a moving average over f * 2^(+-octaves / 2) for every bin f; None: unsmoothed), at ``x``'s mean level.

    Why smoothed: the tempered scale puts every piano note on one grid of frequencies, so the fine (0.34 Hz)
    mean spectrum of any piano clips peaks at the keys that were played and their harmonics, and noise with it
    is a drone of those keys. A third-octave average keeps the spectral envelope and removes the pitches, as
    speech-shaped noise is made from the long-term average spectrum."""
    power = (np.abs(np.fft.rfft(x, axis=-1)) ** 2).mean(axis=(0, 1))  # (bins,)
    if octaves:
        k = np.arange(len(power), dtype=np.float64)
        lo = np.floor(k * 2 ** (-octaves / 2)).astype(int)
        hi = np.minimum(np.maximum(np.ceil(k * 2 ** (octaves / 2)).astype(int), lo + 1), len(power))
        total = np.concatenate([[0.0], np.cumsum(power)])
        power = (total[hi] - total[lo]) / (hi - lo)  # mean of bins lo .. hi - 1
    phase = np.exp(2j * np.pi * rng.random((*x.shape[:2], power.shape[0])))
    y = np.fft.irfft(np.sqrt(power) * phase, n=x.shape[-1], axis=-1)
    y *= np.sqrt((x ** 2).mean() / max((y ** 2).mean(), 1e-30))
    return y.astype(np.float32)


def score(reference: np.ndarray, candidate: np.ndarray, metrics: list, batch: int = 8) -> dict[str, float]:
    for m in metrics:
        m.reset()
    for i in range(0, len(reference), batch):
        real, fake = torch.from_numpy(reference[i:i + batch]), torch.from_numpy(candidate[i:i + batch])
        for m in metrics:
            m.update(real, fake)
    out = {}
    for m in metrics:
        out.update(m.compute())
    return out


def generator(path: str, trained: bool):
    from framework import checkpoint
    from framework.generate import load_model

    model, rep, info, _, _ = load_model(checkpoint.load(path), "cpu", weights=trained)
    if info.sample_rate != tr.SAMPLE_RATE:
        raise SystemExit(f"{path}: generates at {info.sample_rate} Hz; this script compares at {tr.SAMPLE_RATE} Hz")

    @torch.no_grad()
    def draw(n: int, seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        return torch.cat([rep.decode(model.sample(min(4, n - i)).float()) for i in range(0, n, 4)]).numpy()

    return draw, info.shape[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="a run's checkpoint (the demo's): rows trained G and untrained G")
    ap.add_argument("--root", default=tr.DEFAULT_ROOT, help="the transcriber's folder (data and cache)")
    ap.add_argument("--recipe", default="default", choices=sorted(tr.RECIPES))
    ap.add_argument("--clips", type=int, default=16, help="clips per set (the demo's eval_samples)")
    ap.add_argument("--samples", type=int, default=65472, help="samples per clip (the demo's window)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="outputs/yardstick")
    ap.add_argument("--space", choices=("embedding", "features"), default="embedding",
                    help="frechet_transcriber's space: the metric's (units before the ReLU) or, for comparison, "
                         "the same units after it")
    args = ap.parse_args(argv)
    from framework.protocols import DataInfo
    from plugins.metrics.audio import FrechetMdct

    started = time.perf_counter()
    torch.set_grad_enabled(False)
    root = Path(args.root)
    _, meta = trt.load_or_build(root, args.recipe)
    rows = meta["rows"]
    validation, test = split_audio(root, rows, "validation"), split_audio(root, rows, "test")
    shifted = render_shifted(root, rows, meta["renderer"], 1)
    rolls = midi_rolls(root, rows, trt.Sounding(meta["renderer"], meta["recipe"]["sounding_db"]))
    info = DataInfo(kind="audio", shape=(2, args.samples), sample_rate=tr.SAMPLE_RATE)
    runtime = type("R", (), {"device": torch.device("cpu")})()
    p = TranscriberParams(root=str(root), recipe=args.recipe)
    metrics = [FrechetTranscriber(p, data_info=info, runtime=runtime),
               NoteStats(NoteStats.Params(root=str(root), recipe=args.recipe), data_info=info, runtime=runtime),
               FrechetMdct(FrechetMdct.Params(), representation=None, data_info=info, runtime=runtime)]
    if args.space == "features":  # this process's shared cached network; note_stats only calls forward()
        net = metrics[0].judge.net
        net.embedding = net.features
    gens = {}
    if args.checkpoint:
        for name, trained in (("trained G", True), ("untrained G", False)):
            draw, length = generator(args.checkpoint, trained)
            if length != args.samples:
                raise SystemExit(f"{args.checkpoint}: generates {length} samples; pass --samples {length}")
            gens[name] = draw
    results: dict[str, list[dict]] = {}
    for rep in range(args.repeats):
        rng = np.random.default_rng((1, rep))
        reference, _ = windows(validation, args.clips, args.samples, rng)
        real, picks = windows(test, args.clips, args.samples, rng)
        cases = {"real": real, "noise 20 dB": add_noise(real, 20, rng), "noise 10 dB": add_noise(real, 10, rng),
                 "low-pass 2 kHz": low_pass(real, 2000.0), "pitch +1": cut(shifted, picks, args.samples),
                 **{name: draw(args.clips, 1000 + rep) for name, draw in gens.items()},
                 "piano-shaped noise": shaped_noise(real, rng), "silence": np.zeros_like(real),
                 "noise, unsmoothed piano spectrum": shaped_noise(real, rng, None)}
        for name, x in cases.items():
            results.setdefault(name, []).append(score(reference, x, metrics))
        truth = notes_mod.RollStats()  # what the test windows' MIDI says (exact, nothing cleaned)
        frames = tr.frames_of(args.samples)
        truth.add(torch.stack([torch.from_numpy(np.pad(rolls[j][s // tr.HOP:s // tr.HOP + frames],
                                                         ((0, max(0, frames - len(rolls[j][s // tr.HOP:]))), (0, 0))))
                               for j, s in picks]))
        results.setdefault("real, from its MIDI", []).append(truth.summary("fake"))
        print(f"repeat {rep + 1}/{args.repeats} done ({time.perf_counter() - started:.0f} s)", flush=True)
    report(results, args, meta, time.perf_counter() - started)
    return 0


def report(results: dict[str, list[dict]], args, meta: dict, seconds: float) -> None:
    cols = [("frechet_transcriber", "{:.4g}"), ("frechet_mdct", "{:.4g}"), ("notes_active_frames_fake_pct", "{:.1f}"),
            ("notes_per_s_fake", "{:.2f}"), ("notes_polyphony_fake", "{:.2f}"), ("notes_pitch_class_distance",
                                                                               "{:.3f}")]
    stats = {name: {k: (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs], ddof=1))
                        if len(rs) > 1 else 0.0) for k, _ in cols + [("frechet_transcriber_real_floor", "")]
                    if k in rs[0]} for name, rs in results.items()}
    floor = np.mean([s["frechet_transcriber_real_floor"][0] for s in stats.values()
                     if "frechet_transcriber_real_floor" in s])
    t = meta["test"]
    print(f"\ntranscriber {meta['recipe_name']} (test frame F1 {t['f1']:.3f}); {args.clips} clips x {args.samples} "
          f"samples per set, {args.repeats} repeats; real-vs-real floor (halves of the reference): {floor:.4g}; "
          f"{seconds:.0f} s\n")
    print("| case | " + " | ".join(k for k, _ in cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for name, s in stats.items():
        cells = []
        for k, fmt in cols:
            if k not in s:
                cells.append("-")
                continue
            mean, std = s[k]
            rel = f" ({100 * std / abs(mean):.0f} %)" if k.startswith("frechet") and mean else ""
            cells.append(f"{fmt.format(mean)} ± {fmt.format(std)}{rel}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    present = [n for n in ORDER if n in stats]
    for key in ("frechet_transcriber", "frechet_mdct"):
        means = [stats[n][key][0] for n in present]
        ok = all(a < b for a, b in zip(means, means[1:]))
        bad = [f"{a} >= {b}" for a, b, x, y in zip(present, present[1:], means, means[1:]) if x >= y]
        pairs = [(i, j) for i in range(len(means)) for j in range(i + 1, len(means))]
        wrong = [f"{present[j]} < {present[i]}" for i, j in pairs if means[i] >= means[j]]
        print(f"\n{key}: expected order {'holds' if ok else 'broken: ' + '; '.join(bad)} over {' < '.join(present)}"
              f"; {len(pairs) - len(wrong)} of {len(pairs)} pairs in order"
              + (f" (not: {'; '.join(wrong)})" if wrong else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "yardstick.json").write_text(json.dumps({"args": vars(args), "transcriber": {k: meta[k] for k in (
        "recipe_name", "sha256", "renderer", "test", "hours")}, "runs": results, "floor": floor}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in stats if "frechet_transcriber" in stats[n]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    means = [max(stats[n]["frechet_transcriber"][0], 1e-3) for n in names]
    ax.errorbar(range(len(names)), means, yerr=[stats[n]["frechet_transcriber"][1] for n in names], fmt="o",
                capsize=4)
    ax.axhline(floor, color="grey", ls="--", lw=1, label="real-vs-real floor (halves)")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("frechet_transcriber")
    ax.set_title(f"{args.clips} clips x {args.samples / tr.SAMPLE_RATE:.2f} s, mean ± std of {args.repeats} draws")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "yardstick.png", dpi=120)
    print(f"\nwrote {out / 'yardstick.json'}, {out / 'yardstick.png'}")


if __name__ == "__main__":
    raise SystemExit(main())
