"""How the piano transcriber of ``transcriber.py`` (the judge of ``plugins/metrics/notes.py``) is trained: the
labels, the training data rendered from the piano set, the training loop, the test scores and the cache it writes.
``python -m framework build-transcriber [--root DIR] [--recipe NAME] [--retrain]`` (registered here through
``register_commands``; also ``python -m plugins.metrics.transcriber_train``) builds or checks the cache; the note
metrics build it on first use through :func:`load_or_build`.

Labels (:func:`piano_roll`, :class:`Sounding`): key ``k`` sounds in frame ``t`` iff onset <= t * hop / rate <
end, from the piece's MIDI (notes outside A0..C8 are left out), where ``end`` is the key-off or, when earlier,
the moment the note has decayed ``sounding_db`` (30 dB) below its peak in the renderer; scores are reported
against these sounding labels and against the held ones (onset to key-off). Data: the first ``hours`` of the
piano set's render order
(``piano.render_pieces``, the same renderer, splits and files as the ``piano`` dataset, rendered into the
transcriber's own folder so a run's dataset is never touched); trained on its train split, scored on its test
split (frame precision / recall / F1 at probability 0.5, counted over every (frame, key) cell as in
mir_eval's frame metrics).

Training (:func:`train`): Adam with cosine decay on random segments of the train split, binary cross-entropy per
(frame, key); the recipe (``transcriber.RECIPES``) can add white noise to a share of the segments
(:func:`add_noise`). The cache (``<root>/transcriber-<recipe>.pt`` and its JSON sidecar, see ``transcriber.py``)
is written atomically; bump the recipe's ``version`` when this file's numerics change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from framework import hookimpl
from framework.errors import DataError
from plugins.common.audio_io import read_audio
from plugins.common.midi import midi_notes
from plugins.common.piano_render import choose_renderer, render_notes
from plugins.datasets.piano import Piano, render_pieces
from plugins.metrics import transcriber
from plugins.metrics.transcriber import (BANDS, DEFAULT_ROOT, HOP, KEYS, LOG_FLOOR, LOWEST_KEY, RECIPES, SAMPLE_RATE,
                                         FrontEnd, Transcriber, _sha256, cache_paths, check_recipe, data_checksums,
                                         mel_filterbank, read_sidecar)

ROW_KEYS = ("name", "split", "audio_filename", "midi_filename", "audio_start_seconds", "duration")


# ------------------------------------------------------------------------------------------- labels

def piano_roll(notes: np.ndarray, frames: int, sounding: "Sounding | None" = None) -> np.ndarray:
    """``notes`` float ``(n, >=5)`` rows (onset s, offset s, channel, key, velocity) -> bool ``(frames, 88)``.

    Key ``k`` is on in frame ``t`` iff onset <= t * HOP / SAMPLE_RATE < end, keys outside A0..C8 left out.
    ``end`` is the offset (the key is held: the MIDI's definition), or with ``sounding`` the earlier of the offset
    and the moment the note has decayed ``sounding.db`` below its peak (the key still sounds)."""
    roll = np.zeros((frames, KEYS), dtype=bool)
    for onset, offset, _, key, velocity in notes[:, :5]:
        k = int(key) - LOWEST_KEY
        if not 0 <= k < KEYS:
            continue
        if sounding is not None:
            offset = min(offset, onset + sounding.seconds(int(key), int(velocity)))
        first = math.ceil(onset * SAMPLE_RATE / HOP - 1e-9)
        last = math.ceil(offset * SAMPLE_RATE / HOP - 1e-9)  # first frame no longer sounding
        roll[max(first, 0):min(last, frames), k] = True
    return roll


class Sounding:
    """How long a held note of the renderer stays within ``db`` of its peak: the label's end for notes held
    longer than they sound.

    Why: the rendered piano has no pedal and no sustain loop, so a held note decays. Measured on the soundfont
    piano, middle C falls 30 dB below its attack in about 1 s and A4 in 1.2 s, while the scores hold notes for
    seconds, and in a few pieces for up to a minute: on the test split 17 % of the
    held (frame, key) cells were over 4 s after their onset, where a frame-level network can hear nothing (its
    recall there was 0.09). Labels that end when the sound does are what "which keys sound in this frame"
    means, and training on them is what lifted the test frame F1 (docs/metrics.md, "The transcriber").

    The decay is measured, not modelled: each (key, velocity) is rendered alone, held for
    :attr:`MAX_SECONDS`, through the same renderer (velocities rounded to :attr:`VELOCITY_STEP`, since
    soundfonts switch samples between velocity layers); the end is the first STFT frame after the peak whose
    power is ``db`` below it (never: no cap). Memoised per process, so only the pairs the data plays are
    rendered (891 pairs in 11 s for the 2 h set of render version 3)."""

    MAX_SECONDS, VELOCITY_STEP = 10.0, 8
    _memo: dict[tuple[str, float, int, int], float] = {}

    def __init__(self, renderer: str, db: float):
        self.renderer, self.db = renderer, float(db)

    def seconds(self, key: int, velocity: int) -> float:
        velocity = int(min(max(round(velocity / self.VELOCITY_STEP) * self.VELOCITY_STEP, 1), 127))
        memo = (self.renderer, self.db, key, velocity)
        if memo not in self._memo:
            x = render_notes(np.array([[0.0, self.MAX_SECONDS, 0, key, velocity]]), self.renderer, SAMPLE_RATE)
            n = x.shape[1] // HOP
            power = (x.mean(0)[:n * HOP].reshape(n, HOP).astype(np.float64) ** 2).mean(1)  # (frames,)
            peak = int(np.argmax(power))
            quiet = np.flatnonzero(power[peak:] < power[peak] * 10 ** (-self.db / 10))
            self._memo[memo] = (peak + quiet[0]) * HOP / SAMPLE_RATE if len(quiet) else math.inf
        return self._memo[memo]


# ------------------------------------------------------------------------------------------- data

@dataclasses.dataclass
class Piece:
    name: str
    split: str
    spec: Tensor  # (frames, BANDS) log-mel
    roll: Tensor  # (frames, 88) bool: the keys that sound (the training target)
    held: Tensor  # (frames, 88) bool: the keys that are held (the MIDI's notes, uncapped; scored beside)
    energy: Tensor  # (frames,) STFT power summed over all bins (for noise at a given SNR)


def render_data(root: str | Path, hours: float) -> tuple[list[dict], str]:
    """The first ``hours`` of the piano set's render order, rendered into ``root`` (resumes): rows with
    ``name``, ``split``, ``audio_filename``, ``midi_filename`` (relative to ``root``), and the renderer."""
    params = Piano.Params(root=str(root), hours=hours)
    rows, _, _ = render_pieces(params)
    return rows, choose_renderer(params.renderer, params.soundfont)


@torch.no_grad()
def load_pieces(root: str | Path, rows: list[dict], front: FrontEnd, sounding: Sounding) -> list[Piece]:
    """Decode each row's FLAC and MIDI into a log-mel spectrogram and its piano rolls (float32 / bool)."""
    root, pieces = Path(root), []
    for r in rows:
        audio = read_audio(root / r["audio_filename"], SAMPLE_RATE)  # (2, T)
        power = front.power(audio[None])  # (1, frames, 1025)
        spec = front.mel(power)[0]  # (frames, BANDS)
        notes = midi_notes((root / r["midi_filename"]).read_bytes())
        notes[:, :2] -= r["audio_start_seconds"]  # MIDI time -> time in the (leading-silence-trimmed) FLAC
        roll, held = piano_roll(notes, spec.shape[0], sounding), piano_roll(notes, spec.shape[0])
        pieces.append(Piece(r["name"], r["split"], spec, torch.from_numpy(roll), torch.from_numpy(held),
                            power[0].sum(-1)))
    return pieces


# ------------------------------------------------------------------------------------------- training

def _segments(pieces: list[Piece], length: int, rng: np.random.Generator, count: int,
              ) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` random ``length``-frame segments (zero-padded short pieces), drawn proportionally to length."""
    sizes = np.array([p.spec.shape[0] for p in pieces], dtype=np.float64)
    which = rng.choice(len(pieces), size=count, p=sizes / sizes.sum())
    specs = torch.full((count, length, BANDS), math.log(LOG_FLOOR))
    rolls = torch.zeros((count, length, KEYS))
    energy = torch.zeros(count)
    for i, j in enumerate(which):
        p = pieces[j]
        start = int(rng.integers(0, max(p.spec.shape[0] - length, 0) + 1))
        seg = slice(start, start + length)
        n = p.spec[seg].shape[0]
        specs[i, :n], rolls[i, :n], energy[i] = p.spec[seg], p.roll[seg].float(), p.energy[seg].mean()
    return specs, rolls, energy  # (count, length, BANDS), (count, length, 88), (count,) mean energy per frame


def add_noise(spec: Tensor, energy: Tensor, snr_db: Tensor, fb: Tensor) -> Tensor:
    """Log-mel ``spec`` (B, frames, BANDS) of clean audio whose frames hold ``energy`` (B,) STFT power (summed
    over all bins, on average) -> that of the audio plus white Gaussian noise at ``snr_db`` (B,), computed in
    the power domain. White noise has the same expected power in every STFT bin, the SNR's share of the
    signal's: energy / bins / 10^(snr / 10) (Parseval: the same ratio as in the waveform); its mel power per band
    is Gamma-distributed with that mean times the filter's area and the band's effective number of bins (the
    signal x noise cross term, zero on average, is left out). Matches noise added to the audio within ~0.1
    log units per band (checked in tests/plugins/test_notes.py)."""
    power = (spec.exp() - LOG_FLOOR).clamp_min(0.0)
    width = fb.sum(0)  # (BANDS,): each band's filter area, in STFT bins
    dof = width ** 2 / (fb ** 2).sum(0)  # effective number of independent bins per band
    per_bin = energy.view(-1, 1, 1) / fb.shape[0] / 10 ** (snr_db.view(-1, 1, 1) / 10)
    mean = (per_bin * width).clamp_min(1e-12)  # (B, 1, BANDS) expected noise power per band (> 0 for silence)
    noise = torch.distributions.Gamma(dof.expand_as(power), (dof / mean).expand_as(power)).sample()
    return torch.log(power + noise + LOG_FLOOR)


def train(pieces: list[Piece], recipe: dict, *, progress: bool = True) -> Transcriber:
    """A :class:`Transcriber` trained on ``pieces`` by ``recipe`` (Adam, cosine decay to 0, binary cross-entropy
    per (frame, key)); a ``noise_prob`` share of the segments gets white noise at an SNR drawn uniformly from
    ``snr_db`` (:func:`add_noise`; version 2 used 0.5 so that noisy piano would not be mistaken for no piano, the
    default now uses none). Seeded through a forked RNG, so the caller's random streams are untouched."""
    if not pieces:
        raise DataError("transcriber: no training pieces")
    frames = sum(p.spec.shape[0] for p in pieces)
    per_step = recipe["segment_frames"] * recipe["batch_size"]
    steps = max(1, round(recipe["epochs"] * math.ceil(frames / per_step)))
    rng = np.random.default_rng(recipe["seed"])
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # callers may be inside no_grad (evaluation)
        torch.manual_seed(recipe["seed"])
        model = Transcriber(recipe["width"], recipe["dropout"])
        fb = mel_filterbank()
        opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        model.train()
        bar = tqdm(range(steps), desc=f"train transcriber ({frames / 43.0 / 3600:.2g} h)", disable=not progress,
                   unit="step")
        for _ in bar:
            spec, roll, energy = _segments(pieces, recipe["segment_frames"], rng, recipe["batch_size"])
            noisy = torch.rand(len(spec)) < recipe["noise_prob"]
            if noisy.any():
                lo, hi = recipe["snr_db"]
                spec[noisy] = add_noise(spec[noisy], energy[noisy], lo + (hi - lo) * torch.rand(int(noisy.sum())), fb)
            loss = F.binary_cross_entropy_with_logits(model.head(model.spec_features(spec)), roll)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return model.eval()


@torch.no_grad()
def frame_scores(model: Transcriber, pieces: list[Piece], threshold: float = 0.5) -> dict[str, float]:
    """Frame-level precision, recall and F1 over every (frame, key) cell of ``pieces``, against the sounding
    labels (``precision``, ``recall``, ``f1``: what the network is trained for) and the held ones (``held_*``:
    Onsets and Frames' definition, up to the key-off)."""
    model.eval()
    counts = {"": [0, 0, 0], "held_": [0, 0, 0]}  # tp, fp, fn
    for p in pieces:
        pred = torch.sigmoid(model.head(model.spec_features(p.spec[None])))[0] > threshold
        for prefix, truth in (("", p.roll), ("held_", p.held)):
            c = counts[prefix]
            c[0] += int((pred & truth).sum())
            c[1] += int((pred & ~truth).sum())
            c[2] += int((~pred & truth).sum())
    out = {}
    for prefix, (tp, fp, fn) in counts.items():
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        out.update({f"{prefix}precision": precision, f"{prefix}recall": recall,
                    f"{prefix}f1": 2 * precision * recall / max(precision + recall, 1e-12)})
    return out


# ---------------------------------------------------------------------------------------------- build

def build(root: str | Path = DEFAULT_ROOT, recipe: str = "default", *, progress: bool = True) -> dict:
    """Render the recipe's data into ``root`` if needed, train, score on the test split, write the cache
    atomically; returns the sidecar."""
    check_recipe(recipe)
    r = RECIPES[recipe]
    started = time.perf_counter()
    rows, renderer = render_data(root, r["hours"])
    checksums = data_checksums(root, rows)
    pieces = load_pieces(root, rows, FrontEnd(), Sounding(renderer, r["sounding_db"]))
    model = train([p for p in pieces if p.split == "train"], r, progress=progress)
    scores = {split: frame_scores(model, [p for p in pieces if p.split == split]) for split in ("validation", "test")}
    weights, sidecar = cache_paths(root, recipe)
    tmp = weights.with_name(f".{weights.name}.tmp")
    torch.save({k: v for k, v in model.state_dict().items()}, tmp)
    tmp.replace(weights)  # atomic: concurrent runs never read half a file
    hours = {s: sum(p.spec.shape[0] for p in pieces if p.split == s) * HOP / SAMPLE_RATE / 3600
             for s in ("train", "validation", "test")}
    meta = {"recipe": r, "recipe_name": recipe, "sha256": _sha256(weights), "renderer": renderer,
            "rows": [{k: row[k] for k in ROW_KEYS} for row in rows],
            "data_sha256": checksums, "hours": hours, "test": scores["test"], "validation": scores["validation"],
            "train_seconds": time.perf_counter() - started,
            "torch": torch.__version__}
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(sidecar)
    return meta


def load_or_build(root: str | Path = DEFAULT_ROOT, recipe: str = "default", device: torch.device | str = "cpu",
                  ) -> tuple[Transcriber, dict]:
    """The cached transcriber of ``root`` (trained first when missing or out of date: :func:`build`) and its
    sidecar; what the note metrics use."""
    return transcriber.load(root, recipe, device, build=build)


# ------------------------------------------------------------------------------------------- command

def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--root", default=DEFAULT_ROOT, help=f"the transcriber's data and cache (default: {DEFAULT_ROOT})")
    ap.add_argument("--recipe", default="default", choices=sorted(RECIPES),
                    help="the training recipe: default (the metrics' units) or smoke (a tiny one for CI and tests)")
    ap.add_argument("--retrain", action="store_true", help="train again even when the cache is valid")


def run(args: argparse.Namespace) -> int:
    """``python -m framework build-transcriber [--root DIR] [--recipe NAME] [--retrain]``: build (or check) the
    cache and print its test scores."""
    meta = None if args.retrain else read_sidecar(args.root, args.recipe)
    if meta is None:
        meta = build(args.root, args.recipe)
    t = meta["test"]
    validation = f"validation F1 {meta['validation']['f1']:.3f}; " if "validation" in meta else ""
    print(f"transcriber {cache_paths(args.root, args.recipe)[0]}: test frame precision {t['precision']:.3f}, "
          f"recall {t['recall']:.3f}, F1 {t['f1']:.3f} on the sounding notes (held notes: F1 {t['held_f1']:.3f}; "
          f"{validation}train {meta['hours']['train']:.2f} h, test {meta['hours']['test']:.2f} h, "
          f"{meta['renderer']}; built in {meta['train_seconds']:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m plugins.metrics.transcriber_train [--root DIR] [--recipe NAME] [--retrain]``: the same as
    ``python -m framework build-transcriber``."""
    ap = argparse.ArgumentParser(prog="python -m plugins.metrics.transcriber_train", description=run.__doc__)
    add_arguments(ap)
    return run(ap.parse_args(argv))


@hookimpl
def register_commands(register):
    register("build-transcriber", run, add_arguments, "train (or check) the piano transcriber of the note metrics")


if __name__ == "__main__":
    raise SystemExit(main())
