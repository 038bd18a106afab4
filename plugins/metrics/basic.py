"""``moments``: a cheap distribution check for any data: how far the generated items' first two moments
are from the real items'.

Per channel, over all items and positions: |mean_fake - mean_real| and |std_fake - std_real|, averaged
over channels. Zero for identical sets (a test checks the invariant); it cannot tell two different
distributions with equal moments apart, which is why the real models add their own metrics.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from framework import hookimpl
from framework.protocols import Metric


class _Moments:
    """Streaming per-channel sum, sum of squares and count in float64."""

    def __init__(self):
        self.s = self.s2 = None
        self.n = 0

    def add(self, x: Tensor) -> None:  # (B, C, ...) -> per-channel sums
        x = x.detach().double().transpose(0, 1).flatten(1)  # (C, B * ...)
        s, s2 = x.sum(1), (x * x).sum(1)
        self.s = s if self.s is None else self.s + s
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += x.shape[1]

    def mean_std(self) -> tuple[Tensor, Tensor]:
        mean = self.s / self.n
        return mean, (self.s2 / self.n - mean ** 2).clamp_min(0).sqrt()


class Moments(Metric):
    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: "Moments.Params", **injected):
        self.params = params
        self.reset()

    def reset(self) -> None:
        self.real, self.fake = _Moments(), _Moments()

    def update(self, real: Tensor, fake: Tensor) -> None:
        self.real.add(real)
        self.fake.add(fake)

    def compute(self) -> dict[str, float]:
        if not self.real.n or not self.fake.n:
            raise ValueError("moments: compute() before any update()")
        (mr, sr), (mf, sf) = self.real.mean_std(), self.fake.mean_std()
        return {"moments/mean_diff": float((mf - mr).abs().mean()), "moments/std_diff": float((sf - sr).abs().mean())}


@hookimpl
def register_metrics(register):
    register("moments", Moments)
