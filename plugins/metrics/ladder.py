"""Pass criteria for the learning ladder (one stationary sine per clip -> a sine on a semitone grid -> single piano
notes): metrics that a generator which learned only loudness and spectral tilt cannot pass.

``peak_concentration``: how much of a clip's energy sits at one frequency. E[k], the MDCT energy per bin summed over
channels and blocks; the share of E within +-``radius`` bins of its peak (``peak_conc_{real,fake}``, mean over
clips), and the same per block on the channel-summed energies of each block, averaged over the clip's blocks
(``peak_conc_block_{real,fake}``). Energies, never signed coefficients: a stationary sine's MDCT coefficient
oscillates from block to block, but ~99 % of each block's energy stays within +-1 bin of it. A sine scores ~0.99;
noise shaped like the data's spectrum (:func:`loudness_tilt_baseline`) spreads over every bin the data uses.

``pitch_histogram``: whether the generator plays the data's pitches in the data's proportions. Each clip gives one
value, its peak MDCT bin (``mode: peak_bin``) or its best semitone fundamental from the harmonic fit below
(``mode: key``); ``pitch_tv`` is the total-variation distance (half the L1 distance, 0..1) between the real and
generated histograms of these values over the evaluation, ``pitch_distinct_{real,fake}`` counts the distinct values.
A generator that plays one tone whatever its input scores ``1 - 1/p`` or more against p equally likely real
pitches. ``pitch_tv_real_floor`` is the same distance between the even and the odd real items: two sets of n/2
clips, so it estimates the sampling noise of sets half as large as the ones ``pitch_tv`` compares, an upper-ish
bound of what a perfect generator would score (at n = 64 and 8 equally likely pitches: ~0.26 against ~0.19).

``harmonic_concentration``: how much of a clip's energy is one harmonic tone (for notes). Per clip, the power
spectrum |rfft(x * hann)|^2 averaged over channels (whole clip, or Welch-averaged frames of ``fft`` samples); for
every candidate fundamental f0 on the semitone grid (MIDI ``min_key..max_key``, 440 Hz at key 69) the share of
the clip's energy above 20 Hz that falls within +-``width`` * h f0 of its harmonics h f0, h = 1..``harmonics``
below Nyquist (each window at least +-1 FFT bin). The clip's value is the largest share, its key the candidate's
(``harmonic_conc_{real,fake}``: mean over clips). All candidates at once: a (keys, frequencies) 0/1 mask times the
clips' power spectra.

:func:`loudness_tilt_baseline` and :func:`baseline_audio` make the reference these metrics must separate from the
data: Gaussian MDCT coefficients with the data's RMS per (block, bin), i.e. its loudness, tilt and decay envelope
and nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor

from framework import hookimpl
from framework.protocols import DataInfo, Metric
from framework.runtime import no_autocast
from plugins.representations.mdct import MDCT

SILENT_BLOCK = 1e-6  # a block with less than this share of its clip's loudest block's energy is a silence tail:
# its "peak" is rounding noise, and counting it would make a decaying note look less tonal than it is
LOWEST_HZ = 20.0  # energy below is DC offset and rumble, not pitch: left out of the harmonic shares' denominator
OCTAVE_TOLERANCE = 0.02  # harmonic fit: the highest candidate whose share is within this of the best wins (below)
SETS = ("real", "fake")


def _check(ok: bool, field: str, message: str) -> None:
    """A spec error names the field as written in the spec (the build prefixes the metric's name)."""
    if not ok:
        raise ValueError(f"metrics.N.params.{field} {message} (N: this metric's position in metrics:)")


def _check_audio(data_info: DataInfo, name: str, sample_rate: bool = False) -> None:
    need = "audio data (B, C, T)" + (" with data_info.sample_rate set" if sample_rate else "")
    if data_info.kind != "audio" or (sample_rate and data_info.sample_rate is None):
        raise ValueError(f"{name} needs {need}, got {data_info.kind!r} items with sample_rate "
                         f"{data_info.sample_rate}; use a dataset that gives {need}, or remove '{name}' from metrics:")


def _check_bins(bins: int) -> None:
    _check(bins >= 2 and bins % 2 == 0, "bins", f"must be an even integer >= 2 (the analysis MDCT's bins), got {bins}")


def mdct_energy(mdct: MDCT, x: Tensor) -> Tensor:  # (B, C, T) -> (B, N, K), N = T // K + 1, float32
    """MDCT energy per (block, bin), summed over channels; T cropped to a multiple of K (as the audio metrics do)."""
    t = x.shape[-1] - x.shape[-1] % mdct.bins
    with no_autocast():
        return mdct(x[..., :t].float()).square().sum(1)


def concentration(energy: Tensor, radius: int) -> Tensor:  # (..., K) -> (...)
    """Share of the energy within +-``radius`` bins of its largest bin; 0 where there is no energy."""
    peak = energy.argmax(-1, keepdim=True)
    near = (torch.arange(energy.shape[-1], device=energy.device) - peak).abs() <= radius
    return (energy * near).sum(-1) / energy.sum(-1).clamp_min(torch.finfo(energy.dtype).tiny)


def _tv(a: Tensor, b: Tensor) -> float:  # (n,), (m,) int64 values >= 0
    """Total-variation distance between the value histograms of two sets (0: same proportions, 1: disjoint)."""
    size = int(max(a.max(), b.max())) + 1
    pa, pb = (torch.bincount(v, minlength=size).double() / len(v) for v in (a, b))
    return float(0.5 * (pa - pb).abs().sum())


class PeakConcentration(Metric):
    higher_is_better = {"peak_conc_fake": True, "peak_conc_block_fake": True}
    @dataclasses.dataclass(frozen=True)
    class Params:
        bins: int = 32  # K of the analysis MDCT: 344 Hz per bin at 22016 Hz, coarse enough that one sine is one peak
        radius: int = 1  # bins each side of the peak that still count as the peak

    def __init__(self, params: "PeakConcentration.Params", *, representation, data_info: DataInfo, runtime):
        _check_audio(data_info, "peak_concentration")
        _check_bins(params.bins)
        _check(params.radius >= 0, "radius", f"must be >= 0 (bins each side of the peak), got {params.radius}")
        self.params = params
        self.mdct = MDCT(params.bins, check_finite=False).to(runtime.device)  # no NaN scan: it syncs the device
        self.reset()

    def reset(self) -> None:
        self.sums = {f"peak_conc{kind}_{s}": 0.0 for kind in ("", "_block") for s in SETS}
        self.counts = dict.fromkeys(SETS, 0)

    def update(self, real: Tensor, fake: Tensor) -> None:  # (B, C, T) each
        for s, x in zip(SETS, (real, fake)):
            energy = mdct_energy(self.mdct, x)  # (B, N, K)
            clip = concentration(energy.sum(1), self.params.radius)  # (B,)
            loudness = energy.sum(-1)  # (B, N)
            audible = (loudness > 0) & (loudness >= SILENT_BLOCK * loudness.amax(-1, keepdim=True))
            # each audible block weighs the same, whatever its loudness; a clip without any scores 0
            block = (concentration(energy, self.params.radius) * audible).sum(-1) / audible.sum(-1).clamp_min(1)
            self.sums[f"peak_conc_{s}"] += float(clip.double().sum())
            self.sums[f"peak_conc_block_{s}"] += float(block.double().sum())
            self.counts[s] += x.shape[0]

    def compute(self) -> dict[str, float]:
        if not all(self.counts.values()):
            raise ValueError("peak_concentration: compute() before any update()")
        return {k: v / self.counts[k.rsplit("_", 1)[1]] for k, v in self.sums.items()}


@dataclasses.dataclass(frozen=True)
class HarmonicParams:
    min_key: int = 36  # lowest candidate fundamental, MIDI key (36: C2, 65.4 Hz)
    max_key: int = 96  # highest candidate fundamental, MIDI key (96: C7, 2093 Hz)
    harmonics: int = 8  # windows at h f0 for h = 1..harmonics (those below Nyquist)
    # Relative half-width of each window: +-2 % is +-34 cents, a third of a semitone. It holds a fundamental
    # detuned (stretch tuning) by up to a third of a semitone and a piano's sharpened partials (h sqrt(1 + B h^2)
    # f0) up to h = 8 for inharmonicity B <= 6e-4 (bass and mid range), while neighbouring keys' fundamental
    # windows keep a gap. Wider windows let noise score more (white noise's best share grows ~ with width) and let
    # low candidates catch a note's partials by coincidence: on 128 rendered piano notes (keys 48-84, candidates
    # 36-96) 0.02 found the key of 90 % of them and 0.03 (half a semitone) of 73 %, at about the same real share.
    width: float = 0.02
    fft: int = 0  # 0: one spectrum of the whole clip; else frames of fft samples (hop fft/2), power-averaged


class HarmonicFit:
    """The best semitone fundamental of each clip: ``(B, C, T)`` audio -> share ``(B,)`` float32, key ``(B,)`` int64.

    Candidates: ``keys`` with f0 = 440 * 2^((key - 69) / 12). Octave errors: a candidate an octave (a twelfth, ...)
    below the true f0 covers the true harmonics with its even (every third, ...) harmonics, so for a pure sine every
    subharmonic candidate ties with the true one; the highest candidate within ``OCTAVE_TOLERANCE`` of the best
    share wins. A candidate an octave above covers only the even harmonics, far less for real notes, so the rule
    does not jump up. Clips too short to resolve a semitone (windows of +-1 FFT bin overlapping several keys) get
    the highest of the overlapping keys; silent clips share 0 and get ``max_key``.
    """

    def __init__(self, params: HarmonicParams, data_info: DataInfo, device: torch.device, name: str):
        _check_audio(data_info, name, sample_rate=True)
        _check(params.min_key <= params.max_key, "min_key",
               f"must be <= max_key, got min_key {params.min_key} > max_key {params.max_key}")
        self.rate = data_info.sample_rate
        self.keys = torch.arange(params.min_key, params.max_key + 1)
        self.f0 = 440.0 * 2.0 ** ((self.keys.double() - 69) / 12)  # (P,) Hz
        _check(float(self.f0[-1]) < self.rate / 2, "max_key",
               f"must have its fundamental below Nyquist ({self.rate / 2:g} Hz), got key {params.max_key} "
               f"({float(self.f0[-1]):.0f} Hz); lower max_key")
        _check(params.harmonics >= 1, "harmonics", f"must be >= 1, got {params.harmonics}")
        _check(0 < params.width < 0.5, "width", f"must be in (0, 0.5) (relative half-width), got {params.width}")
        _check(params.fft == 0 or 2 <= params.fft <= data_info.shape[-1], "fft",
               f"must be 0 (whole clip) or 2..T = {data_info.shape[-1]} samples, got {params.fft}")
        self.params, self.device = params, device
        self._analysis: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # frame length -> window, audible, mask

    def analysis(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Hann window (n,), audible bins (F,) bool and the candidates' harmonic masks (P, F) float32 for frames of
        n samples, F = n // 2 + 1 (built once per frame length, on the metric's device)."""
        if n not in self._analysis:
            p = self.params
            freqs = torch.fft.rfftfreq(n, 1.0 / self.rate, dtype=torch.float64)  # (F,) Hz
            centre = self.f0[:, None] * torch.arange(1, p.harmonics + 1)  # (P, H) Hz
            half = (p.width * centre).clamp_min(self.rate / n)  # at least +-1 FFT bin: a Hann line is 3 bins wide
            mask = torch.zeros(len(self.f0), len(freqs), dtype=torch.bool)
            for h in range(p.harmonics):  # H (P, F) comparisons rather than one (P, H, F) tensor
                c = centre[:, h:h + 1]
                mask |= ((freqs - c).abs() <= half[:, h:h + 1]) & (c < self.rate / 2)
            audible = freqs >= LOWEST_HZ
            self._analysis[n] = (torch.hann_window(n, device=self.device), audible.to(self.device),
                                 (mask & audible).float().to(self.device))
        return self._analysis[n]

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (B, C, T) -> (B,), (B,)
        n = self.params.fft or x.shape[-1]
        window, audible, mask = self.analysis(n)
        with no_autocast():
            frames = x.float().unfold(-1, n, n // 2)  # (B, C, frames, n); one frame when n == T
            power = torch.fft.rfft(frames * window).abs().square().mean((1, 2))  # (B, F), channels averaged
            total = (power * audible).sum(-1, keepdim=True)  # (B, 1)
            share = power @ mask.T / total.clamp_min(torch.finfo(power.dtype).tiny)  # (B, P); 0 for silence
        best = share.amax(-1)  # (B,)
        close = share >= best[:, None] - OCTAVE_TOLERANCE  # (B, P)
        index = torch.where(close, torch.arange(share.shape[-1], device=share.device), -1).amax(-1)
        return best, self.keys.to(share.device)[index]


class PitchHistogram(Metric):
    higher_is_better = {"pitch_tv": False}
    @dataclasses.dataclass(frozen=True)
    class Params(HarmonicParams):  # the harmonic fit's params are used in mode "key" only
        bins: int = 32  # analysis MDCT bins for mode "peak_bin"
        mode: Literal["peak_bin", "key"] = "peak_bin"  # per-clip value: peak MDCT bin, or best semitone key

    def __init__(self, params: "PitchHistogram.Params", *, representation, data_info: DataInfo, runtime):
        _check(params.mode in ("peak_bin", "key"), "mode", f"must be 'peak_bin' or 'key', got {params.mode!r}")
        _check_audio(data_info, "pitch_histogram")
        _check_bins(params.bins)
        if params.mode == "key":
            self.fit = HarmonicFit(params, data_info, runtime.device, "pitch_histogram")
        else:
            self.mdct = MDCT(params.bins, check_finite=False).to(runtime.device)
        self.params = params
        self.reset()

    def reset(self) -> None:
        self.values: dict[str, list[Tensor]] = {s: [] for s in SETS}  # per-clip values, in evaluation order

    def pitch(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B,) int64, on the CPU
        if self.params.mode == "key":
            return self.fit(x)[1].cpu()
        return mdct_energy(self.mdct, x).sum(1).argmax(-1).cpu()

    def update(self, real: Tensor, fake: Tensor) -> None:  # (B, C, T) each
        for s, x in zip(SETS, (real, fake)):
            self.values[s].append(self.pitch(x))

    def compute(self) -> dict[str, float]:
        if not all(self.values.values()):
            raise ValueError("pitch_histogram: compute() before any update()")
        real, fake = (torch.cat(self.values[s]) for s in SETS)
        out = {"pitch_tv": _tv(real, fake), "pitch_distinct_real": float(len(real.unique())),
               "pitch_distinct_fake": float(len(fake.unique()))}
        if len(real) >= 2:  # even against odd items: a half can hold any pitch, whatever the data's order
            out["pitch_tv_real_floor"] = _tv(real[0::2], real[1::2])
        return out


class HarmonicConcentration(Metric):
    higher_is_better = {"harmonic_conc_fake": True}
    Params = HarmonicParams

    def __init__(self, params: HarmonicParams, *, representation, data_info: DataInfo, runtime):
        self.fit = HarmonicFit(params, data_info, runtime.device, "harmonic_concentration")
        self.reset()

    def reset(self) -> None:
        self.sums = dict.fromkeys(SETS, 0.0)
        self.counts = dict.fromkeys(SETS, 0)

    def update(self, real: Tensor, fake: Tensor) -> None:  # (B, C, T) each
        for s, x in zip(SETS, (real, fake)):
            self.sums[s] += float(self.fit(x)[0].double().sum())
            self.counts[s] += x.shape[0]

    def compute(self) -> dict[str, float]:
        if not all(self.counts.values()):
            raise ValueError("harmonic_concentration: compute() before any update()")
        return {f"harmonic_conc_{s}": self.sums[s] / self.counts[s] for s in SETS}


def loudness_tilt_baseline(real_mdct: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """(B, C, N, K) real MDCT coefficients -> (n, C, N, K): what a generator that learned only loudness and tilt
    makes. Independent Gaussian coefficients whose standard deviation per (block, bin) is the data's RMS there
    (over items and channels): the data's spectrum, tilt and decay envelope, with no pitch and no phase structure.
    ``generator`` must live on ``real_mdct``'s device."""
    rms = real_mdct.square().mean((0, 1)).sqrt()  # (N, K)
    noise = torch.randn(n, *real_mdct.shape[1:], generator=generator, device=real_mdct.device, dtype=real_mdct.dtype)
    return noise * rms


def baseline_audio(real_audio: Tensor, bins: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """(B, C, T) real audio -> (n, C, T') audio of :func:`loudness_tilt_baseline` at ``bins`` MDCT bins, T' = T cropped
    to a multiple of bins, decoded as the ``mdct`` representation decodes (inverse, [K:K + T'], clamp to [-1, 1])."""
    mdct = MDCT(bins, check_finite=False).to(real_audio.device)
    t = real_audio.shape[-1] - real_audio.shape[-1] % bins
    with no_autocast():
        z = loudness_tilt_baseline(mdct(real_audio[..., :t].float()), n, generator)
        return mdct.inverse(z)[..., bins:bins + t].clamp(-1.0, 1.0)


@hookimpl
def register_metrics(register):
    register("peak_concentration", PeakConcentration)
    register("pitch_histogram", PitchHistogram)
    register("harmonic_concentration", HarmonicConcentration)
