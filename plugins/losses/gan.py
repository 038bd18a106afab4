"""Adversarial losses as named, unweighted terms: ``bce`` (non-saturating), ``bce_r1`` (non-saturating with
Mescheder et al.'s R1 penalty), ``hinge`` and ``wgan_gp``.

Each returns a dict of 0-dim tensors named ``d/...`` or ``g/...``; the spec's ``loss.weights`` weigh them
(:meth:`framework.protocols.Loss.total`). ``critic`` maps ``(B, *shape)`` to scores ``(B,)`` or ``(B, 1)``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from framework import hookimpl
from framework.protocols import Loss

Critic = Callable[[Tensor], Tensor]


def _at_least_f32(t: Tensor) -> Tensor:
    """Loss arithmetic in float32 at least (autocast may hand us bf16/fp16), float64 kept as is."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _scores(critic: Critic, x: Tensor) -> Tensor:
    return _at_least_f32(critic(x).reshape(x.shape[0]))  # (B,)


class Bce(Loss):
    """Non-saturating GAN loss (Goodfellow et al. 2014, §3): D minimises softplus(-D(r)) + softplus(D(f)),
    G minimises softplus(-D(f)) = -log sigmoid(D(f))."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    default_weights = {"d/real": 1.0, "d/fake": 1.0, "g/adv": 1.0}

    def discriminator_terms(self, critic: Critic, real: Tensor, fake: Tensor, step: int = 0) -> dict[str, Tensor]:
        return {"d/real": F.softplus(-_scores(critic, real)).mean(),
                "d/fake": F.softplus(_scores(critic, fake)).mean()}

    def generator_terms(self, critic: Critic, fake: Tensor) -> dict[str, Tensor]:
        return {"g/adv": F.softplus(-_scores(critic, fake)).mean()}


class Hinge(Loss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): D: relu(1 - D(r)) + relu(1 + D(f)); G: -D(f)."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    default_weights = {"d/real": 1.0, "d/fake": 1.0, "g/adv": 1.0}

    def discriminator_terms(self, critic: Critic, real: Tensor, fake: Tensor, step: int = 0) -> dict[str, Tensor]:
        return {"d/real": F.relu(1.0 - _scores(critic, real)).mean(),
                "d/fake": F.relu(1.0 + _scores(critic, fake)).mean()}

    def generator_terms(self, critic: Critic, fake: Tensor) -> dict[str, Tensor]:
        return {"g/adv": -_scores(critic, fake).mean()}


class BceR1(Bce):
    """Non-saturating loss with the R1 penalty (Mescheder et al. 2018, eq. 9): ``d/r1`` = mean over the reals of
    ||grad D(x)||^2, weighted gamma / 2 (default weight 5.0, gamma = 10 as in their experiments and StyleGAN). It
    penalises the critic's gradient on the data only, which makes the non-saturating game locally convergent
    (ibid. §4); unlike WGAN-GP's penalty it does not ask for a unit gradient between reals and fakes.
    ``r1_every`` > 1 is the lazy form (Karras et al. 2020, StyleGAN2 §B): every k-th critic step, scaled by k."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        r1_every: int = 1  # lazy R1: penalise every k-th critic step, scaled by k

    default_weights = {"d/real": 1.0, "d/fake": 1.0, "d/r1": 5.0, "g/adv": 1.0}

    def __init__(self, params: "BceR1.Params", *, weights=None):
        if params.r1_every < 1:
            raise ValueError(f"loss.params.r1_every must be >= 1, got {params.r1_every}")
        super().__init__(params, weights=weights)

    def discriminator_terms(self, critic: Critic, real: Tensor, fake: Tensor, step: int = 0) -> dict[str, Tensor]:
        k = self.params.r1_every
        if step % k:
            return super().discriminator_terms(critic, real, fake, step)
        real = real.detach().requires_grad_(True)
        d_real = _scores(critic, real)  # (B,), reused for d/real so the reals go through the critic once
        (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
        return {"d/real": F.softplus(-d_real).mean(),
                "d/fake": F.softplus(_scores(critic, fake)).mean(),
                "d/r1": k * _at_least_f32(grad).flatten(1).pow(2).sum(1).mean()}


def gradient_penalty(critic: Critic, real: Tensor, fake: Tensor, center: float = 1.0) -> Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017, eq. 3): mean over the batch of (||grad D(x_hat)||_2 - center)^2
    at x_hat = real + u (fake - real), u ~ U[0, 1) per item. Differentiable w.r.t. the critic's parameters
    (create_graph=True) and w.r.t. ``fake`` (MP3net does not stop gradients through the fakes)."""
    u = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    x_hat = (real + u * (fake - real)).requires_grad_(True)
    scores = _scores(critic, x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norm = _at_least_f32(grad).flatten(1).norm(dim=1)  # (B,)
    return ((norm - center) ** 2).mean()


class WganGp(Loss):
    """Wasserstein loss with gradient penalty and drift (Karras et al. 2018, appx A.1).

    Terms: ``d/wasserstein`` = mean D(f) - mean D(r); ``d/gp`` (see :func:`gradient_penalty`);
    ``d/drift`` = mean D(r)^2; ``g/adv`` = -mean D(f). MP3net weighs them 1, 3.0, 0.1, 1.
    ``gp_every`` > 1 is the lazy penalty (Karras et al. 2020, StyleGAN2 §B): computed on every k-th
    critic step only, multiplied by k so its expected weight is unchanged.
    """

    @dataclasses.dataclass(frozen=True)
    class Params:
        gp_center: float = 1.0  # target gradient norm; 1 (Gulrajani et al. 2017)
        gp_every: int = 1  # lazy GP: penalise every k-th critic step, scaled by k

    default_weights = {"d/wasserstein": 1.0, "d/gp": 10.0, "d/drift": 0.001, "g/adv": 1.0}

    def __init__(self, params: "WganGp.Params", *, weights=None):
        if params.gp_every < 1:
            raise ValueError(f"loss.params.gp_every must be >= 1, got {params.gp_every}")
        super().__init__(params, weights=weights)

    def discriminator_terms(self, critic: Critic, real: Tensor, fake: Tensor, step: int = 0) -> dict[str, Tensor]:
        d_real, d_fake = _scores(critic, real), _scores(critic, fake)
        terms = {"d/wasserstein": d_fake.mean() - d_real.mean(), "d/drift": (d_real ** 2).mean()}
        k = self.params.gp_every
        if step % k == 0:
            terms["d/gp"] = k * gradient_penalty(critic, real, fake, self.params.gp_center)
        return terms

    def generator_terms(self, critic: Critic, fake: Tensor) -> dict[str, Tensor]:
        return {"g/adv": -_scores(critic, fake).mean()}


@hookimpl
def register_losses(register):
    register("bce", Bce)
    register("bce_r1", BceR1)
    register("hinge", Hinge)
    register("wgan_gp", WganGp)
