"""A small frame-level piano transcription network, trained offline by the project on its own rendered piano
set, whose features and piano rolls are the yardstick of ``plugins/metrics/notes.py``. This module is the judge as
evaluation uses it: the front end, the network, the recipes and the cache of trained weights (checked and loaded).
How it is trained (the labels, the rendered data, the training loop, ``python -m framework build-transcriber``) is
in ``transcriber_train.py``; nothing here renders piano or imports a dataset.

Why: FAD (Kilgour et al. 2019) needs VGGish or CLAP weights, which cannot be downloaded here. Like the MNIST
LeNet (``mnist_classifier.py``), the judge is trained locally, by a fixed recipe, and cached; unlike downloaded
audio sets, the rendered piano set comes with the exact MIDI each piece was rendered from, so the labels are
exact (``piano.py`` step 3).

Input: mono audio at :data:`SAMPLE_RATE` (the piano set's rate; other rates are resampled), ``(B, C, T)``,
channels averaged. Front end (Onsets and Frames, Hawthorne et al. 2018, §3, moved to 22016 Hz): a 2048-point
Hann STFT with hop 512 (23.3 ms frames, 43 per second; frame ``t`` centred on sample ``t * 512``), power
mapped to 229 HTK-mel bands between 30 Hz and 8 kHz, ``log(power + 1e-4)``. Not the 128-bin MDCT: its 86 Hz
bins cannot separate the low notes (semitones 1.6-10 Hz apart below A2); at 10.75 Hz per STFT bin the low
bands are each at least two STFT bins wide (narrower mel triangles are widened, so none is empty), and the
low notes are told apart by their harmonics, as in Onsets and Frames.

Network (:class:`Transcriber`, 0.50 M parameters at width 16): three 3x3 convolutions (16, 16, 32 channels, BatchNorm,
ReLU, two 2x max-pools over frequency) over (frames, bands), a per-frame linear layer to 256 ReLU units (the
**features**, :meth:`Transcriber.features`; the same units before their ReLU are the **embedding** that
``frechet_transcriber`` compares, :meth:`Transcriber.embedding`) and a linear layer to 88 key logits (A0 = MIDI
21 ... C8 = 108).
Its receptive field is 7 frames (163 ms) plus the 93 ms window: a frame-level model without Onsets and
Frames' onset head and LSTM. The recipe can add white noise to a share of the training segments
(``transcriber_train.add_noise``); the default (since version 3) does not, so that noise moves the embedding
(docs/metrics.md, "Validation").

Cache: ``<root>/transcriber-<recipe>.pt`` with a JSON sidecar (the recipe, sha256 of the weights, sha256 of
every audio and MIDI file it was trained on, the renderer, the test scores). A missing file, a changed
recipe (``version`` included: bump it when the numerics of this file or of ``transcriber_train.py`` change) or
changed data make it invalid (:func:`read_sidecar`); :func:`load` then has it retrained by the ``build`` it is
given (the note metrics give ``transcriber_train.build``) or says which command builds it. Numbers from different
recipes or renderers are not comparable; the metrics tag which one they used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from framework.errors import DataError

SAMPLE_RATE = 22016
N_FFT, HOP, BANDS, F_MIN, F_MAX = 2048, 512, 229, 30.0, 8000.0
LOG_FLOOR = 1e-4  # power floor of the log spectrogram (~ -94 dB re a full-scale sine)
KEYS, LOWEST_KEY = 88, 21  # A0 .. C8
DEFAULT_ROOT = "data/transcriber"

# The training recipes (change -> retrain). "default" defines the metrics' units; "smoke" is for CI and tests.
# Version 4: the same recipe as 3 on the piano set of render version 4 (velocities fixed), so old caches retrain.
RECIPES = {
    "default": {"version": 4, "hours": 2.0, "epochs": 12, "segment_frames": 128, "batch_size": 16, "lr": 3e-3,
                "width": 16, "dropout": 0.0, "noise_prob": 0.0, "snr_db": [5.0, 35.0], "sounding_db": 30.0,
                "seed": 0},
    "smoke": {"version": 4, "hours": 0.001, "epochs": 1, "segment_frames": 64, "batch_size": 4, "lr": 1e-3,
              "width": 16, "dropout": 0.0, "noise_prob": 0.5, "snr_db": [5.0, 35.0], "sounding_db": 30.0,
              "seed": 0},
}


# ----------------------------------------------------------------------------------------- front end

def mel_filterbank(n_fft: int = N_FFT, rate: int = SAMPLE_RATE, bands: int = BANDS, f_min: float = F_MIN,
                   f_max: float = F_MAX) -> Tensor:
    """``(n_fft // 2 + 1, bands)`` triangular HTK-mel filters; a triangle narrower than two STFT bins is widened
    to +-1 bin around its centre, so that no band is empty at low frequencies."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    edges = 700.0 * (10 ** (np.linspace(mel(f_min), mel(f_max), bands + 2) / 2595.0) - 1.0)
    freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
    df = rate / n_fft
    fb = np.zeros((len(freqs), bands))
    for b in range(bands):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        lo, hi = min(lo, mid - df), max(hi, mid + df)
        fb[:, b] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)
    return torch.from_numpy(fb).float()


class FrontEnd(nn.Module):
    """(B, C, T) audio at :data:`SAMPLE_RATE` -> (B, frames = T // HOP + 1, BANDS) log-mel power."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("fb", mel_filterbank(), persistent=False)

    def power(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, frames, N_FFT // 2 + 1) STFT power of the mono mix
        mono = x.float().mean(1)  # (B, T)
        if mono.shape[-1] <= N_FFT // 2:  # reflect padding needs more samples than half a window
            mono = F.pad(mono, (0, N_FFT // 2 + 1 - mono.shape[-1]))
        spec = torch.stft(mono, N_FFT, HOP, window=self.window, center=True, return_complex=True)
        return (spec.real ** 2 + spec.imag ** 2).transpose(1, 2)

    def mel(self, power: Tensor) -> Tensor:  # (B, frames, 1025) -> (B, frames, BANDS) log-mel
        return torch.log(power @ self.fb + LOG_FLOOR)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, frames, BANDS)
        return self.mel(self.power(x))


def frames_of(samples: int) -> int:
    return samples // HOP + 1


# ------------------------------------------------------------------------------------------- network

class Transcriber(nn.Module):
    """(B, C, T) audio -> features (B, frames, 256) -> key logits (B, frames, 88); see the module docstring."""

    FEATURES = 256

    def __init__(self, width: int = 16, dropout: float = 0.0):
        super().__init__()
        w = width
        self.front = FrontEnd()
        self.input_norm = nn.BatchNorm2d(1)
        self.conv = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d((1, 2)),  # 229 -> 114
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d((1, 2)))  # -> 57
        self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * w * (BANDS // 4), self.FEATURES), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.FEATURES, KEYS))

    def spec_embedding(self, spec: Tensor) -> Tensor:  # (B, frames, BANDS) -> (B, frames, 256), before the ReLU
        h = self.conv(self.input_norm(spec.unsqueeze(1)))  # (B, 2 width, frames, 57)
        return self.fc[:-1](h.permute(0, 2, 1, 3).flatten(2))

    def spec_features(self, spec: Tensor) -> Tensor:  # (B, frames, BANDS) -> (B, frames, 256)
        return self.fc[-1](self.spec_embedding(spec))

    def embedding(self, audio: Tensor) -> Tensor:  # (B, C, T) -> (B, frames, 256): the Fréchet distance's space
        return self.spec_embedding(self.front(audio))

    def features(self, audio: Tensor) -> Tensor:  # (B, C, T) -> (B, frames, 256)
        return self.spec_features(self.front(audio))

    def forward(self, audio: Tensor) -> Tensor:  # (B, C, T) -> (B, frames, 88) logits
        return self.head(self.features(audio))


# ---------------------------------------------------------------------------------------------- cache

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_checksums(root: str | Path, rows: list[dict]) -> dict[str, str]:
    """sha256 of every audio and MIDI file of ``rows``, keyed by its path relative to ``root``."""
    root = Path(root)
    return {rel: _sha256(root / rel) for r in rows for rel in (r["audio_filename"], r["midi_filename"])}


def cache_paths(root: str | Path, recipe: str) -> tuple[Path, Path]:
    weights = Path(root) / f"transcriber-{recipe}.pt"
    return weights, weights.with_name(weights.name + ".json")


def read_sidecar(root: str | Path, recipe: str) -> dict | None:
    """The sidecar of a valid cache (recipe, weights and data checksums all match), else None."""
    weights, sidecar = cache_paths(root, recipe)
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("recipe") != RECIPES[recipe] or not weights.is_file() or meta.get("sha256") != _sha256(weights):
        return None
    try:
        if data_checksums(root, meta["rows"]) != meta["data_sha256"]:
            return None
    except (OSError, KeyError):
        return None
    return meta


_LOADED: dict[tuple[str, str], tuple[Transcriber, dict]] = {}


def check_recipe(recipe: str) -> None:
    """DataError unless ``recipe`` names one of :data:`RECIPES`."""
    if recipe not in RECIPES:
        raise DataError(f"transcriber recipe {recipe!r}; valid: {', '.join(RECIPES)}")


def load(root: str | Path = DEFAULT_ROOT, recipe: str = "default", device: torch.device | str = "cpu", *,
         build: Callable[[str | Path, str], dict] | None = None) -> tuple[Transcriber, dict]:
    """The cached transcriber of ``root`` and its sidecar. Where the cache is missing or out of date,
    ``build(root, recipe)`` makes it first (``transcriber_train.load_or_build`` passes ``transcriber_train.build``,
    which renders and trains); without ``build``, a DataError naming the command that does."""
    weights, _ = cache_paths(root, recipe)
    key = (str(weights.resolve()), str(device))
    if key in _LOADED:
        return _LOADED[key]
    meta = read_sidecar(root, recipe) if recipe in RECIPES else None
    if meta is None:
        if build is None:
            check_recipe(recipe)
            raise DataError(f"{weights}: no valid trained transcriber (missing, of another recipe, or its data "
                            f"changed); build it: python -m framework build-transcriber --root {root} "
                            f"--recipe {recipe}")
        meta = build(root, recipe)
    model = Transcriber(meta["recipe"]["width"])
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError) as exc:
        raise DataError(f"{weights}: cannot load the transcriber ({exc}); delete it and its .json sidecar to "
                        f"retrain it") from exc
    _LOADED[key] = (model.to(device).eval().requires_grad_(False), meta)
    return _LOADED[key]


