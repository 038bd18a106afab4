"""Forward FLOPs of MP3net's generator and critic for experiment specs, counted on the meta device (no memory,
no arithmetic), at each spec's batch size: the ratio between two specs projects one's time per critic iteration
from the other's where only one was measured.

    python benchmarks/mp3net_flops.py [SPEC ...]   # default: the 95 s and the 5 s models (docs/benchmarks.md)

A critic iteration runs the same kinds of passes for every MP3net (G without gradients, D on reals, fakes and
the penalty's interpolates with its double backward, and every n_critic-th step G and D with gradients), so its
cost scales with these forward counts; equal FLOP/s is an assumption (wider layers usually run nearer the peak).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from framework.plugin_manager import collect_registries
from framework.spec import load_spec
from plugins.models.mp3net import Critic, Generator, Geometry

DEFAULT_SPECS = ["experiments/mp3net_piano.yaml", "experiments/mp3net_piano_5s.yaml"]


def forward_flops(spec) -> dict:
    """Forward FLOPs of G (B latents) and of D (B items) at the spec's batch size B."""
    p, batch = spec.model.params, spec.train.batch_size
    geo = Geometry.of(p)
    d_base = p.base_channels if p.critic_base_channels is None else p.critic_base_channels
    with torch.device("meta"):
        g = Generator(geo, p.latent_dim, p.base_channels, p.max_channels)
        d = Critic(geo, d_base, p.max_channels, p.stddev_group)
        with FlopCounterMode(display=False) as fg:
            x = g(torch.empty(batch, p.latent_dim))  # (B, C, N, K)
        with FlopCounterMode(display=False) as fd:
            d(x)
    return {"spec": spec.path, "batch": batch, "g_tflop": fg.get_total_flops() / 1e12,
            "d_tflop": fd.get_total_flops() / 1e12}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="*", default=DEFAULT_SPECS)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    registries = collect_registries()
    rows = [forward_flops(load_spec(s, registries)) for s in args.specs]
    base = rows[0]["g_tflop"] + rows[0]["d_tflop"]
    for r in rows:
        r["vs_first"] = (r["g_tflop"] + r["d_tflop"]) / base
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'spec':<40}{'batch':>6}{'G fwd TFLOP':>13}{'D fwd TFLOP':>13}{'vs first':>10}")
        for r in rows:
            print(f"{r['spec']:<40}{r['batch']:>6}{r['g_tflop']:>13.2f}{r['d_tflop']:>13.2f}{r['vs_first']:>10.2f}")
    return rows


if __name__ == "__main__":
    main()
