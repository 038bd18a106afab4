"""Look at what an MP3net generator emits: 20 log10 |X| images (MDCT blocks x bins, channel 0) of real clips and of
the generators of given checkpoints, one row each.

    python benchmarks/mdct_images.py runs/RUN_A/checkpoint.pt runs/RUN_B/checkpoint.pt --labels A,B \
        --items 3 --blocks 256 --out docs/figures/mp3net-demo/tones_mdct.png

A tone is a horizontal line in these images (its coefficients alternate in sign from block to block, so the line is
dashed); noise is texture without lines. Real clips come from the first checkpoint's dataset spec (``--data``
overrides its root), item ``i * 37`` of the training split for ``i < --items``; the generators sample after
``torch.manual_seed(0)``. Band levels are not compared here; ``mdct_level_profile.py`` does that.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from framework import checkpoint
from framework.build import build_dataset
from framework.generate import load_model


def log_image(X: torch.Tensor) -> torch.Tensor:  # (N, K) -> (K, N) dB, bins on the vertical axis
    return 20 * torch.log10(X.abs().T.clamp_min(1e-7))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint.pt files of MP3net runs")
    ap.add_argument("--labels", help="comma-separated names for the checkpoints (default: their step)")
    ap.add_argument("--data", help="dataset root (default: the one in the first checkpoint's spec)")
    ap.add_argument("--items", type=int, default=3, help="columns: clips per row")
    ap.add_argument("--blocks", type=int, default=400, help="show the first B MDCT blocks of each clip")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    states = [checkpoint.load(p) for p in args.checkpoints]
    _, rep, info, spec, _ = load_model(states[0], "cpu")
    if args.data:
        spec.dataset.params = dataclasses.replace(spec.dataset.params, root=args.data)
    ds = build_dataset(spec, "train")
    real = torch.stack([torch.as_tensor(ds[(i * 37) % len(ds)]) for i in range(args.items)])  # (n, C, T)
    rows = {"real": rep.encode(real)}  # (n, C, N, K)
    labels = args.labels.split(",") if args.labels else [f"step {s['step']}" for s in states]
    if len(labels) != len(states):
        raise SystemExit(f"--labels names {len(labels)} checkpoints, {len(states)} given")
    for label, state in zip(labels, states):
        m = load_model(state, "cpu")[0]
        torch.manual_seed(0)
        rows[label] = m.sample(args.items)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), args.items, figsize=(4 * args.items, 2.6 * len(rows)), squeeze=False)
    for r, (name, X) in enumerate(rows.items()):
        for j in range(args.items):
            ax = axes[r, j]
            im = ax.imshow(log_image(X[j, 0, :args.blocks]), aspect="auto", origin="lower", vmin=-120, vmax=-10,
                           cmap="magma", interpolation="nearest")
            ax.set_title(f"{name}, item {j}", fontsize="small")
            ax.set_xlabel("MDCT block" if r == len(rows) - 1 else "")
            ax.set_ylabel("bin" if j == 0 else "")
    fig.colorbar(im, ax=axes, label="20 log10 |X| (dB)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=64, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
