"""``envelope``: whether generated notes start and die away like the data's notes, whatever their pitch.

The pitch criteria (``harmonic_concentration``, ``pitch_histogram``, the transcriber's metrics) judge which pitches
sound. A piano note is also its envelope: a sharp attack, then a decay whose rate depends on the key and the
velocity, in two stages: a fast "prompt sound", then a slower "aftersound" (Weinreich 1977, "Coupled piano
strings", JASA 62; decay rates per key and partial: Martin 1947, "Decay rates of piano tones", JASA 19; Fletcher &
Rossing, "The Physics of Musical Instruments", 2nd ed. 1998, ch. 12; Cheng, Dixon & Mauch 2015, "Modelling the
decay of piano sounds", ICASSP). A generator that plays the right pitches as a steady organ tone or a slow swell
passes every pitch criterion; this metric describes every detected note by four numbers and compares the joint
distribution of the generated notes' numbers with the real notes'.

Per clip (channels summed; frames every ``hop_ms``):

- a **log power spectrogram** L (Hann frames of ``fft_ms``, bins >= 20 Hz) in dB relative to the clip's loudest
  bin, floored at ``-floor_db``: relative, so a level change leaves every descriptor exactly as it is. The clip is
  taken to start from silence (a note struck at its start has an onset); frames reaching past its end are dropped
  (the padding's zeros would read as a decay);
- the **onset function** D(t), log spectral flux: the mean over bins of the positive rise of L over ``lag_ms``
  (spectral flux: Bello et al. 2005, "A tutorial on onset detection in music signals", IEEE TSAP 13; on log
  magnitudes, which makes it relative: Klapuri 1999; with a lag of a few frames: SuperFlux, Böck & Widmer 2013);
- **onsets**: local maxima of D (the largest within +-``min_gap_ms``) at least ``threshold_db`` above D's moving
  median over +-``median_ms`` (Bello et al.'s adaptive threshold). A clip without such a peak, if not silent, gets
  its largest D as its one onset, so a swell without an attack is described (by a weak onset and a long attack)
  rather than left out.

Each onset's **note** is the energy of the bins that rose by at least ``band_db`` around it (its partials; all bins
if none did), from just before the onset to the next onset (or the clip's end): in polyphony, the new note's own
envelope rather than the sum of everything ringing. An onset counts as a note when that energy rises at least
``min_rise_db`` to its peak and the peak is at most ``masked_db`` below the clip's total power at that moment (so the
faint click the rendered piano makes at a key-off is not a note); if no onset of a clip qualifies, its best does.
A silent clip is one note that never starts (``SILENT``). Per note:

1. ``attack_ms``: the 10 % -> 90 % rise time of the note's amplitude (the square root of its energy) from its level
   before the onset to its largest value within ``max_attack_ms`` after the onset (the Timbre Toolbox's attack,
   Peeters et al. 2011, JASA 130; log attack time is a main perceptual dimension of timbre, McAdams et al. 1995);
   the 23 ms frames put a floor of about 10 ms under it;
2. ``decay_early_db_s``: the least-squares slope of the note's energy in dB over the first ``early_ms`` after its
   peak, the first frame within 1 dB of that largest value (so a held tone's "decay" starts after its attack, not
   wherever its flat envelope happens to be largest); the prompt sound; negative for a decay;
3. ``decay_late_db_s``: the slope from ``early_ms`` to ``late_ms`` after the peak (the aftersound), or the early
   slope where the note is too short to have one (another note starts, the clip ends);
4. ``onset_db``: D at the onset, in dB per bin: how abruptly the note's partials appear (onset strength).

Compared as the vector (log2 attack, c(decay_early), c(decay_late), log2(1 + onset / 1 dB)) with
c(s) = sign(s) log2(1 + |s| / 10 dB/s): a doubling of the attack time or of a decay rate (above ~10 dB/s) is one
unit, so a damped note's hundreds of dB/s cannot outweigh the rest, and each descriptor is first clipped to a
plausible range (``CLIP``). ``envelope_frechet`` is the Fréchet distance between Gaussian fits of the real and the
generated notes' vectors (as FID and FAD compare embeddings); ``envelope_frechet_real_floor`` is the same distance
between the notes of the even and the odd real items (sets of half the size: an upper-ish bound of what a perfect
generator would score). Lower is better; NaN when a set has fewer than two notes. Beside them, to read what
differs, per set (``real``, ``fake``): the medians ``envelope_attack_ms_{set}``, ``envelope_decay_early_db_s_{set}``,
``envelope_decay_late_db_s_{set}``, ``envelope_onset_db_{set}``, and ``envelope_notes_per_s_{set}``, notes per
second of audio.

docs/metrics.md, "Envelopes", shows what it hears (``benchmarks/envelope_yardstick.py``): sustained tones, slow
attacks and swells at the real notes' pitches score far above real clips; a level change or a transposition does
not.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import maximum_filter1d, median_filter
from torch import Tensor

from framework import hookimpl
from framework.protocols import DataInfo, Metric
from framework.runtime import no_autocast
from plugins.common.stats import frechet_distance

SETS = ("real", "fake")
LOWEST_HZ = 20.0  # bins below are DC offset and rumble: left out of the onset detection function
FEATURES = ("attack_ms", "decay_early_db_s", "decay_late_db_s", "onset_db")
# Plausible ranges of the descriptors: a value outside is clipped, so one absurd note (a 1 ms clip edge read as a
# decay of thousands of dB/s) cannot dominate the means and covariances. The rendered piano's notes decay at about
# 5..130 dB/s while held and ~150-300 dB/s once the key is released; the range leaves room for both and for rises.
CLIP = {"attack_ms": (0.5, 2000.0), "decay_early_db_s": (-1000.0, 200.0), "decay_late_db_s": (-1000.0, 200.0),
        "onset_db": (0.0, 80.0)}
DECAY_KNEE = 10.0  # dB/s: decay rates are compared as sign(s) log2(1 + |s| / DECAY_KNEE) (see the docstring)
ONSET_KNEE = 1.0  # dB: onset strengths are compared as log2(1 + D / ONSET_KNEE)
PEAK_TOLERANCE = 10 ** (-1 / 20)  # a note's peak: its first frame within 1 dB of its largest amplitude
# A silent clip is one note that never starts: the longest attack, no decay, no onset.
SILENT = (CLIP["attack_ms"][1], 0.0, 0.0, 0.0)
ELEMENTS_PER_CHUNK = 1 << 25  # STFT elements (clips x bins x frames) per chunk of clips: bounds memory for 95 s clips


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"metrics.N.params.{field} {message} (N: this metric's position in metrics:)")


def _slope(t: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y over t (units of y per unit of t); 0 for fewer than two points."""
    if len(t) < 2:
        return 0.0
    tc = t - t.mean()
    return float((tc * (y - y.mean())).sum() / max((tc * tc).sum(), 1e-30))


def _crossing(a: np.ndarray, start: int, stop: int, level: float) -> float:
    """The first (fractional) frame in ``start .. stop`` where ``a`` reaches ``level``, linearly interpolated
    between frames; ``stop`` when it does not."""
    seg = a[start:stop + 1]
    above = np.flatnonzero(seg >= level)
    if len(above) == 0:
        return float(stop)
    i = int(above[0])
    if i == 0:
        return float(start)
    lo, hi = seg[i - 1], seg[i]
    return start + i - 1 + float((level - lo) / max(hi - lo, 1e-30))


class Envelope(Metric):
    higher_is_better = {"envelope_frechet": False}
    @dataclasses.dataclass(frozen=True)
    class Params:
        hop_ms: float = 2.9  # frame hop (64 samples at 22016 Hz)
        fft_ms: float = 23.25  # STFT frames (512 samples at 22016 Hz: 43 Hz bins)
        lag_ms: float = 11.6  # the onset function compares frames this far apart
        floor_db: float = 80.0  # spectra floored this far below the clip's loudest bin
        threshold_db: float = 1.0  # an onset's D over D's moving median (dB per bin)
        median_ms: float = 250.0  # half-width of the moving median
        min_gap_ms: float = 50.0  # onsets at least this far apart (and peaks of D the largest within it)
        max_attack_ms: float = 500.0  # the peak of a note is searched this far after its onset
        band_db: float = 6.0  # a note's partials: the bins that rose this much over +-lag_ms around its onset
        masked_db: float = 30.0  # an onset whose partials peak this far below everything sounding then is no note
        min_rise_db: float = 3.0  # an onset is a note when the envelope rises this much from before it to its peak
        early_ms: float = 100.0  # the early decay: the peak .. early_ms after it
        late_ms: float = 500.0  # the late decay: early_ms .. late_ms after the peak

    def __init__(self, params: "Envelope.Params", *, representation=None, data_info: DataInfo, runtime=None):
        if data_info.kind != "audio" or data_info.sample_rate is None:
            raise ValueError(f"envelope needs audio data (B, C, T) with a sample rate, got {data_info.kind!r} items "
                             f"with sample_rate {data_info.sample_rate}; use an audio dataset, or remove 'envelope' "
                             f"from metrics:")
        p = params
        for name in ("hop_ms", "fft_ms", "lag_ms", "median_ms", "min_gap_ms", "max_attack_ms", "early_ms", "floor_db",
                     "masked_db"):
            _check(getattr(p, name) > 0, name, f"must be > 0, got {getattr(p, name)}")
        for name in ("threshold_db", "band_db", "min_rise_db"):
            _check(getattr(p, name) >= 0, name, f"must be >= 0, got {getattr(p, name)}")
        _check(p.late_ms > p.early_ms, "late_ms", f"must be > early_ms ({p.early_ms}), got {p.late_ms}")
        self.params, self.rate = p, data_info.sample_rate
        self.device = runtime.device if runtime is not None else torch.device("cpu")
        frames = lambda ms: max(1, int(round(ms * 1e-3 * self.rate)))  # noqa: E731
        self.hop, self.fft = frames(p.hop_ms), max(2, frames(p.fft_ms))
        self.frame_s = self.hop / self.rate
        per = lambda ms: max(1, int(round(ms * 1e-3 / self.frame_s)))  # noqa: E731  # ms -> frames
        self.lag, self.gap, self.median = per(p.lag_ms), per(p.min_gap_ms), per(p.median_ms)
        self.max_attack, self.early, self.late = per(p.max_attack_ms), per(p.early_ms), per(p.late_ms)
        self.stft_window = torch.hann_window(self.fft, device=self.device)
        self.audible = (torch.fft.rfftfreq(self.fft, 1 / self.rate) >= LOWEST_HZ).to(self.device)
        self.reset()

    def reset(self) -> None:
        self.notes: dict[str, list[np.ndarray]] = {s: [] for s in SETS}  # per clip: (notes, 4) descriptors
        self.seconds = dict.fromkeys(SETS, 0.0)

    # ------------------------------------------------------------------------------------ analysis

    def curves(self, x: Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """(B, C, T) audio -> per clip, its log power spectrogram L (F, N) float32, in dB re the clip's loudest
        bin and floored at -floor_db (bins >= 20 Hz, channels summed), and its onset function D (N,) float64, on
        the CPU; frame n centred on sample n * hop, N frames up to the last whose window ends inside the clip. A
        silent clip's L is -floor_db everywhere and its D 0."""
        floor = 10 ** (-self.params.floor_db / 10)
        out = []
        bins = self.fft // 2 + 1
        chunk = max(1, ELEMENTS_PER_CHUNK // (bins * (x.shape[-1] // self.hop + 1) * x.shape[1]))
        with no_autocast(), torch.no_grad():
            x = torch.nan_to_num(x.float().to(self.device), nan=0.0, posinf=1.0, neginf=-1.0)
            for part in x.split(chunk):
                b, c, t = part.shape
                spec = torch.stft(part.reshape(b * c, t), self.fft, self.hop, window=self.stft_window,
                                  center=True, pad_mode="constant", return_complex=True)
                spec = spec.abs().square().view(b, c, bins, -1).sum(1)[:, self.audible]  # (b, F, N)
                smax = spec.amax((1, 2), keepdim=True)
                logspec = 10 * torch.log10(torch.maximum(spec, smax * floor).clamp_min(1e-30) / smax.clamp_min(1e-30))
                logspec = torch.where(smax > 0, logspec, torch.full_like(logspec, -self.params.floor_db))
                rise = (logspec[..., self.lag:] - logspec[..., :-self.lag]).clamp_min(0).mean(1)  # (b, N - lag)
                # frames whose window reaches past the clip's end see the padding's zeros, a fall that is no decay
                inside = max(1, (t - self.fft // 2) // self.hop + 1)
                d = F.pad(rise, (self.lag, 0))[:, :inside].double().cpu().numpy()
                logspec = logspec[..., :inside].cpu().numpy()
                out.extend(zip(logspec, d))
        return out

    def onsets(self, d: np.ndarray) -> np.ndarray:
        """(N,) onset function -> onset frames, ascending, at least one (see the module docstring)."""
        local_max = d >= maximum_filter1d(d, 2 * self.gap + 1, mode="constant")
        threshold = median_filter(d, 2 * self.median + 1, mode="nearest") + self.params.threshold_db
        peaks = np.flatnonzero(local_max & (d > threshold) & (d > 0))
        if len(peaks) == 0:
            return np.array([int(np.argmax(d))])
        keep = [peaks[0]]  # equal neighbouring maxima (a plateau) count once
        for p in peaks[1:]:
            if p - keep[-1] >= self.gap:
                keep.append(p)
        return np.array(keep)

    def describe(self, logspec: np.ndarray, d: np.ndarray) -> np.ndarray:
        """One clip's spectrogram (F, N) and onset function (N,) -> its notes' descriptors (notes, 4), in
        ``FEATURES`` order, unclipped; one ``SILENT`` row for a silent clip."""
        if logspec.max() <= -self.params.floor_db:  # silent: one note that never starts
            return np.array([SILENT])
        n_frames = logspec.shape[1]
        ons = self.onsets(d)
        out, rises, shares = [], [], []
        back = self.lag + (self.fft // 2) // self.hop  # D peaks up to this many frames after the rise begins
        t = np.arange(n_frames) * self.frame_s
        for i, o in enumerate(ons):
            start = max(0, o - back) if i == 0 else max(ons[i - 1], o - back)
            end = ons[i + 1] if i + 1 < len(ons) else n_frames  # exclusive
            stop = min(end, o + self.max_attack + self.late)  # what the descriptors can need
            # the note's partials: the bins that rose at its onset (all bins when none did)
            rise = logspec[:, min(o + self.lag, n_frames - 1)] - logspec[:, max(o - self.lag, 0)]
            bins = rise >= self.params.band_db
            power = 10.0 ** (logspec[:, start:stop] / 10)
            band = power[bins].sum(0) if bins.any() else power.sum(0)
            e = 10 * np.log10(np.maximum(band, 1e-30))
            amp = np.sqrt(band)
            search = amp[:max(1, min(end, o + self.max_attack) - start)]
            top = int(np.argmax(search))
            base = float(amp[:top + 1].min())
            span = amp[top] - base
            rise_from = int(np.argmin(amp[:top + 1]))
            t10 = _crossing(amp, rise_from, top, base + 0.1 * span)
            t90 = _crossing(amp, rise_from, top, base + 0.9 * span)
            peak = int(np.flatnonzero(search >= search[top] * PEAK_TOLERANCE)[0])
            attack_ms = (t90 - t10) * self.frame_s * 1e3
            early = slice(peak, min(len(e), peak + self.early))
            late = slice(peak + self.early, min(len(e), peak + self.late))
            decay_early = _slope(t[early], e[early])
            decay_late = _slope(t[late], e[late]) if late.stop - late.start >= max(2, self.early // 2) else decay_early
            out.append((attack_ms, decay_early, decay_late, float(d[o])))
            rises.append(20 * math.log10(amp[top] / max(base, 1e-30)))
            shares.append(10 * math.log10(band[top] / max(power[:, top].sum(), 1e-30)))
        notes = np.array(out, dtype=np.float64).reshape(-1, len(FEATURES))
        rises, shares = np.array(rises), np.array(shares)
        ok = (rises >= self.params.min_rise_db) & (shares >= -self.params.masked_db)
        return notes[ok] if ok.any() else notes[[int(np.argmax(rises + shares))]]

    def features(self, x: Tensor) -> list[np.ndarray]:
        """(B, C, T) audio -> per clip, its notes' descriptors (notes, 4)."""
        return [self.describe(logspec, d) for logspec, d in self.curves(x)]

    # ------------------------------------------------------------------------------------ the metric

    def update(self, real: Tensor, fake: Tensor) -> None:  # (B, C, T) each
        for s, x in zip(SETS, (real, fake)):
            self.notes[s].extend(self.features(x))
            self.seconds[s] += x.shape[0] * x.shape[-1] / self.rate

    @staticmethod
    def vectors(notes: list[np.ndarray]) -> np.ndarray:
        """Per-clip descriptors -> the compared vectors (n, 4) (see the module docstring)."""
        v = np.concatenate(notes) if notes else np.zeros((0, len(FEATURES)))
        v = np.stack([np.clip(v[:, j], *CLIP[f]) for j, f in enumerate(FEATURES)], 1)
        decay = lambda s: np.sign(s) * np.log2(1 + np.abs(s) / DECAY_KNEE)  # noqa: E731
        return np.stack([np.log2(v[:, 0]), decay(v[:, 1]), decay(v[:, 2]), np.log2(1 + v[:, 3] / ONSET_KNEE)], 1)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        """Fréchet distance of the Gaussian fits of two sets of vectors (n, D); NaN when a set has < 2 of them."""
        if len(a) < 2 or len(b) < 2:
            return math.nan
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        return frechet_distance(ta.mean(0), torch.cov(ta.T), tb.mean(0), torch.cov(tb.T))

    def compute(self) -> dict[str, float]:
        if not all(self.notes.values()):
            raise ValueError("envelope: compute() before any update()")
        real, fake = (self.vectors(self.notes[s]) for s in SETS)
        out = {"envelope_frechet": self.distance(real, fake)}
        even, odd = (self.vectors(self.notes["real"][i::2]) for i in (0, 1))
        if len(even) >= 2 and len(odd) >= 2:  # halves by alternating items, whatever the data's order
            out["envelope_frechet_real_floor"] = self.distance(even, odd)
        for s in SETS:
            notes = np.concatenate(self.notes[s])
            for j, f in enumerate(FEATURES):
                out[f"envelope_{f}_{s}"] = float(np.median(np.clip(notes[:, j], *CLIP[f])))
            out[f"envelope_notes_per_s_{s}"] = len(notes) / self.seconds[s]
        return out


@hookimpl
def register_metrics(register):
    register("envelope", Envelope)
