"""What an MP3net run has learned about loudness per frequency: the mean MDCT magnitude of every bin, in dB, for
real clips, the untrained generator and the generators of given checkpoints, as a table and a plot.

    python benchmarks/mdct_level_profile.py runs/RUN_A/checkpoint.pt runs/RUN_B/checkpoint.pt \
        --data data/piano --out docs/figures/mp3net-demo/level_profile.png

On the built-in piano set the real level falls by ~65 dB from below 1.4 kHz to above 5.5 kHz; an untrained
generator is flat (docs/notes/mp3net-small-cpu.md). How far a run has moved from flat towards the real profile is the
difference between hiss and a dark, piano-like timbre. The real clips come from the checkpoint's own dataset
spec (``--data`` overrides its root); the untrained generator is a fresh model of the first checkpoint's spec,
initialised after seeding with the run's seed (the runner's own step-0 weights are not stored, so it need not be
bit-identical to them). "real+noise" is what the critic sees of real clips: the representation's
``critic_view`` adds noise (``mdct_psy``: Gaussian, threshold / 6, spec §2.7), and a generator below that curve
is below what its critic can tell from real data. Numbers are means over ``--n`` items of 20 log10(mean |X|)
with X the generator's MDCT output (B, C, N, K). The last column is the ``shared_energy`` metric of the same items:
the share of their energy that is common to all of them (real clips ~0 %, one fixed clip 100 %).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from framework import checkpoint
from framework.build import build_dataset
from framework.generate import load_model
from plugins.metrics.basic import shared_energy_pct


def level_db(X: torch.Tensor) -> torch.Tensor:  # (B, C, N, K) -> (K,) dB of the mean magnitude per bin
    return 20 * torch.log10(X.abs().mean(dim=(0, 1, 2)).clamp_min(1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint.pt files of runs of one model shape")
    ap.add_argument("--labels", help="comma-separated names for the checkpoints (default: their step)")
    ap.add_argument("--data", help="dataset root (default: the one in the checkpoint's spec)")
    ap.add_argument("--n", type=int, default=16, help="items per curve")
    ap.add_argument("--out", type=Path, help="write the plot here (PNG)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    states = [checkpoint.load(p) for p in args.checkpoints]
    model, rep, info, spec, runtime = load_model(states[0], "cpu")
    if args.data:
        spec.dataset.params = dataclasses.replace(spec.dataset.params, root=args.data)
    ds = build_dataset(spec, "train")
    step = max(len(ds) // args.n, 1)
    real = torch.stack([torch.as_tensor(ds[i * step]) for i in range(args.n)])  # (n, C, T)
    torch.manual_seed(0)
    X = rep.encode(real)
    curves = {"real": level_db(X), "real+noise": level_db(rep.critic_view(X))}
    shared = {"real": shared_energy_pct(X)}

    untrained = load_model(states[0], "cpu", weights=False)[0]  # as initialised from the spec's seed
    torch.manual_seed(0)
    X = untrained.sample(args.n)
    curves["untrained"], shared["untrained"] = level_db(X), shared_energy_pct(X)
    labels = args.labels.split(",") if args.labels else [f"step {s['step']}" for s in states]
    for label, state in zip(labels, states):
        m = load_model(state, "cpu")[0]
        torch.manual_seed(0)
        X = m.sample(args.n)
        curves[label], shared[label] = level_db(X), shared_energy_pct(X)

    k = len(curves["real"])
    lo, hi = slice(0, k // 8), slice(k // 2, k)
    hz = info.sample_rate / 2 / k
    w = max(map(len, curves)) + 2
    print(f"{'':<{w}}{'< %d Hz (dB)' % (k // 8 * hz):>16}{'> %d Hz (dB)' % (k // 2 * hz):>16}{'difference':>12}"
          f"{'shared (%)':>12}")
    for name, c in curves.items():
        a, b = float(c[lo].mean()), float(c[hi].mean())
        common = f"{shared[name]:.1f}" if name in shared else ""
        print(f"{name:<{w}}{a:>16.1f}{b:>16.1f}{a - b:>12.1f}{common:>12}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        freqs = (torch.arange(k) + 0.5) * hz
        fig, ax = plt.subplots(figsize=(10, 4))
        styles = {"real": dict(lw=2.5, color="k"), "real+noise": dict(lw=1.5, color="k", ls=":")}
        for name, c in curves.items():
            ax.plot(freqs, c, label=name, **styles.get(name, dict(lw=1.2)))
        ax.set_xlabel("frequency (Hz)")
        ax.set_ylabel("mean |MDCT| (dB)")
        ax.set_title("level per MDCT bin: real piano vs generators")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=100, bbox_inches="tight")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
