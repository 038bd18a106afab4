"""Sample artifacts people look at: image grids for image data; wav files plus spectrogram PNGs for audio.

The core only knows the two data kinds of :class:`framework.protocols.DataInfo`; how the items were made
(which representation, which model) is not its concern. Plots use matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from framework.protocols import DataInfo


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(x: Tensor, path: Path, columns: int | None = None) -> Path:
    """Save ``(B, C, H, W)`` images in [-1, 1] as one PNG grid."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    b, c, h, w = x.shape
    cols = columns or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.ones((rows * (h + 2), cols * (w + 2), c), dtype=np.float32)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = x[i].transpose(1, 2, 0)
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    return path


def spectrogram_png(x: Tensor, sample_rate: int, path: Path, title: str = "") -> Path:
    """Log-power STFT spectrogram of ``(C, T)`` audio, one panel per channel, time in s, frequency in Hz."""
    plt = pyplot()
    x = x.detach().float().cpu()
    n_fft = min(1024, 2 ** int(math.log2(max(x.shape[1] - 1, 2))))  # short clips: reflect padding must fit
    window = torch.hann_window(n_fft)
    fig, axes = plt.subplots(x.shape[0], 1, figsize=(10, 2.2 * x.shape[0]), squeeze=False, sharex=True)
    for ch, ax in enumerate(axes[:, 0]):
        spec = torch.stft(x[ch], n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs() ** 2
        db = 10 * torch.log10(spec + 1e-10)
        duration = x.shape[1] / sample_rate
        im = ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma",
                       extent=(0, duration, 0, sample_rate / 2), vmin=float(db.max()) - 90, vmax=float(db.max()))
        ax.set_ylabel(f"ch {ch}: Hz")
    axes[-1, 0].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="power (dB)")
    if title:
        axes[0, 0].set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_samples(x: Tensor, info: DataInfo, out_dir: Path, stem: str, labels: list[str] | None = None,
                 columns: int | None = None) -> list[Path]:
    """Write generated items ``(B, *info.shape)`` (data domain) for people to look at or listen to;
    ``columns``: of an image grid (default: square)."""
    out_dir = Path(out_dir)
    if info.kind == "image":
        return [image_grid(x, out_dir / f"{stem}.png", columns)]
    if info.kind == "audio":
        import soundfile as sf

        paths = []
        for i, item in enumerate(x):
            name = f"{stem}_{labels[i] if labels else i}"
            wav = out_dir / f"{name}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav, item.detach().float().clamp(-1, 1).cpu().numpy().T, info.sample_rate, subtype="PCM_16")
            paths += [wav, spectrogram_png(item, info.sample_rate, out_dir / f"{name}.png", title=name)]
        return paths
    raise ValueError(f"no sample writer for data kind {info.kind!r}")


def line_plot(series: dict[str, list[tuple[int, float]]], path: Path, ylabel: str, title: str = "") -> Path:
    """One line per named series of (step, value) pairs."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
