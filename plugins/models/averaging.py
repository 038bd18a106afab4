"""Exponential moving average of a generator's weights (Yazici et al. 2019, "The unusual effectiveness of
averaging in GAN training"), shared by the models that sample from it (``dcgan``, ``mp3net``: ``params.ema``).

The average is a frozen copy of the network, registered by the model as a submodule so that checkpoints carry
it. Its update uses the warm-up of ``tf.train.ExponentialMovingAverage(num_updates)``: the decay is
``min(decay, (1 + t) / (10 + t))``, so early updates average over few steps and the average does not drag the
random initialisation along for ~1 / (1 - decay) steps. Buffers (BatchNorm running statistics) are copied from
the live network, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def averaged_copy(module: nn.Module, decay: float, key: str = "model.params.ema") -> nn.Module | None:
    """A frozen copy of ``module`` to average into, or None when ``decay`` is 0 (off); ``key`` names the setting
    in the error for a decay outside [0, 1)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"{key} must be in [0, 1) (0: off; e.g. 0.999), got {decay}")
    return copy.deepcopy(module).requires_grad_(False) if decay else None


@torch.no_grad()
def update_average_(average: nn.Module, live: nn.Module, decay: float, step: int) -> None:
    """average <- d * average + (1 - d) * live with d = min(decay, (1 + step) / (10 + step)); buffers copied."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(average.parameters()), list(live.parameters()), 1.0 - d)
    for b_avg, b_live in zip(average.buffers(), live.buffers()):
        b_avg.copy_(b_live)
