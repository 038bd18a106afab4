"""Speed of the MDCT (forward + inverse) and the psychoacoustic model on 96 s of stereo audio at 22016 Hz.

A plain script that prints a table: our MDCT (plugins/representations/mdct.py; float32 and float64) against the
`mdct` package 0.4 (numpy/scipy, float64, sine window; imported through the numpy-2 patch in
tests/plugins/mdct_compat.py) and against the plain framing form of the same transform (``unfold`` into 2K
frames, one (2K, K) matmul) in the same run, and ``masking_threshold`` + ``add_noise`` on the same input.
Each number is the median wall time of ``--repeats`` runs after one warm-up run.

    python benchmarks/bench_mdct.py [--repeats 7] [--threads N] [--device cpu|cuda] [--seconds 96]
    python benchmarks/bench_mdct.py --fidelity   # worst error / tolerance per quantity vs the reference vectors

Not here: the pass/fail checks (tests/plugins/test_mdct.py, test_psychoacoustic.py assert what --fidelity prints).
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.representations.mdct import MDCT  # noqa: E402
from plugins.representations.psychoacoustic import PsychoacousticModel  # noqa: E402

SAMPLE_RATE, BINS = 22016, 128


def median_ms(fn, repeats: int, sync=lambda: None) -> tuple[float, float]:
    """(median, min) wall time in ms; the min is the robust figure on a machine shared with other jobs."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), 1000 * min(times)


def unfold_forward(m: MDCT, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, N, K), the plain form
    K = m.bins
    basis = torch.cat([m.analysis[:, K:], m.analysis[:, :K]], 0).to(x.dtype)  # (2K, K) windowed cosines
    return torch.nn.functional.pad(x, (K, K)).unfold(-1, 2 * K, K) @ basis


def fidelity() -> int:
    """Worst max|ours - reference| / tolerance over the reference arrays, per quantity and dtype (README tolerances)."""
    from tests.plugins.reference import mdct_domain, names, ref, signal

    dtypes = {"f64": torch.float64, "f32": torch.float32}
    worst: dict[str, tuple[float, str]] = {}

    def score(key: str, ours: torch.Tensor, dt: str, quantity: str) -> None:
        r = ref(key).astype(np.float64)
        tol = 1e-12 + 1e-9 * np.abs(r).max() if dt == "f64" else 1e-7 + 5e-6 * np.abs(r).max()
        q = float(np.abs(ours.detach().double().numpy() - r).max() / tol)
        if q >= worst.get(f"{quantity} {dt}", (-1.0, ""))[0]:
            worst[f"{quantity} {dt}"] = (q, key)

    for key in names():
        if m := re.fullmatch(r"(\w+?)__(i?mdct)(\d+)__(f\d\d)", key):
            case, q, K, dt = m.groups()
            t = MDCT(int(K))
            if q == "mdct":
                score(key, t(signal(f"{case}__input", dtypes[dt])).permute(0, 2, 3, 1), dt, "mdct")
            else:
                score(key, t.inverse(mdct_domain(f"{case}__mdct{K}__{dt}", dtypes[dt])).permute(0, 2, 1), dt, "imdct")
        elif (m := re.fullmatch(r"(\w+?)__pa(\d+)__(\w+?)__(f\d\d)", key)) and key != "silence__pa128__tonality__f32":
            case, K, q, dt = m.groups()
            pam = PsychoacousticModel(SAMPLE_RATE, int(K))
            src = f"{case}__mdct{K}__{dt}"
            X = mdct_domain(src if src in names() else f"{case}__input", dtypes[dt])
            drown = float(q[-3:].replace("p", ".")) if "drown" in q else 0.0
            if q == "tonality":
                out = pam.tonality(X)
            elif q.startswith("mask_"):
                out = pam.masking_threshold(X, drown)
            elif q == "bark_intensity":
                out = pam.bark_intensity(X)
            elif q.startswith("masking_intensity_bark"):
                out = pam.masking_intensity_bark(X, pam.tonality(X), drown)
            else:
                out = pam.filter(X, mdct_domain(f"{case}__pa{K}__mask_drown0p0__{dt}", dtypes[dt]))
            score(key, out.permute(0, 2, 3, 1), dt, re.sub(r"_drown\dp\d|_mg\d+", "", q))
    print("| quantity | worst error / tolerance | array |\n| --- | ---: | --- |")
    for name, (q, key) in sorted(worst.items()):
        print(f"| {name} | {q:.2g} | {key} |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=96.0)
    p.add_argument("--fidelity", action="store_true", help="print accuracy against the reference vectors instead")
    args = p.parse_args()
    if args.fidelity:
        return fidelity()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False

    T = int(args.seconds * SAMPLE_RATE) // BINS * BINS
    rng = np.random.default_rng(0)
    x_np = rng.uniform(-1, 1, (T, 2))  # (T, C), the `mdct` package's layout
    rows: list[tuple[str, tuple[float, float]]] = []

    for dtype in (torch.float32, torch.float64):
        m = MDCT(BINS, check_finite=False).to(device)
        x = torch.from_numpy(x_np.T.copy()).to(device, dtype)[None]  # (1, 2, T)
        X = m(x)
        name = f"ours {str(dtype).replace('torch.', '')} {device.type}"
        rows.append((f"{name}: forward", median_ms(lambda: m(x), args.repeats, sync)))
        rows.append((f"{name}: inverse", median_ms(lambda: m.inverse(X), args.repeats, sync)))
        rows.append((f"{name}: forward + inverse", median_ms(lambda: m.inverse(m(x)), args.repeats, sync)))
        rows.append((f"{name}: forward, plain unfold form",
                     median_ms(lambda: unfold_forward(m, x), args.repeats, sync)))

    baseline = None
    try:
        from tests.plugins.mdct_compat import import_mdct

        mdct_pkg = import_mdct()
        Xp = mdct_pkg.mdct(x_np, framelength=2 * BINS)
        rows.append(("mdct 0.4 (numpy float64, cpu): forward",
                     median_ms(lambda: mdct_pkg.mdct(x_np, framelength=2 * BINS), args.repeats)))
        rows.append(("mdct 0.4 (numpy float64, cpu): inverse",
                     median_ms(lambda: mdct_pkg.imdct(Xp, framelength=2 * BINS), args.repeats)))
        baseline = median_ms(lambda: mdct_pkg.imdct(mdct_pkg.mdct(x_np, framelength=2 * BINS), framelength=2 * BINS),
                             args.repeats)
        rows.append(("mdct 0.4 (numpy float64, cpu): forward + inverse", baseline))
    except ImportError:
        print("(the `mdct` package is not installed: pip install mdct==0.4; baseline skipped)")

    for dtype in (torch.float32, torch.float64):
        pam = PsychoacousticModel(SAMPLE_RATE, BINS, check_finite=False).to(device)
        X = MDCT(BINS).to(device)(torch.from_numpy(x_np.T.copy()).to(device, dtype)[None])
        gen = torch.Generator(device=device).manual_seed(0)
        rows.append((f"psychoacoustic {str(dtype).replace('torch.', '')} {device.type}: masking_threshold + add_noise",
                     median_ms(lambda: pam.add_noise(X, pam.masking_threshold(X), generator=gen), args.repeats, sync)))

    print(f"input: {args.seconds:g} s stereo at {SAMPLE_RATE} Hz = 2 x {T} samples -> 2 x {T // BINS + 1} x {BINS} "
          f"MDCT coefficients; median of {args.repeats} runs after 1 warm-up")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}"
          + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'what':<{width}} | median (ms) | min (ms) | speed-up vs mdct 0.4 fwd+inv (median) |")
    print(f"| {'-' * width} | ---: | ---: | ---: |")
    for name, (med, low) in rows:
        speedup = f"{baseline[0] / med:.1f}x" if baseline and "forward + inverse" in name else ""
        print(f"| {name:<{width}} | {med:.1f} | {low:.1f} | {speedup} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
