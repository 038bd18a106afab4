"""Cheap checks for any data.

``moments``: how far the generated items' first two moments are from the real items'. Per channel, over all
items and positions: |mean_fake - mean_real| and |std_fake - std_real|, averaged over channels. Zero for
identical sets (a test checks the invariant); it cannot tell two different distributions with equal moments
apart, which is why the real models add their own metrics.

``shared_energy``: how much of the items' energy is the same in all of them, the mean inner product of two
different items over their mean energy, mean_{i != j} <x_i, x_j> / mean_i ||x_i||^2, in percent: 100 when every
item is the same, ~0 for independent zero-mean items, for real and generated items alike. A generator whose
output hardly depends on z scores near 100 (MP3net's untrained generator: ~85 %, docs/notes/mp3net-small-cpu.md), which its
other metrics need not show. Computed from the running sum and energy of the items: (||sum x_i||^2 - sum ||x_i||^2)
/ ((n - 1) sum ||x_i||^2).
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


class _RealFake(Metric):
    """A metric without params that streams real and generated items into one accumulator each."""

    accumulator: type  # with add(x: Tensor (B, ...)) and n (items or values seen)

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: "_RealFake.Params", **injected):
        self.params = params
        self.reset()

    def reset(self) -> None:
        self.real, self.fake = self.accumulator(), self.accumulator()

    def update(self, real: Tensor, fake: Tensor) -> None:  # (B, ...) each
        self.real.add(real)
        self.fake.add(fake)


class Moments(_RealFake):
    higher_is_better = {"moments/std_diff": False, "moments/mean_diff": False}
    accumulator = _Moments

    def compute(self) -> dict[str, float]:
        if not self.real.n or not self.fake.n:
            raise ValueError("moments: compute() before any update()")
        (mr, sr), (mf, sf) = self.real.mean_std(), self.fake.mean_std()
        return {"moments/mean_diff": float((mf - mr).abs().mean()), "moments/std_diff": float((sf - sr).abs().mean())}


class _SharedEnergy:
    """Streaming sum of the items (float64, one item's shape), their total energy and count."""

    def __init__(self):
        self.sum, self.energy, self.n = None, 0.0, 0

    def add(self, x: Tensor) -> None:  # (B, ...)
        x = x.detach().double()
        self.sum = x.sum(0) if self.sum is None else self.sum + x.sum(0)
        self.energy += float((x * x).sum())
        self.n += x.shape[0]

    def percent(self) -> float:
        if self.energy == 0.0:
            return 0.0  # all silent: nothing to share
        return 100.0 * (float((self.sum * self.sum).sum()) - self.energy) / ((self.n - 1) * self.energy)


def shared_energy_pct(x: Tensor) -> float:
    """``shared_energy`` of one batch (B >= 2, ...): % of the items' energy common to all of them."""
    acc = _SharedEnergy()
    acc.add(x)
    return acc.percent()


class SharedEnergy(_RealFake):
    higher_is_better = {"shared_energy_fake_pct": False}
    accumulator = _SharedEnergy

    def compute(self) -> dict[str, float]:
        if self.real.n < 2 or self.fake.n < 2:
            raise ValueError(f"shared_energy needs at least 2 real and 2 generated items, got {self.real.n} and "
                             f"{self.fake.n}; raise train.eval_samples")
        return {"shared_energy_real_pct": self.real.percent(), "shared_energy_fake_pct": self.fake.percent()}


@hookimpl
def register_metrics(register):
    register("moments", Moments)
    register("shared_energy", SharedEnergy)
