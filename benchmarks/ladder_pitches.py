"""Which pitches does a trained ladder rung play? The per-key counts of a run's generated clips against as many real
clips of its evaluation split, keyed by the rung's own pitch_histogram fit (docs/ladder.md quotes it for rung 2).

    python benchmarks/ladder_pitches.py RUN_ID [--n 512] [--device cpu]

Reads runs/RUN_ID/checkpoint.pt (FRAMEWORK_RUNS_DIR moves runs/). Prints one line per key: key, real count,
generated count; then the total-variation distance of the two histograms.
"""

from __future__ import annotations

import argparse
import collections

import torch

from framework import checkpoint
from framework.build import build_dataset
from framework.generate import load_model
from framework.runner import find_checkpoint
from plugins.metrics.ladder import HarmonicFit, HarmonicParams


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_id")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    model, rep, info, spec, rt = load_model(checkpoint.load(find_checkpoint(args.run_id, None)), args.device)
    block = next((m for m in spec.metrics if m.name == "pitch_histogram" and m.params.mode == "key"), None)
    if block is None:
        raise SystemExit(f"run {args.run_id}: its spec has no pitch_histogram metric in mode key")
    p = block.params
    fit = HarmonicFit(HarmonicParams(p.min_key, p.max_key, p.harmonics, p.width, p.fft), info, rt.device, "keys")
    data = build_dataset(spec, spec.train.eval_split)
    torch.manual_seed(spec.seed)
    with torch.no_grad():
        real = torch.stack([data[i % len(data)] for i in range(args.n)]).to(rt.device)
        fake = rep.decode(model.sample(args.n).float())
    counts = [collections.Counter(fit(x)[1].tolist()) for x in (real, fake)]
    print("key real generated")
    for key in sorted(set(counts[0]) | set(counts[1])):
        print(key, counts[0].get(key, 0), counts[1].get(key, 0))
    tv = 0.5 * sum(abs(counts[0].get(k, 0) - counts[1].get(k, 0)) for k in set(counts[0]) | set(counts[1])) / args.n
    print(f"total variation {tv:.3f} (n = {args.n} per side)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
