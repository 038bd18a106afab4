"""``python -m framework analyze AUDIO_FILE``: MDCT + psychoacoustic analysis of an audio file.

Holds the ``analyze`` command (registered through ``register_commands``, so the core never imports audio code):
read an excerpt of any wav/flac/ogg/mp3 at MP3net's 22016 Hz (mono duplicated to stereo), take the MDCT
(128 bins, vorbis) and the psychoacoustic masking threshold (drown 0, as MP3net), and write

* figures (time in s from the file's start, frequency in Hz; channel 0): ``mdct_signed_db.png`` (the signed,
  dB-scaled MDCT, sign(X) * (dB(|X|) + 20) / 140, the form MP3net's networks are shown in spectrogram
  summaries), ``spectrogram.png`` (A^2 = X^2 in dB), ``masking_threshold.png`` (threshold^2 in dB),
  ``surviving.png`` (X^2 where |X| >= threshold, blank where masked) and ``masked_per_band.png``;
* a compression report, printed and saved as ``report.json`` and ``report.md``:
  - the fraction of coefficients below the masking threshold (|X| < threshold), overall and per Bark band
    (a bin belongs to the band its centre frequency falls in);
  - a perceptual-entropy estimate in bits per coefficient, after Johnston (1988, "Estimation of perceptual
    entropy using noise masking criteria", Proc. ICASSP, eq. for PE), adapted to real MDCT coefficients:
    each coefficient is quantised uniformly with step  delta = sqrt(12) * threshold, so that the quantisation
    noise power delta^2 / 12 equals the masked noise power threshold^2 (the threshold is an amplitude whose
    square is that coefficient's share of its band's masking intensity), and costs
    log2(2 |nint(X / delta)| + 1) bits (sign and magnitude levels; 0 bits when the coefficient rounds to 0).
    PE is the mean over all coefficients (C N K). It is a lower bound on the bits an ideal entropy coder needs
    at that noise level, without side information, so the implied ratio is an upper bound;
  - the implied compression ratio against 16-bit PCM: 16 * C * T bits over PE * C * N * K bits (T the analysed
    samples, N = T / K + 1 blocks);
  - the SNR (dB) of the audio after adding MP3net's psychoacoustic noise (X + threshold * N(0, 1) / 6, then the
    inverse MDCT), 10 log10(sum x^2 / sum (x_noisy - x)^2) in the time domain, with the noise seed. Its
    expected value is 10 log10(36 sum X^2 / sum threshold^2) (the MDCT scaled by 2 sqrt(K) is orthonormal).

Not here: the transforms themselves (mdct.py, psychoacoustic.py) and any training-time use.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from framework import hookimpl
from framework.errors import DataError
from plugins.common.audio_io import audio_info, read_audio
from plugins.representations.mdct import MDCT
from plugins.representations.psychoacoustic import PsychoacousticModel, bark, bark_to_hz

SAMPLE_RATE = 22016  # MP3net: 128 bins x 172 blocks/s
BINS = 128
BARK_BANDS = 24
PCM_BITS = 16
FIGURES = ("mdct_signed_db.png", "spectrogram.png", "masking_threshold.png", "surviving.png", "masked_per_band.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio_file", metavar="AUDIO_FILE", help="wav/flac/ogg/mp3 file (mono is duplicated)")
    parser.add_argument("--start", type=float, default=0.0, metavar="S", help="excerpt start in seconds (0)")
    parser.add_argument("--seconds", type=float, default=96.0, help="excerpt length in seconds (96)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: outputs/analyze/<file stem>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the psychoacoustic noise for the SNR (0)")


def perceptual_entropy(X: Tensor, threshold: Tensor) -> Tensor:  # (...) -> (...) bits per coefficient
    """Johnston-style PE per coefficient: log2(2 |nint(X / delta)| + 1), delta = sqrt(12) * threshold."""
    levels = torch.round(X.abs() / (math.sqrt(12.0) * threshold))
    return torch.log2(2 * levels + 1)


def band_of_bins(sample_rate: int, bins: int, bands: int) -> np.ndarray:  # (K,) band index of each bin
    """Bark band (of the psychoacoustic model's equal-width Bark grid) containing each bin's centre frequency."""
    f_max = sample_rate / 2
    centre = (np.arange(bins) + 0.5) * f_max / bins
    return np.minimum((bark(centre) / (bark(f_max) / bands)).astype(int), bands - 1)


def masked_per_band(masked: Tensor, sample_rate: int, bark_bands: int) -> list[dict]:
    """Fraction of masked coefficients per Bark band, from a (C, N, K) boolean mask (None for a band without bins)."""
    bands = band_of_bins(sample_rate, masked.shape[-1], bark_bands)
    edges = bark_to_hz(np.arange(bark_bands + 1) * bark(sample_rate / 2) / bark_bands)
    rows = []
    for j in range(bark_bands):
        sel = torch.from_numpy(bands == j)
        count = int(sel.sum())
        rows.append({"band": j, "low_hz": round(float(edges[j]), 1), "high_hz": round(float(edges[j + 1]), 1),
                     "bins": count, "masked_fraction": masked[..., sel].double().mean().item() if count else None})
    return rows


def analyze_signal(x: Tensor, sample_rate: int = SAMPLE_RATE, bins: int = BINS, bark_bands: int = BARK_BANDS,
                   seed: int = 0) -> dict:
    """The report's numbers and the arrays the figures show, for audio ``x`` (C, T), T a multiple of ``bins``.

    Computed in float64 (a measurement, not a training step). Returns a dict with ``report`` (JSON-ready) and
    ``arrays`` (X, threshold: (C, N, K) tensors).
    """
    if x.dim() != 2 or x.shape[-1] % bins or x.shape[-1] == 0:
        raise DataError(f"analyze: expected audio (C, T) with T a positive multiple of {bins}, got {tuple(x.shape)}")
    x = x.double()
    mdct = MDCT(bins)
    pam = PsychoacousticModel(sample_rate, bins, bark_bands)
    X = mdct(x[None])[0]  # (C, T) -> (C, N, K)
    threshold = pam.masking_threshold(X[None])[0]  # (C, N, K), drown 0 as MP3net
    C, N, K = X.shape
    T = x.shape[-1]
    masked = X.abs() < threshold
    bits = perceptual_entropy(X, threshold)
    pe = bits.mean().item()
    noise = torch.randn(X.shape, generator=torch.Generator().manual_seed(seed), dtype=X.dtype)
    x_noisy = mdct.inverse((X + threshold * noise / 6)[None])[0, :, K:K + T]
    error = (x_noisy - x).pow(2).sum().item()
    signal = x.pow(2).sum().item()
    per_band = masked_per_band(masked, sample_rate, bark_bands)
    pe_bits = bits.sum().item()
    report = {
        "sample_rate": sample_rate, "channels": C, "bins": K, "blocks": N, "samples": T,
        "seconds": T / sample_rate, "coefficients": C * N * K,
        "masked_fraction": masked.double().mean().item(),
        "masked_fraction_per_band": per_band,
        "mean_tonality": pam.tonality(X[None]).mean().item(),
        "perceptual_entropy_bits_per_coefficient": pe,
        "perceptual_entropy_kbit_per_s": pe_bits / (T / sample_rate) / 1000,
        "pcm16_kbit_per_s": PCM_BITS * C * sample_rate / 1000,
        "compression_ratio_vs_pcm16": PCM_BITS * C * T / pe_bits if pe_bits > 0 else None,
        "snr_db_psychoacoustic_noise": 10 * math.log10(signal / error) if signal > 0 and error > 0 else None,
        "snr_db_expected": (10 * math.log10(36 * X.pow(2).sum().item() / threshold.pow(2).sum().item())
                            if signal > 0 else None),
        "noise_seed": seed,
    }
    return {"report": report, "arrays": {"X": X, "threshold": threshold}}


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def report_markdown(report: dict) -> str:
    r = report
    ratio = _fmt(r["compression_ratio_vs_pcm16"], ".1f") + " : 1" if r["compression_ratio_vs_pcm16"] else \
        "n/a (silent: 0 bits)"
    lines = [
        f"# MDCT + psychoacoustic analysis: {r['file']}",
        "",
        f"Excerpt {r['start_s']:.2f} s + {r['seconds']:.2f} s at {r['sample_rate']} Hz, {r['channels']} channels "
        f"(source: {r['source_channels']} channel(s) at {r['source_sample_rate']} Hz), {r['blocks']} blocks x "
        f"{r['bins']} bins = {r['coefficients']} coefficients; masking threshold with drown 0 (MP3net).",
        "",
        "| quantity | value |",
        "| --- | --- |",
        f"| coefficients below the masking threshold | {100 * r['masked_fraction']:.1f} % |",
        f"| perceptual entropy (Johnston 1988, step sqrt(12) * threshold) | "
        f"{r['perceptual_entropy_bits_per_coefficient']:.3f} bits/coefficient "
        f"({r['perceptual_entropy_kbit_per_s']:.1f} kbit/s) |",
        f"| 16-bit PCM | {r['pcm16_kbit_per_s']:.1f} kbit/s |",
        f"| implied compression ratio vs 16-bit PCM (upper bound: no side info) | {ratio} |",
        f"| SNR after psychoacoustic noise (threshold * N(0,1) / 6, seed {r['noise_seed']}) | "
        f"{_fmt(r['snr_db_psychoacoustic_noise'], '.1f')} dB (expected {_fmt(r['snr_db_expected'], '.1f')} dB) |",
        f"| mean tonality (1 tone, 0.09 white noise) | {r['mean_tonality']:.3f} |",
        "",
        "Masked fraction per Bark band (bins whose centre frequency lies in the band):",
        "",
        "| band | Hz | bins | masked |",
        "| ---: | --- | ---: | ---: |",
    ]
    for b in r["masked_fraction_per_band"]:
        frac = "n/a" if b["masked_fraction"] is None else f"{100 * b['masked_fraction']:.1f} %"
        lines.append(f"| {b['band']} | {b['low_hz']:.0f}-{b['high_hz']:.0f} | {b['bins']} | {frac} |")
    return "\n".join(lines) + "\n"


def write_figures(out: Path, X: Tensor, threshold: Tensor, sample_rate: int, start_s: float) -> list[str]:
    """The five PNGs of channel 0 (matplotlib Agg). X, threshold: (C, N, K)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X0, thr0 = X[0].double(), threshold[0].double()  # (N, K)
    N, K = X0.shape
    hop = K / sample_rate
    # block n covers samples [(n - 1) K, (n + 1) K) of the excerpt: centred on sample n K
    extent = (start_s - hop / 2, start_s + (N - 0.5) * hop, 0.0, sample_rate / 2)
    db = PsychoacousticModel.amplitude_to_db
    level = db(X0)
    vmax = math.ceil(level.max().item() / 10) * 10
    vmin = vmax - 120  # 120 dB of range: the model's amplitude floor (1e-7) is -20 dB
    images = [
        ("mdct_signed_db.png", "MDCT, signed and dB-scaled: sign(X) (dB(|X|) + 20) / 140",
         (torch.sign(X0) * PsychoacousticModel.amplitude_to_db_norm(X0)).numpy(), "RdBu_r", -1.0, 1.0, ""),
        ("spectrogram.png", "Spectrogram A² = X² (dB)", level.numpy(), "magma", vmin, vmax, "dB"),
        ("masking_threshold.png", "Masking threshold² (dB), drown 0", db(thr0).numpy(), "magma", vmin, vmax, "dB"),
        ("surviving.png", "Coefficients at or above the masking threshold (X², dB; blank: masked)",
         np.where((X0.abs() >= thr0).numpy(), level.numpy(), np.nan), "magma", vmin, vmax, "dB"),
    ]
    written = []
    for name, title, data, cmap, lo, hi, unit in images:
        fig, ax = plt.subplots(figsize=(12, 4.5), dpi=100)
        # signs alternate from block to block: averaging pixels (antialiasing) would cancel them to grey
        im = ax.imshow(data.T, origin="lower", aspect="auto", extent=extent, cmap=cmap, vmin=lo, vmax=hi,
                       interpolation="nearest" if lo < 0 else "antialiased")
        ax.set(title=title + " — channel 0", xlabel="time (s)", ylabel="frequency (Hz)")
        fig.colorbar(im, ax=ax, label=unit, pad=0.01)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(name)
    return written


def write_band_figure(out: Path, per_band: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=100)
    fracs = [100 * (b["masked_fraction"] or 0.0) for b in per_band]
    ax.bar([b["band"] for b in per_band], fracs, width=0.85)
    ax.set_xticks([b["band"] for b in per_band],
                  [f"{b['low_hz']:.0f}-{b['high_hz']:.0f}" for b in per_band], rotation=60, fontsize=7)
    ax.set(xlabel="Bark band (Hz)", ylabel="masked coefficients (%)", ylim=(0, 100),
           title="Coefficients below the masking threshold, per Bark band (both channels)")
    fig.tight_layout()
    fig.savefig(out / "masked_per_band.png")
    plt.close(fig)
    return "masked_per_band.png"


def run(args: argparse.Namespace) -> int:
    path = Path(args.audio_file)
    if args.seconds <= 0 or args.start < 0:
        raise DataError(f"analyze: --start must be >= 0 and --seconds > 0, got --start {args.start} "
                        f"--seconds {args.seconds}")
    x = read_audio(path, SAMPLE_RATE, start_s=args.start, seconds=args.seconds)  # (2, T), checks the file
    source_rate, source_channels, _ = audio_info(path)
    x = torch.nn.functional.pad(x, (0, -x.shape[-1] % BINS))  # T -> a multiple of K (zeros at the end)
    result = analyze_signal(x, SAMPLE_RATE, BINS, BARK_BANDS, seed=getattr(args, "seed", 0))
    out = Path(args.out) if args.out else Path("outputs") / "analyze" / path.stem
    out.mkdir(parents=True, exist_ok=True)
    report = {"file": str(path), "start_s": args.start, "source_sample_rate": source_rate,
              "source_channels": source_channels, **result["report"]}
    arrays = result["arrays"]
    report["figures"] = write_figures(out, arrays["X"], arrays["threshold"], SAMPLE_RATE, args.start) + \
        [write_band_figure(out, report["masked_fraction_per_band"])]
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    text = report_markdown(report)
    (out / "report.md").write_text(text + "\n" + "\n".join(f"![{f}]({f})" for f in report["figures"]) + "\n")
    print(text)
    print(f"wrote report.json, report.md and {len(report['figures'])} figures to {out}/")
    return 0


@hookimpl
def register_commands(register):
    register("analyze", run, add_arguments, "MDCT + psychoacoustic analysis of an audio file")
