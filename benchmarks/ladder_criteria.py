"""Where a ladder rung's criteria stand before any training: each metric of a rung spec scored on the rung's own
evaluation size for reference cases, repeated over draws. The thresholds in ``experiments/ladder/*.yaml`` were set
from this table, before the rungs were trained (docs/ladder.md).

    python benchmarks/ladder_criteria.py experiments/ladder/01_sine_bin.yaml [more specs] [--repeats 5]
        [--n N (default: the spec's train.eval_samples)] [--out outputs/ladder_criteria]

Cases, each fed to the spec's metrics as the "fake" side against ``n`` real items of the evaluation split:

1. ``real``: ``n`` other real items (the train split): what a perfect generator scores;
2. ``loudness+tilt``: Gaussian MDCT coefficients with the data's RMS per (block, bin), decoded
   (:func:`plugins.metrics.ladder.baseline_audio`): a generator that learned only level, tilt and envelope;
3. ``untrained G``: the spec's model as initialised from the seed of the repeat;
4. ``collapsed``: one real item (the train split's first) repeated ``n`` times: a generator that plays one tone.

Printed: a markdown table per spec, mean ± std over ``--repeats``; written: ``criteria.json`` in ``--out``. The rule
docs/ladder.md states for a threshold t between the baseline b and real r: t = b + 0.65 (r - b), rounded towards r.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from framework.build import build, build_dataset
from framework.plugin_manager import collect_registries
from framework.runtime import Runtime
from framework.spec import load_spec
from plugins.metrics.ladder import baseline_audio

CASES = ("real", "loudness+tilt", "untrained G", "collapsed")


def items(ds, start: int, n: int) -> torch.Tensor:  # -> (n, C, T)
    return torch.stack([ds[(start + i) % len(ds)] for i in range(n)])


def score(metrics, real: torch.Tensor, fake: torch.Tensor, batch: int) -> dict[str, float]:
    for m in metrics:
        m.reset()
    for i in range(0, len(real), batch):
        for m in metrics:
            m.update(real[i:i + batch], fake[i:i + batch])
    return {k: float(v) for m in metrics for k, v in m.compute().items()}


def measure(path: str, repeats: int, n: int | None, sets: list[str]) -> dict[str, dict[str, list[float]]]:
    registries = collect_registries()
    spec = load_spec(path, registries, sets=sets)
    n = n or spec.train.eval_samples
    rt = Runtime(device=torch.device("cpu"), precision="fp32")
    evald, train = build_dataset(spec, spec.train.eval_split), build_dataset(spec, "train")
    out: dict[str, dict[str, list[float]]] = {c: {} for c in CASES}
    for r in range(repeats):
        torch.manual_seed(spec.seed + r)
        comps = build(spec, rt, dataset=train)  # a fresh untrained model per repeat (seeded above)
        real = items(evald, r * n, n)
        other = items(train, r * n, n)
        bins = spec.representation.params.bins
        with torch.no_grad():
            fakes = {"real": other,
                     "loudness+tilt": baseline_audio(other, bins, n, torch.Generator().manual_seed(r)),
                     "untrained G": comps.representation.decode(comps.model.sample(n).float()),
                     "collapsed": other[:1].expand(n, *other.shape[1:]).contiguous()}
        for case, fake in fakes.items():
            t = min(fake.shape[-1], real.shape[-1])
            for k, v in score(comps.metrics, real[..., :t], fake[..., :t], spec.train.batch_size).items():
                out[case].setdefault(k, []).append(v)
    return out


def markdown(path: str, table: dict[str, dict[str, list[float]]], n: int) -> str:
    keys = sorted({k for case in table.values() for k in case if not k.endswith("_real") and "floor" not in k
                   and "distinct_real" not in k})
    lines = [f"`{path}` (n = {n} per side, mean ± std over {len(next(iter(table['real'].values())))} draws)", "",
             "| case | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    for case, vals in table.items():
        cells = [f"{np.mean(vals[k]):.3f} ± {np.std(vals[k]):.3f}" if k in vals else "" for k in keys]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=None, help="items per side (default: the spec's train.eval_samples)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every spec")
    ap.add_argument("--out", default="outputs/ladder_criteria")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {}
    for path in args.specs:
        table = measure(path, args.repeats, args.n, args.set)
        results[path] = table
        n = args.n or load_spec(path, collect_registries(), sets=args.set).train.eval_samples
        print(markdown(path, table, n) + "\n", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "criteria.json").write_text(json.dumps(results, indent=1, default=lambda x: math.nan))
    print(f"wrote {out / 'criteria.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
