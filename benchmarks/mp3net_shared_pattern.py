"""How much of an MP3net generator's output is the same for every z, and what that common part is.

    python benchmarks/mp3net_shared_pattern.py --stages blocks=1024,bins=64,latent_dim=64,base_channels=4,max_channels=64,windows=4,init=he
    python benchmarks/mp3net_shared_pattern.py runs/RUN/checkpoint.pt [--n 16]

``--stages PARAMS`` builds an untrained generator from ``Mp3Net.Params`` given as key=value pairs (seed 0; with
``init=he`` the He init and output scaling of the ``mp3net`` model, with ``g_norm=batch`` in training mode, i.e.
batch statistics) and prints the ``shared_energy`` (% of the items' energy common to all of them,
``plugins/metrics/basic.py``) of ``--n`` latents after the dense layer, after each block (the windowed blocks with
their windows joined back, context rows included) and at the output before tanh.

For each checkpoint: the shared energy of ``--n`` samples (latent seed 0); of their common part (the mean over
the samples, past the first 128 blocks, where the clip fades in), the share of its energy that is constant over
time in each bin and the share at time periods dividing 16 blocks (the x2 transposed convs' period); and the
mean tonality (the ``tonality`` metric) of the samples, of the common part alone and of the samples minus it.
docs/notes/mp3net-small-cpu.md, "Samples that do not depend on z".
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import yaml

from framework import checkpoint
from framework.generate import load_model
from framework.runtime import Runtime
from plugins.metrics.audio import Tonality
from plugins.metrics.basic import shared_energy_pct
from plugins.models.mp3net import HE_OUTPUT_GAIN, Generator, Geometry, Mp3Net
from plugins.models.mp3net_layers import he_uniform_


def stages(pairs: str, n: int) -> list[float]:
    """Shared energy (%) after the dense layer, each block and the output conv of an untrained generator."""
    kw = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs.split(",") if p)}
    p = Mp3Net.Params(**kw)
    torch.manual_seed(0)
    g = Generator(Geometry.of(p), p.latent_dim, p.base_channels, p.max_channels, p.g_norm == "batch")
    if p.init == "he":  # as Mp3Net.__init__
        he_uniform_(g)
        g.out.weight.data.mul_(HE_OUTPUT_GAIN)
    shares = []

    def hook(module, inputs, out):  # (B, c, t, f), or (B S, c, t, f) in the windowed blocks
        if out.shape[0] != n:
            s = out.shape[0] // n
            out = out.view(n, s, *out.shape[1:]).transpose(1, 2).reshape(n, out.shape[1], -1, out.shape[-1])
        shares.append(shared_energy_pct(out))

    for m in (g.dense, *g.blocks):
        m.register_forward_hook(hook)
    shares.append(shared_energy_pct(g(torch.randn(n, p.latent_dim))))
    return shares


def common_part(path: str, n: int) -> dict[str, float]:
    model, rep, info, _, _ = load_model(checkpoint.load(path), "cpu")
    torch.manual_seed(0)
    X = model.sample(n)  # (n, C, N, K)
    common = X.mean(0, keepdim=True)
    power = torch.fft.fft2(common[0, :, 128:].double()).abs() ** 2  # (C, N', K), over (time, bins)
    periods = torch.arange(0, power.shape[1], power.shape[1] // 16)  # time frequencies of periods dividing 16
    tonality = Tonality(Tonality.Params(), representation=rep, data_info=info, runtime=Runtime())

    def tonal(Z: torch.Tensor) -> float:
        tonality.reset()
        audio = rep.decode(Z)
        tonality.update(audio, audio)
        return tonality.compute()["tonality_fake_pct"]

    return {"shared %": shared_energy_pct(X),
            "common: constant in time %": float(100 * power[:, 0].sum() / power.sum()),
            "common: periods dividing 16 blocks %": float(100 * power[:, periods].sum() / power.sum()),
            "tonality of the samples %": tonal(X), "of their common part %": tonal(common.expand_as(X).contiguous()),
            "of the rest %": tonal(X - common)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="*", help="checkpoint.pt files of mp3net runs")
    ap.add_argument("--stages", help="Mp3Net.Params of an untrained generator, key=value,...")
    ap.add_argument("--n", type=int, default=16, help="latents per measurement (>= 2)")
    args = ap.parse_args()
    if args.n < 2 or not (args.stages or args.checkpoints):
        ap.error("give --stages and/or checkpoints, and --n >= 2")
    torch.set_grad_enabled(False)
    if args.stages:
        shares = stages(args.stages, args.n)
        names = ["dense"] + [f"block {i + 1}" for i in range(len(shares) - 2)] + ["output"]
        print("shared energy (%): " + ", ".join(f"{k} {v:.0f}" for k, v in zip(names, shares)))
    for path in args.checkpoints:
        print(path)
        for k, v in common_part(path, args.n).items():
            print(f"  {k:<40}{v:8.1f}")


if __name__ == "__main__":
    main()
