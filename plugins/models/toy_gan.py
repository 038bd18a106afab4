"""``toy_gan``: a small MLP GAN for any representation shape; the core's first real model.

It exists so the framework's loop, losses, checkpoints and tracking are exercised end to end on a CPU in
seconds, before the real models (``dcgan``, ``mp3net``). Generator: z (B, latent_dim) -> MLP -> tanh ->
(B, *shape). Critic: (B, *shape) -> MLP -> (B,). Each ``train_step`` makes one critic update and, every
``n_critic`` steps, one generator update, with whatever loss plugin the spec names.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from framework import hookimpl
from framework.protocols import DataInfo, Loss, Model, Representation
from framework.runtime import Runtime


def _mlp(sizes: list[int], final: nn.Module | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


def grad_norm(module: nn.Module) -> Tensor:
    """L2 norm of all parameter gradients (0-dim tensor, no host sync)."""
    grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


class ToyGan(Model):
    @dataclasses.dataclass(frozen=True)
    class Params:
        latent_dim: int = 32
        hidden: int = 128  # width of the two hidden layers of both networks
        lr: float = 2e-4
        betas: tuple[float, float] = (0.5, 0.9)
        n_critic: int = 1  # critic updates per generator update

    def __init__(self, params: "ToyGan.Params", *, representation: Representation, loss: Loss,
                 data_info: DataInfo, runtime: Runtime):
        super().__init__()
        if params.n_critic < 1:
            raise ValueError(f"model.params.n_critic must be >= 1, got {params.n_critic}")
        self.params, self.rep, self.loss, self.rt = params, representation, loss, runtime
        self.shape = tuple(representation.shape)
        dim = math.prod(self.shape)
        self.generator = _mlp([params.latent_dim, params.hidden, params.hidden, dim], nn.Tanh())
        self.critic = _mlp([dim, params.hidden, params.hidden, 1], None)
        self.optimizers = {
            "g": torch.optim.Adam(self.generator.parameters(), lr=params.lr, betas=params.betas),
            "d": torch.optim.Adam(self.critic.parameters(), lr=params.lr, betas=params.betas)}

    def _generate(self, n: int) -> Tensor:  # -> (n, *shape)
        z = torch.randn(n, self.params.latent_dim, device=self.rt.device)
        with self.rt.autocast():
            return self.generator(z).float().view(n, *self.shape)

    def _critic(self, x: Tensor) -> Tensor:  # (B, *shape) -> (B,)
        with self.rt.autocast():
            return self.critic(x.flatten(1)).float().squeeze(1)

    def train_step(self, batch: Tensor, step: int) -> dict[str, Tensor]:
        b = batch.shape[0]
        # Critic: minimise the loss's d/ terms on reals and (detached) fakes.
        with torch.no_grad():
            fake = self._generate(b)
        d_terms = self.loss.discriminator_terms(self._critic, self.rep.critic_view(batch),
                                                self.rep.critic_view(fake), step)
        d_loss = self.loss.total(d_terms)
        self.optimizers["d"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.rt.sync_grads(self.critic)
        out = {**d_terms, "d/loss": d_loss.detach(), "d/grad_norm": grad_norm(self.critic)}
        self.optimizers["d"].step()
        if (step + 1) % self.params.n_critic == 0:
            # Generator: minimise the g/ terms on fresh fakes, through the critic.
            g_terms = self.loss.generator_terms(self._critic, self.rep.critic_view(self._generate(b)))
            g_loss = self.loss.total(g_terms)
            self.optimizers["g"].zero_grad(set_to_none=True)
            g_loss.backward()
            self.rt.sync_grads(self.generator)
            out.update(g_terms, **{"g/loss": g_loss.detach(), "g/grad_norm": grad_norm(self.generator)})
            self.optimizers["g"].step()
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def sample(self, n: int, truncation: float | None = None) -> Tensor:
        return self._generate(n)

    @torch.no_grad()
    def score(self, z: Tensor) -> Tensor:
        return self._critic(z)


@hookimpl
def register_models(register):
    register("toy_gan", ToyGan)
