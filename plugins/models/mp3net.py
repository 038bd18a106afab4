"""MP3net (van den Broek 2021): generator, critic and the ``mp3net`` model plugin (WGAN-GP on MDCT + noise).

Architecture of the original's final stage (docs/reference/mp3net-spec.md §3; tensors NCHW: C channels,
H = time blocks, W = MDCT bins). With K bins there are n = log2(K) - 1 blocks; each generator block
multiplies time by 4 and adds an octave on top (doubles the bins):

    z (B, 512) -> Dense -> (B, 512, N / 4^n, 2)
      -> blocks 0 .. n-3 on the whole clip                       (long-range structure)
      -> split_to_batch(windows, context 4 | 2) -> blocks n-2, n-1 per window -> 1x1 conv -> 2 channels
      -> join_from_batch(shave 64 | 32) -> tanh                  (B, 2, N, K)

The critic mirrors it: split into windows with context (35 | 50), 1x1 conv, the two top blocks per window with
the original's exact time shaving, join, the remaining blocks on the whole clip, minibatch-stddev (groups of 8),
Dense 512, Dense 1. With K = 128, N = 16384 (95.26 s at 22016 Hz) and the default widths the parameter counts
are exactly 58,981,762 (G) and 59,088,225 (D), as in the original Keras graph (tested).

Training (spec §4): one critic update per ``train_step`` and one generator update after every ``n_critic``-th
critic update, Adam(1e-4, 0.5, 0.9, eps 1e-7) for both; the loss plugin provides the terms (MP3net: wgan_gp with
weights d/gp 3.0 and d/drift 0.1); the representation's ``critic_view`` adds the psychoacoustic noise to reals
and fakes, without stopping gradients through the fakes' threshold.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from framework import hookimpl
from framework.protocols import DataInfo, Loss, Model, Representation
from framework.runtime import Runtime
from plugins.models.mp3net_layers import Conv, ConvT, MinibatchStddev, join_from_batch, lrelu, split_to_batch
from plugins.models.toy_gan import grad_norm


def full_precision(x: Tensor) -> Tensor:
    """float32 for autocast's bf16/fp16 results; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def channel_plan(n_blocks: int, base: int, cap: int) -> list[tuple[int, int, int]]:
    """Generator (in, mid, out) per block i: min(cap, (4, 2, 1) * 4^(n-1-i) * base) (spec §3.1)."""
    return [tuple(min(cap, m * 4 ** (n_blocks - 1 - i) * base) for m in (4, 2, 1)) for i in range(n_blocks)]


class GeneratorBlock(nn.Module):
    """(B, c_in, T, F) -> (B, out, 4T, 2F): a lower path on all bins and a higher path that builds the new top
    octave from the top half, each 2x in time, 1x1 rebalanced, concatenated on frequency, then 2x in time."""

    def __init__(self, c_in: int, mid: int, out: int):
        super().__init__()
        self.high = nn.ModuleList([ConvT(c_in, mid, 3, (2, 2)), ConvT(mid, mid, 3)])
        self.low = nn.ModuleList([ConvT(c_in, mid, 3, (2, 1)), ConvT(mid, mid, 3)])
        self.rebalance_high, self.rebalance_low = ConvT(mid, mid, 1), ConvT(mid, mid, 1)
        self.merge = nn.ModuleList([ConvT(mid, out, 3, (2, 1)), ConvT(out, out, 3)])

    def forward(self, x: Tensor) -> Tensor:
        f = x.shape[-1]
        high = x[..., f // 2:]
        for conv in self.high:
            high = lrelu(conv(high))  # (B, mid, 2T, F)
        low = x
        for conv in self.low:
            low = lrelu(conv(low))  # (B, mid, 2T, F)
        y = torch.cat([self.rebalance_low(low), self.rebalance_high(high)], dim=-1)  # (B, mid, 2T, 2F)
        for conv in self.merge:
            y = lrelu(conv(y))  # (B, out, 4T, 2F)
        return y


class CriticBlock(nn.Module):
    """(B', c, T, F) -> (B', out, T/4, F/2), mirroring GeneratorBlock. With ``shave`` (the windowed blocks) the
    time axis is trimmed after each conv and before its activation exactly as the original (spec §3.5)."""

    def __init__(self, c: int, a: int, mid: int, out: int, shave: bool, fast: bool):
        super().__init__()
        self.shave = shave
        self.first, self.down = Conv(c, a, 3, fast=fast), Conv(a, mid, 3, (2, 1), fast=fast)
        self.high = nn.ModuleList([Conv(mid, mid, 3, fast=fast), Conv(mid, out, 3, (2, 2), fast=fast)])
        self.low = nn.ModuleList([Conv(mid, mid, 3, fast=fast), Conv(mid, out, 3, (2, 1), fast=fast)])
        self.out_high, self.out_low = Conv(out, out, 1, fast=fast), Conv(out, out, 1, fast=fast)

    def _trim(self, x: Tensor, first: int, last: int) -> Tensor:
        return x[:, :, first:x.shape[2] - last] if self.shave else x

    def forward(self, x: Tensor) -> Tensor:
        x = lrelu(self._trim(self.first(x), 1, 0))
        x = lrelu(self._trim(self.down(x), 0, 1))  # time halves
        f = x.shape[-1]
        paths = []
        for convs, y in ((self.low, x[..., :f // 2]), (self.high, x[..., f // 2:])):
            y = lrelu(self._trim(convs[0](y), 1, 0))
            paths.append(lrelu(self._trim(convs[1](y), 0, 1)))
        low = self._trim(self.out_low(paths[0]), 1, 1)  # (B', out, T/4, F/2)
        high = self._trim(self.out_high(paths[1]), 1, 1)  # (B', out, T/4, F/4)
        return low + nn.functional.pad(high, (low.shape[-1] - high.shape[-1], 0))  # align with the top bins


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Block count and sizes implied by an encoded shape (C, N, K)."""

    channels: int
    blocks: int  # N, MDCT blocks per clip
    bins: int  # K
    n_blocks: int  # log2(K) - 1
    dense_time: int  # N / 4^n_blocks

    @classmethod
    def of(cls, shape: tuple[int, ...], windows: int) -> "Geometry":
        if len(shape) != 3:
            raise ValueError(f"mp3net needs an MDCT representation (C, N, K), got shape {shape}; "
                             f"use representation mdct or mdct_psy")
        c, n, k = shape
        n_blocks = int(round(math.log2(k))) - 1
        if 2 ** (n_blocks + 1) != k or n_blocks < 2:
            raise ValueError(f"mp3net needs K = 2^(n+1) bins with n >= 2 blocks; got K = {k} "
                             f"(set representation.params.bins to 8, 16, ..., 128)")
        if n % 4 ** n_blocks:
            raise ValueError(f"mp3net with K = {k} bins has {n_blocks} blocks, so the clip must be a multiple of "
                             f"4^{n_blocks} = {4 ** n_blocks} MDCT blocks, got N = {n}; set the dataset's window "
                             f"to (m * {4 ** n_blocks} - 1) * {k} samples")
        if (n // 16) % windows or n % (16 * windows):
            raise ValueError(f"mp3net: N = {n} blocks does not split into windows = {windows} windows of a multiple "
                             f"of 16 blocks; choose model.params.windows dividing {n // 16}")
        return cls(c, n, k, n_blocks, n // 4 ** n_blocks)


class Generator(nn.Module):
    def __init__(self, geo: Geometry, latent_dim: int, base: int, cap: int, windows: int,
                 context: tuple[int, int]):
        super().__init__()
        self.geo, self.windows, self.context = geo, windows, context
        plan = channel_plan(geo.n_blocks, base, cap)
        self.c0 = plan[0][0]
        self.dense = nn.Linear(latent_dim, geo.dense_time * 2 * self.c0)
        nn.init.zeros_(self.dense.bias)
        limit = math.sqrt(6.0 / (latent_dim + self.dense.out_features))
        nn.init.uniform_(self.dense.weight, -limit, limit)
        ins = [self.c0] + [p[2] for p in plan[:-1]]
        self.blocks = nn.ModuleList([GeneratorBlock(c, mid, out) for c, (_, mid, out) in zip(ins, plan)])
        self.out = Conv(plan[-1][2], geo.channels, 1)

    def forward(self, z: Tensor) -> Tensor:  # (B, latent) -> (B, C, N, K) in (-1, 1)
        B = z.shape[0]
        x = self.dense(z).view(B, self.geo.dense_time, 2, self.c0).permute(0, 3, 1, 2)  # Keras row-major (t, f, c)
        x = lrelu(x)  # (B, c0, N / 4^n, 2)
        for block in self.blocks[:-2]:
            x = block(x)
        x = split_to_batch(x, self.windows, self.context)  # windowed top blocks: local context only
        for block in self.blocks[-2:]:
            x = block(x)
        x = self.out(x)
        x = join_from_batch(x, self.windows, (16 * self.context[0], 16 * self.context[1]))  # (B, C, N, K)
        return torch.tanh(full_precision(x))  # the original casts to float32 before tanh


class Critic(nn.Module):
    def __init__(self, geo: Geometry, base: int, cap: int, windows: int, context: tuple[int, int],
                 stddev_group: int, fast: bool):
        super().__init__()
        self.geo, self.windows, self.context = geo, windows, context
        plan = channel_plan(geo.n_blocks, base, cap)
        d_plan = [(out, mid, c_in) for c_in, mid, out in plan]  # (a, mid, out) per block index i
        self.inp = Conv(geo.channels, d_plan[-1][0], 1, fast=fast)
        blocks, c = [], d_plan[-1][0]
        for i in reversed(range(geo.n_blocks)):  # top block first
            a, mid, out = d_plan[i]
            blocks.append(CriticBlock(c, a, mid, out, shave=i >= geo.n_blocks - 2, fast=fast))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.stddev = MinibatchStddev(stddev_group)
        self.dense = nn.Linear(geo.dense_time * 2 * (c + 1), cap if cap < 512 else 512)
        self.score = nn.Linear(self.dense.out_features, 1)
        for lin in (self.dense, self.score):
            limit = math.sqrt(6.0 / (lin.in_features + lin.out_features))
            nn.init.uniform_(lin.weight, -limit, limit)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, N, K) -> (B,)
        x = split_to_batch(x, self.windows, self.context)  # (B * S, C, N / S + 85, K)
        x = lrelu(self.inp(x))
        for block in self.blocks[:2]:
            x = block(x)
        x = join_from_batch(x, self.windows, (0, 0))
        for block in self.blocks[2:]:
            x = block(x)  # (B, c, N / 4^n, 2)
        x = self.stddev(x)
        x = lrelu(self.dense(x.permute(0, 2, 3, 1).flatten(1)))  # Keras flatten order (h, w, c)
        if x.device.type in ("cpu", "cuda"):
            with torch.autocast(x.device.type, enabled=False):  # the score layer in float32, as the original
                return self.score(full_precision(x)).squeeze(1)
        return self.score(x).squeeze(1)


class Mp3Net(Model):
    @dataclasses.dataclass(frozen=True)
    class Params:
        latent_dim: int = 512  # z ~ N(0, I); the paper's 512
        base_channels: int = 16  # d of the channel plan min(cap, (4, 2, 1) 4^(n-1-i) d)
        max_channels: int = 512  # cap of the channel plan
        windows: int = 128  # time windows of the two top blocks (G and D)
        g_context: tuple[int, int] = (4, 2)  # generator window context (past, future) at the split point
        d_context: tuple[int, int] = (35, 50)  # critic window context in MDCT blocks
        stddev_group: int = 8  # minibatch-stddev group size
        n_critic: int = 2  # critic updates per generator update
        lr: float = 1e-4
        betas: tuple[float, float] = (0.5, 0.9)
        eps: float = 1e-7  # Keras' Adam default, as the original
        fast_gp_conv: bool = True  # critic convs with a differentiable backward (fast exact GP)
        channels_last: bool = False  # NHWC memory format (faster convs on GPU)

    def __init__(self, params: "Mp3Net.Params", *, representation: Representation, loss: Loss,
                 data_info: DataInfo, runtime: Runtime):
        super().__init__()
        if params.n_critic < 1:
            raise ValueError(f"model.params.n_critic must be >= 1, got {params.n_critic}")
        self.params, self.rep, self.loss, self.rt = params, representation, loss, runtime
        geo = Geometry.of(tuple(representation.shape), params.windows)
        self.generator = Generator(geo, params.latent_dim, params.base_channels, params.max_channels,
                                   params.windows, params.g_context)
        self.critic = Critic(geo, params.base_channels, params.max_channels, params.windows, params.d_context,
                             params.stddev_group, params.fast_gp_conv)
        if params.channels_last:
            self.to(memory_format=torch.channels_last)
        self._g, self._d = runtime.maybe_compile(self.generator), runtime.maybe_compile(self.critic)
        adam = dict(lr=params.lr, betas=params.betas, eps=params.eps)
        self.optimizers = {"g": torch.optim.Adam(self.generator.parameters(), **adam),
                           "d": torch.optim.Adam(self.critic.parameters(), **adam)}

    def _latents(self, n: int, truncation: float | None = None) -> Tensor:
        z = torch.randn(n, self.params.latent_dim, device=self.rt.device, dtype=self.generator.dense.weight.dtype)
        if truncation is not None:  # truncated normal: redraw |z| > truncation (TF's truncated_normal: 2 sigma)
            bad = z.abs() > truncation
            while bad.any():
                z[bad] = torch.randn(int(bad.sum()), device=z.device, dtype=z.dtype)
                bad = z.abs() > truncation
        return z

    def _generate(self, n: int, truncation: float | None = None) -> Tensor:  # -> (n, C, N, K) float32
        with self.rt.autocast():
            return full_precision(self._g(self._latents(n, truncation)))

    def _critic(self, x: Tensor) -> Tensor:  # (B, C, N, K) -> (B,)
        if self.params.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.rt.autocast():
            return full_precision(self._d(x))

    def train_step(self, batch: Tensor, step: int) -> dict[str, Tensor]:
        b = batch.shape[0]
        # ---- critic: minimise mean D(f~) - mean D(r~) + 3 GP + 0.1 mean D(r~)^2 (with MP3net's weights) ----
        with torch.no_grad():
            fake = self._generate(b)
        d_terms = self.loss.discriminator_terms(self._critic, self.rep.critic_view(batch),
                                                self.rep.critic_view(fake), step)
        d_loss = self.loss.total(d_terms)
        self.optimizers["d"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.rt.sync_grads(self.critic)
        out = {**d_terms, "d/loss": d_loss, "d/grad_norm": grad_norm(self.critic)}
        self.optimizers["d"].step()
        # ---- generator, after every n_critic-th critic update (the original's iteration count % n_discr) ----
        if (step + 1) % self.params.n_critic == 0:
            g_terms = self.loss.generator_terms(self._critic, self.rep.critic_view(self._generate(b)))
            g_loss = self.loss.total(g_terms)
            self.optimizers["g"].zero_grad(set_to_none=True)
            g_loss.backward()
            self.rt.sync_grads(self.generator)
            out.update(g_terms, **{"g/loss": g_loss, "g/grad_norm": grad_norm(self.generator)})
            self.optimizers["g"].step()
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def sample(self, n: int, truncation: float | None = None) -> Tensor:
        """(n, C, N, K) noise-free generator output (the original's summary samples are noise-free)."""
        was = self.generator.training
        self.generator.eval()
        try:
            return self._generate(n, truncation)
        finally:
            self.generator.train(was)

    @torch.no_grad()
    def score(self, z: Tensor) -> Tensor:
        """Critic scores (B,) of encoded items, without psychoacoustic noise; batched by 8 for memory."""
        return torch.cat([self._critic(z[i:i + 8]) for i in range(0, z.shape[0], 8)])


@hookimpl
def register_models(register):
    register("mp3net", Mp3Net)
