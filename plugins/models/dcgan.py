"""The ``dcgan`` model: Radford et al. 2016's DCGAN, the pytorch/examples ``dcgan/main.py`` topology adapted
to 28x28 images (MNIST), trained with any loss plugin (``bce``, ``bce_r1``, ``hinge``, ``wgan_gp``).

28x28 natively, not resized to 32: resizing would make the networks see (and the metrics judge) interpolated
digits, and every metric and published anchor for MNIST is at 28x28. pytorch/examples doubles the size at each
of its four strided transposed convolutions (4 -> 8 -> 16 -> 32 -> 64); here one stage is dropped (64x64 is not
needed) and the first doubling uses a 3x3 kernel, 4 -> 7, so that 7 -> 14 -> 28 follow with the original 4x4,
stride 2, padding 1 layers. The critic mirrors it (28 -> 14 -> 7 -> 4 -> 1). Per network (``width`` w)::

    generator  z (B, latent, 1, 1) -> ConvT 4x4        -> (B, 4w, 4, 4)   BN ReLU
                                   -> ConvT 3x3 s2 p1  -> (B, 2w, 7, 7)   BN ReLU
                                   -> ConvT 4x4 s2 p1  -> (B, w, 14, 14)  BN ReLU
                                   -> ConvT 4x4 s2 p1  -> (B, C, 28, 28)  tanh
    critic     x (B, C, 28, 28)    -> Conv 4x4 s2 p1   -> (B, w, 14, 14)  LeakyReLU(0.2)
                                   -> Conv 4x4 s2 p1   -> (B, 2w, 7, 7)   norm LeakyReLU(0.2)
                                   -> Conv 3x3 s2 p1   -> (B, 4w, 4, 4)   norm LeakyReLU(0.2)
                                   -> Conv 4x4         -> (B, 1, 1, 1)    (logit / score)

As in pytorch/examples: no biases before a norm, N(0, 0.02) convolution weights and N(1, 0.02) norm gains
(Radford et al. 2016, §4), Adam(2e-4, betas (0.5, 0.999)), the generator's batch reused (detached) for the
critic update. The critic's norm (``critic_norm``): BatchNorm as in DCGAN, except with a gradient-penalty loss
(``auto``: any loss with a gradient penalty, ``d/gp`` or ``d/r1``), where it becomes layer norm: BatchNorm couples the items of a batch,
so the critic is no longer a function of one input and the per-item gradient penalty is invalid (Gulrajani et
al. 2017, §4, who recommend layer normalisation instead).

Sampling runs the generator in eval mode (BatchNorm running statistics), so a sample does not depend on the
other items of its batch and sampling never changes the model's buffers.

``ema`` > 0 samples from an exponential moving average of the generator's weights (Yazici et al. 2019) instead
of the live generator. Off by default; the MNIST spec uses 0.999: with WGAN-GP at width 64 it gave the better FID
after every epoch (6.2 vs 12.1 after 10), with bce at width 32 only after ~8 epochs (docs/mnist.md).

``num_classes`` > 0 makes both networks class-conditional (a labelled dataset such as ``mnist`` supplies the
classes; the runner passes them): the generator sees ``z`` concatenated with the one-hot class, as the
conditional GANs of Mirza & Osindero 2014 and the cDCGAN examples; the critic becomes a projection discriminator
(Miyato & Koyama 2018, eq. 3): ``score(x, y) = head(phi(x)) + <e_y, phi(x)>`` with ``phi(x)`` the (B, 4w, 4, 4)
features before the last convolution and ``e_y`` a learnt embedding of the class of the same size. Fakes are
drawn for the real batch's classes, so the gradient penalty interpolates between items of the same class.

Not here: spectral norm, other image sizes than 28x28.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor, nn

from framework import hookimpl
from framework.protocols import DataInfo, Loss, Model, Representation
from framework.runtime import Runtime
from plugins.models.averaging import averaged_copy, update_average_

NORMS = ("auto", "batch", "layer", "instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # over (C, H, W) of each item, with a per-channel gain and bias (Ba et al. 2016)
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def generator(latent_dim: int, width: int, channels: int) -> nn.Sequential:
    """z (B, latent_dim, 1, 1) -> images (B, channels, 28, 28) in [-1, 1]."""
    w = width
    return nn.Sequential(
        nn.ConvTranspose2d(latent_dim, 4 * w, 4, 1, 0, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(True),  # 4x4
        nn.ConvTranspose2d(4 * w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(True),  # 7x7
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),  # 14x14
        nn.ConvTranspose2d(w, channels, 4, 2, 1, bias=False), nn.Tanh())  # 28x28


def critic(width: int, channels: int, norm: str) -> nn.Sequential:
    """images (B, channels, 28, 28) -> scores (B, 1, 1, 1)."""
    w, bias = width, norm == "none"
    return nn.Sequential(
        nn.Conv2d(channels, w, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),  # 14x14
        nn.Conv2d(w, 2 * w, 4, 2, 1, bias=bias), _norm(norm, 2 * w), nn.LeakyReLU(0.2, True),  # 7x7
        nn.Conv2d(2 * w, 4 * w, 3, 2, 1, bias=bias), _norm(norm, 4 * w), nn.LeakyReLU(0.2, True),  # 4x4
        nn.Conv2d(4 * w, 1, 4, 1, 0, bias=False))  # 1x1


class ConditionalGenerator(nn.Module):
    """``net`` (built for ``latent_dim + num_classes`` inputs) fed with ``z`` and the one-hot class."""

    def __init__(self, net: nn.Sequential, num_classes: int):
        super().__init__()
        self.net, self.num_classes = net, num_classes

    def forward(self, z: Tensor, y: Tensor) -> Tensor:  # (B, latent, 1, 1), (B,) int64 -> (B, C, 28, 28)
        onehot = nn.functional.one_hot(y, self.num_classes).to(z.dtype)[:, :, None, None]  # (B, classes, 1, 1)
        return self.net(torch.cat([z, onehot], 1))


class ProjectionCritic(nn.Module):
    """Miyato & Koyama 2018's projection discriminator around the DCGAN critic ``net``: its last convolution
    is the unconditional head, and a class embedding of the head's input size adds ``<e_y, phi(x)>``."""

    def __init__(self, net: nn.Sequential, num_classes: int):
        super().__init__()
        self.body, self.head = net[:-1], net[-1]
        self.embed = nn.Embedding(num_classes, self.head.in_channels * self.head.kernel_size[0] ** 2)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:  # (B, C, 28, 28), (B,) int64 -> (B,)
        h = self.body(x)  # (B, 4w, 4, 4)
        return self.head(h).flatten() + (self.embed(y) * h.flatten(1)).sum(1)


def init_weights(m: nn.Module) -> None:
    """DCGAN initialisation (Radford et al. 2016, §4): conv weights N(0, 0.02), norm gains N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Dcgan(Model):
    @dataclasses.dataclass(frozen=True)
    class Params:
        latent_dim: int = 100  # z size (pytorch/examples nz)
        g_width: int = 64  # generator channels at 14x14 (ngf); 2x and 4x at 7x7 and 4x4
        d_width: int = 64  # critic channels at 14x14 (ndf)
        # auto: layer norm when the loss has a per-item gradient penalty (d/gp, d/r1), else BatchNorm as in DCGAN
        critic_norm: Literal["auto", "batch", "layer", "instance", "none"] = "auto"
        lr: float = 2e-4  # Adam, both networks (Radford et al. 2016, §4)
        betas: tuple[float, float] = (0.5, 0.999)  # beta1 0.5 stabilises GAN training (ibid.)
        n_critic: int = 1  # critic updates per generator update; train_step makes one critic update per call
        ema: float = 0.0  # decay of the generator-weight average that sample() uses (0: off, sample the live generator)
        num_classes: int = 0  # > 0: class-conditional G and projection critic; the dataset must have as many classes

    def __init__(self, params: "Dcgan.Params", *, representation: Representation, loss: Loss,
                 data_info: DataInfo, runtime: Runtime):
        super().__init__()
        shape = tuple(representation.shape)
        if len(shape) != 3 or shape[1:] != (28, 28):
            raise ValueError(f"dcgan generates (C, 28, 28) images; the representation's shape is {shape} "
                             f"(use an image dataset of 28x28 with representation 'raw')")
        if params.n_critic < 1:
            raise ValueError(f"model.params.n_critic must be >= 1, got {params.n_critic}")
        self.params, self.rep, self.loss, self.rt, self.shape = params, representation, loss, runtime, shape
        self.norm = params.critic_norm
        if self.norm == "auto":
            self.norm = "layer" if {"d/gp", "d/r1"} & set(loss.weights) else "batch"
        self.num_classes = k = params.num_classes
        if k < 0 or (k and data_info.num_classes != k):
            raise ValueError(f"model.params.num_classes is {k} but the dataset labels {data_info.num_classes} "
                             f"classes; use 0 (unconditional) or the dataset's number of classes (mnist: 10)")
        self.generator = generator(params.latent_dim + k, params.g_width, shape[0])
        self.critic = critic(params.d_width, shape[0], self.norm)
        if k:
            self.generator = ConditionalGenerator(self.generator, k)
            self.critic = ProjectionCritic(self.critic, k)
        self.generator.apply(init_weights)
        self.critic.apply(init_weights)
        # Averaged generator weights (Yazici et al. 2019): a submodule, so checkpoints carry it.
        self.generator_ema = averaged_copy(self.generator, params.ema)
        # Compiled callables kept out of the module tree, so state_dict keys do not depend on train.compile.
        self._nets = {"g": runtime.maybe_compile(self.generator), "d": runtime.maybe_compile(self.critic)}
        self.optimizers = {
            "g": torch.optim.Adam(self.generator.parameters(), lr=params.lr, betas=params.betas),
            "d": torch.optim.Adam(self.critic.parameters(), lr=params.lr, betas=params.betas)}

    def _latents(self, n: int, truncation: float | None = None) -> Tensor:  # -> (n, latent_dim, 1, 1)
        z = torch.randn(n, self.params.latent_dim, 1, 1, device=self.rt.device)
        return z if truncation is None else z.clamp(-truncation, truncation)

    def _args(self, labels: Tensor | None) -> tuple[Tensor, ...]:
        """The networks' extra inputs: ``(labels,)`` for a conditional model, else none."""
        if not self.num_classes:
            return ()
        if labels is None:
            raise ValueError("dcgan with num_classes > 0 is class-conditional: train_step needs labels=(B,) classes")
        return (labels,)

    def _generate(self, z: Tensor, *y: Tensor) -> Tensor:  # (B, latent_dim, 1, 1)[, (B,)] -> (B, C, 28, 28)
        with self.rt.autocast():
            return self._nets["g"](z, *y).float()

    def _critic(self, x: Tensor, *y: Tensor) -> Tensor:  # (B, C, 28, 28)[, (B,)] -> (B,)
        with self.rt.autocast():
            return self._nets["d"](x, *y).float().flatten()

    def train_step(self, batch: Tensor, step: int, labels: Tensor | None = None) -> dict[str, Tensor]:
        b, update_g = batch.shape[0], (step + 1) % self.params.n_critic == 0
        y = self._args(labels)  # fakes of the reals' classes, so the penalty interpolates within a class
        # One generator forward serves both phases when G is updated this step (pytorch/examples does the same).
        with torch.set_grad_enabled(update_g):
            fake = self._generate(self._latents(b), *y)  # (B, C, 28, 28)

        # The losses see a critic of the images alone; a conditional one has this batch's classes bound.
        critic = (lambda x: self._critic(x, *y)) if y else self._critic
        # Critic: minimise the loss's d/ terms (bce: -log D(x) - log(1 - D(G(z)))) on reals and detached fakes.
        d_terms = self.loss.discriminator_terms(critic, self.rep.critic_view(batch),
                                                self.rep.critic_view(fake.detach()), step)
        d_loss = self.loss.total(d_terms)
        self.optimizers["d"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.rt.sync_grads(self.critic)
        self.optimizers["d"].step()
        out = {**d_terms, "d/loss": d_loss}

        if update_g:
            # Generator: minimise the g/ terms (bce: -log D(G(z)), non-saturating) through the updated critic.
            g_terms = self.loss.generator_terms(critic, self.rep.critic_view(fake))
            g_loss = self.loss.total(g_terms)
            self.optimizers["g"].zero_grad(set_to_none=True)
            g_loss.backward()
            self.rt.sync_grads(self.generator)
            self.optimizers["g"].step()
            out.update(g_terms, **{"g/loss": g_loss})
            if self.generator_ema is not None:
                update_average_(self.generator_ema, self.generator, self.params.ema, step)
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def sample(self, n: int, truncation: float | None = None,
               labels: Tensor | None = None) -> Tensor:  # -> (n, C, 28, 28) in [-1, 1]
        """``labels`` (n,): the classes to draw (conditional model only; default uniform at random)."""
        if labels is not None and not self.num_classes:
            raise ValueError("dcgan: labels given to an unconditional model (set model.params.num_classes)")
        if self.num_classes and labels is None:
            labels = torch.randint(0, self.num_classes, (n,), device=self.rt.device)
        y = () if labels is None else (labels,)
        g, net = ((self.generator_ema, self.generator_ema) if self.generator_ema is not None
                  else (self.generator, self._nets["g"]))
        was_training = g.training
        g.eval()
        try:
            z = self._latents(n, truncation)  # (n, latent_dim, 1, 1)
            with self.rt.autocast():
                return net(z, *y).float()
        finally:
            g.train(was_training)

    @torch.no_grad()
    def score(self, z: Tensor) -> Tensor | None:  # (B, C, 28, 28) -> (B,)
        if self.num_classes:
            return None  # a conditional critic scores an image only together with its class
        was_training = self.critic.training
        self.critic.eval()
        try:
            return self._critic(self.rep.critic_view(z))
        finally:
            self.critic.train(was_training)


@hookimpl
def register_models(register):
    register("dcgan", Dcgan)
