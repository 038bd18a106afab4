"""How fast can an MP3net generator represent real clips at all? Fit a freshly initialised generator to the MDCT of a
few training clips by plain regression (fixed latents, MSE, Adam), no critic: an upper bound on what the GAN can
reach in as many steps at that learning rate, and a view of where the L2 geometry of raw MDCT amplitudes leaves its
error.

    python benchmarks/mp3net_regression_fit.py runs/RUN/checkpoint.pt --items 4 --lr 1e-3 --steps 500

``--compress C`` fits asinh(X / C) instead of X (about log |X| above C, linear below): a loss in which a quiet
bin's relative error counts as much as a loud one's, to test whether the raw amplitudes' L2 geometry is what leaves
the high band's error.

The model, representation and data come from the checkpoint's spec (its weights are not used: the generator is
re-initialised after seeding with the run's seed, as at step 0 of a run). Prints the relative MSE (MSE / mean X^2,
of the compressed values with ``--compress``: 1.0 is what predicting silence scores) five times during the fit,
then the mean |X| in dB of target, fit and error in the lowest quarter and the upper half of the bins.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from framework import checkpoint
from framework.build import build_dataset
from framework.generate import load_model


def db(x: torch.Tensor) -> float:
    return 20 * torch.log10(x.abs().mean().clamp_min(1e-12)).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path, help="checkpoint.pt of an MP3net run (for its spec)")
    ap.add_argument("--items", type=int, default=4, help="training clips to fit (items 0..n-1)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (betas 0.5, 0.9 as the spec)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--compress", type=float, default=0.0,
                    help="C > 0: fit asinh(X / C) instead of X (default 0: plain MSE on the amplitudes)")
    ap.add_argument("--out", type=Path, help="also save {'fit', 'target'} (n, C, N, K) tensors here")
    args = ap.parse_args()
    if args.steps < 5 or args.items < 1:
        raise SystemExit("--steps must be >= 5 and --items >= 1")

    state = checkpoint.load(args.checkpoint)
    _, rep, info, spec, runtime = load_model(state, "cpu")
    ds = build_dataset(spec, "train")
    with torch.no_grad():
        target = rep.encode(torch.stack([torch.as_tensor(ds[i]) for i in range(args.items)]))  # (n, C, N, K)
    model = load_model(state, "cpu", weights=False)[0].train()  # as initialised from the spec's seed
    g = model.generator
    z = torch.randn(args.items, model.params.latent_dim)  # fixed latents, one per clip
    opt = torch.optim.Adam(g.parameters(), lr=args.lr, betas=(0.5, 0.9))
    view = (lambda x: torch.asinh(x / args.compress)) if args.compress > 0 else (lambda x: x)
    scale = view(target).pow(2).mean()
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        fit = g(z)  # (n, C, N, K)
        rel = (view(fit) - view(target)).pow(2).mean() / scale
        if step % (args.steps // 5) == 0:
            print(f"step {step:>6}  relative MSE {rel.item():.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if step < args.steps:
            opt.zero_grad(set_to_none=True)
            rel.backward()
            opt.step()
    fit = fit.detach()
    k = target.shape[-1]
    lo, hi = slice(0, k // 4), slice(k // 2, k)
    hz = info.sample_rate / 2 / k
    print(f"{'mean |X| (dB)':<14}{'< %d Hz' % (k // 4 * hz):>12}{'> %d Hz' % (k // 2 * hz):>12}")
    for name, x in (("target", target), ("fit", fit), ("error", fit - target)):
        print(f"{name:<14}{db(x[..., lo]):>12.1f}{db(x[..., hi]):>12.1f}")
    if args.out:
        torch.save({"fit": fit, "target": target}, args.out)


if __name__ == "__main__":
    main()
