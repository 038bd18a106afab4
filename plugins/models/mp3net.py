"""MP3net (van den Broek 2021): the generator, the critic and the ``mp3net`` model plugin (WGAN-GP on MDCTs).

Architecture of the original's final stage, layer for layer (docs/reference/mp3net-spec.md §3). Tensors are
(B, C, N, K) = (batch, audio channels, MDCT blocks (time) = H, bins (frequency) = W), the original's NHWC
[B, blocks, freqs, channels] permuted. With ``depth`` = n blocks (the paper: 6, for K = 128 bins):

    G: z (B, 512) -> Dense -> (B, 512, N/4^n, K/2^n) -> LReLU
         -> blocks 0 .. n-3 on the whole clip (x4 time, x2 bins each; long-range structure)
         -> split_to_batch(windows, context 4 | 2) -> blocks n-2, n-1 per window -> 1x1 conv -> C channels
         -> join_from_batch(shave 64 | 32) -> tanh                           (B, C, N, K)
    D: (B, C, N, K) -> split_to_batch(windows, context 35 | 50) -> 1x1 conv -> LReLU
         -> blocks n-1, n-2 per window, with the original's time shaving -> join_from_batch
         -> blocks n-3 .. 0 on the whole clip -> minibatch stddev (groups of 8) -> Dense 512 -> LReLU -> Dense 1

With the default Params (K = 128, N = 16384 = 95.26 s at 22016 Hz) the parameter counts are exactly the original
Keras graph's: 58,981,762 (G) and 59,088,225 (D) (tested). Width (``base_channels``, ``max_channels``), depth and
clip length (``blocks``) are Params, so the small variants of the tests and experiments are the same code.

Training (spec §4): each ``train_step`` is one critic update; after every ``n_critic``-th one, one generator
update; Adam(1e-4, (0.5, 0.9), eps 1e-7) for both, no schedule (the 95 s model); ``late_beta1`` sets Adam's beta1
from critic iteration ``late_beta1_from`` on, as the paper's 5 s model (§4.2.2: 0 for the last 18,000 of 160,000). The loss plugin supplies the terms (MP3net:
``wgan_gp`` weighted d/gp 3.0 and d/drift 0.1) and the representation's ``critic_view`` what the critic sees of
reals and fakes alike (``mdct_psy``: threshold-scaled noise, gradients not stopped through the fakes' threshold).

Init: Glorot-uniform kernels and zero biases, as Keras (the default, ``init: glorot``). ``init: he`` draws every
kernel from He et al. 2015's leaky-ReLU init instead (the generator's output conv scaled by ``HE_OUTPUT_GAIN``), and
``he_critic`` only the critic's: the Glorot critic starts with an input gradient of ~1e-4 (the penalty asks for 1),
and the small CPU spec trains measurably better with ``he`` (docs/notes/mp3net-small-cpu.md, "Initialisation").

``ema`` > 0 samples from an exponential moving average of G's weights (averaging.py; the original has none, so it
is off by default).

Deliberately not here: the progressive-growing stages of the original code (not used by the released run, §3.1)
and the original's single-device minibatch-stddev quirk (§3.5).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from framework import hookimpl
from framework.protocols import DataInfo, Loss, Model, Representation
from framework.runtime import Runtime
from plugins.models.averaging import averaged_copy, update_average_
from plugins.models.mp3net_layers import (Conv, ConvT, MinibatchStddev, dense, full_precision, he_uniform_,
                                          join_from_batch, lrelu, split_to_batch)

G_CONTEXT = (4, 2)  # rows of past | future context per window where G splits (spec §3.4 step 4)
G_SHAVE = (64, 32)  # G_CONTEXT after two blocks of x4 time: shaved off at the join (spec §3.4 step 7)
D_CONTEXT = (35, 50)  # critic window context in MDCT blocks (spec §3.5 step 2); the shaving below assumes 85 rows
HE_OUTPUT_GAIN = 0.01  # init "he": G's output conv scale; an untrained clip then starts at -37 to -47 dB, near
#                       piano's low-band level (-52 dB), instead of a saturated tanh (docs/notes/mp3net-small-cpu.md)
CRITIC_DENSE = 512  # units of the critic's hidden Dense (spec §3.5 step 10), capped by max_channels


def channel_plan(depth: int, base: int, cap: int) -> list[tuple[int, int, int]]:
    """Generator (in, mid, out) widths per block i: min(cap, (4, 2, 1) 4^(depth-1-i) base) (spec §3.1); the
    critic's block i uses (out, mid, in) of the same tuple."""
    return [tuple(min(cap, m * 4 ** (depth - 1 - i) * base) for m in (4, 2, 1)) for i in range(depth)]


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Clip geometry of one encoded item (C, N, K) and the network depth, validated."""

    channels: int  # C
    blocks: int  # N
    bins: int  # K
    depth: int  # number of generator (= critic) blocks
    windows: int  # time windows of the two top blocks

    @property
    def dense_time(self) -> int:  # rows of the dense layer's grid: N / 4^depth
        return self.blocks // 4 ** self.depth

    @property
    def dense_bins(self) -> int:  # bins of the dense layer's grid: K / 2^depth (the paper: 2)
        return self.bins // 2 ** self.depth

    @classmethod
    def of(cls, p: "Mp3Net.Params") -> "Geometry":
        """Check ``model.params``; every message names the Params to change."""
        depth = p.depth
        if depth is None:
            depth = int(round(math.log2(p.bins))) - 1 if p.bins > 0 else 0
            if 2 ** (depth + 1) != p.bins:
                raise ValueError(f"model.params.bins = {p.bins} is not a power of two, so the depth cannot be derived "
                                 f"(log2(bins) - 1); set model.params.depth, or bins to 8, 16, ..., 128")
        if depth < 2:
            raise ValueError(f"model.params.depth = {depth}: MP3net needs at least 2 blocks (the last two are "
                             f"windowed); raise model.params.depth or model.params.bins (>= 8)")
        if p.bins % 2 ** (depth + 1):
            raise ValueError(f"model.params.bins = {p.bins} must be a multiple of 2^(depth + 1) = {2 ** (depth + 1)} "
                             f"(each of the {depth} blocks doubles the bins of an even-sized dense grid); "
                             f"change model.params.bins or model.params.depth")
        if p.blocks <= 0 or p.blocks % 4 ** depth:
            raise ValueError(f"model.params.blocks = {p.blocks} must be a positive multiple of 4^depth = "
                             f"{4 ** depth} MDCT blocks ({depth} blocks of x4 time); change model.params.blocks "
                             f"(and the dataset's window to (blocks - 1) * bins samples) or model.params.depth")
        if p.windows < 1 or (p.blocks // 16) % p.windows:
            raise ValueError(f"model.params.windows = {p.windows} must divide blocks / 16 = {p.blocks // 16} (the "
                             f"two top blocks run on windows of a multiple of 16 MDCT blocks); change "
                             f"model.params.windows")
        for name in ("channels", "latent_dim", "base_channels", "max_channels"):
            if getattr(p, name) < 1:
                raise ValueError(f"model.params.{name} must be >= 1, got {getattr(p, name)}")
        return cls(p.channels, p.blocks, p.bins, depth, p.windows)


# ---------------------------------------------------------------------------------------------------- generator


class GeneratorBlock(nn.Module):
    """(B, c_in, T, F) -> (B, out, 4T, 2F) (spec §3.4 step 2).

    The lower path (all bins) and the higher path (top half of the bins, which builds the new top octave) each
    double the time, a 1x1 conv "rebalances" each without activation, the two are concatenated on frequency
    [lower, higher] and a last pair of convs doubles the time again. ``norm``: a BatchNorm2d before every
    activation (not in the paper; see :class:`Generator`).
    """

    def __init__(self, c_in: int, mid: int, out: int, norm: bool = False):
        super().__init__()
        self.high = nn.ModuleList([ConvT(c_in, mid, 3, (2, 2)), ConvT(mid, mid, 3)])  # Keras 0.2x2H, 1.1x1H
        self.low = nn.ModuleList([ConvT(c_in, mid, 3, (2, 1)), ConvT(mid, mid, 3)])  # 0.2x1L, 1.1x1L
        self.rebalance_high, self.rebalance_low = ConvT(mid, mid, 1), ConvT(mid, mid, 1)  # 2.1x1H, 2.1x1L
        self.merge = nn.ModuleList([ConvT(mid, out, 3, (2, 1)), ConvT(out, out, 3)])  # 3.2x1, 4.1x1
        self.norm_high, self.norm_low = _norms((mid, mid), norm), _norms((mid, mid), norm)
        self.norm_merge = _norms((out, out), norm)  # when off: nn.Identity, no state (checkpoints unchanged)

    def forward(self, x: Tensor) -> Tensor:
        high = x[..., x.shape[-1] // 2:]  # (B, c_in, T, F/2)
        for conv, norm in zip(self.high, self.norm_high):
            high = lrelu(norm(conv(high)))  # -> (B, mid, 2T, F)
        low = x
        for conv, norm in zip(self.low, self.norm_low):
            low = lrelu(norm(conv(low)))  # -> (B, mid, 2T, F)
        y = torch.cat([self.rebalance_low(low), self.rebalance_high(high)], dim=-1)  # (B, mid, 2T, 2F)
        for conv, norm in zip(self.merge, self.norm_merge):
            y = lrelu(norm(conv(y)))  # -> (B, out, 4T, 2F)
        return y


def _norms(widths: tuple[int, ...], on: bool) -> nn.ModuleList:
    return nn.ModuleList([nn.BatchNorm2d(c) if on else nn.Identity() for c in widths])


class Generator(nn.Module):
    """z (B, latent_dim) -> (B, C, N, K) in (-1, 1) (spec §3.4).

    ``norm`` (not in the paper, which has no normalisation in G or D, spec §3.1) puts a BatchNorm2d before every
    LeakyReLU, as DCGAN's generator. Why: without it the untrained generator's output is mostly the same for every
    z (a deep LeakyReLU stack adds a positive mean at each activation, which the next conv carries on as a fixed
    pattern: ~85 % of 16 samples' energy is common to all of them, docs/notes/mp3net-small-cpu.md "Samples that do not depend on
    z"). Batch statistics remove each channel's mean at every layer, not a pattern that varies with position:
    measured on the small spec, the share falls to ~63 % untrained and 56 - 64 % after 300 steps, and the run
    learns the level profile more slowly. The windowed top blocks normalise over all windows of the batch.
    """

    def __init__(self, geo: Geometry, latent_dim: int = 512, base: int = 16, cap: int = 512, norm: bool = False):
        super().__init__()
        self.geo = geo
        plan = channel_plan(geo.depth, base, cap)
        self.c0 = plan[0][0]  # the paper: 512 = "in" of block 0
        self.dense = dense(latent_dim, geo.dense_time * geo.dense_bins * self.c0)  # Keras "generator_conv2dt.4x1"
        widths_in = [self.c0] + [out for _, _, out in plan[:-1]]
        self.dense_norm = nn.BatchNorm2d(self.c0) if norm else nn.Identity()
        self.blocks = nn.ModuleList([GeneratorBlock(c, mid, out, norm) for c, (_, mid, out) in zip(widths_in, plan)])
        self.out = Conv(plan[-1][2], geo.channels, 1)  # Keras "generator_output_conv2d_new", no activation

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(C, N, K) of one generated item."""
        return self.geo.channels, self.geo.blocks, self.geo.bins

    def forward(self, z: Tensor) -> Tensor:  # (B, latent_dim) -> (B, C, N, K)
        B, geo = z.shape[0], self.geo
        x = self.dense(z).view(B, geo.dense_time, geo.dense_bins, self.c0).permute(0, 3, 1, 2)  # Keras (t, f, c)
        x = lrelu(self.dense_norm(x))  # (B, c0, N/4^n, K/2^n)
        for block in self.blocks[:-2]:
            x = block(x)  # -> (B, c, N/16, K/4)
        # the two top blocks per window: memory, and each window sees only its local context (spec §3.4 step 5)
        x = split_to_batch(x, geo.windows, G_CONTEXT)  # (B S, c, N/16/S + 6, K/4)
        for block in self.blocks[-2:]:
            x = block(x)  # -> (B S, c', 16 (N/16/S + 6), K)
        x = join_from_batch(self.out(x), geo.windows, G_SHAVE)  # (B, C, N, K)
        return torch.tanh(full_precision(x))  # the original casts to float32 before tanh


# ------------------------------------------------------------------------------------------------------- critic


class CriticBlock(nn.Module):
    """(B', c, T, F) -> (B', out, T/4, F/2), the mirror of :class:`GeneratorBlock` (spec §3.5 step 4).

    With ``shave`` (the two windowed blocks) the time axis is trimmed after each conv and before its activation
    exactly as the original: after the stride-1 convs the first row, after the time-stride-2 convs the last row,
    after the 1x1 convs the first and last rows (213 -> 49 -> 8 rows for the paper's windows of 128 + 85).
    """

    def __init__(self, c: int, a: int, mid: int, out: int, shave: bool, fast: bool):
        super().__init__()
        self.shave = shave
        self.first, self.down = Conv(c, a, 3, fast=fast), Conv(a, mid, 3, (2, 1), fast=fast)  # Keras 4.1x1, 3.2x1
        self.high = nn.ModuleList([Conv(mid, mid, 3, fast=fast), Conv(mid, out, 3, (2, 2), fast=fast)])  # 2.1x1H 1.2x2H
        self.low = nn.ModuleList([Conv(mid, mid, 3, fast=fast), Conv(mid, out, 3, (2, 1), fast=fast)])  # 2.1x1L 1.2x1L
        self.out_high, self.out_low = Conv(out, out, 1, fast=fast), Conv(out, out, 1, fast=fast)  # 0.1x1H, 0.1x1L

    def _trim(self, x: Tensor, first: int, last: int) -> Tensor:
        return x[:, :, first:x.shape[2] - last] if self.shave else x

    def forward(self, x: Tensor) -> Tensor:
        x = lrelu(self._trim(self.first(x), 1, 0))
        x = lrelu(self._trim(self.down(x), 0, 1))  # (B', mid, T/2, F)
        half = x.shape[-1] // 2
        paths = []
        for convs, y in ((self.low, x[..., :half]), (self.high, x[..., half:])):
            y = lrelu(self._trim(convs[0](y), 1, 0))
            paths.append(lrelu(self._trim(convs[1](y), 0, 1)))
        low = self._trim(self.out_low(paths[0]), 1, 1)  # (B', out, T/4, F/2)
        high = self._trim(self.out_high(paths[1]), 1, 1)  # (B', out, T/4, F/4)
        # zero-pad the higher octave on its low-frequency side so it lines up with the top half of lower's bins
        return low + nn.functional.pad(high, (low.shape[-1] - high.shape[-1], 0))


class Critic(nn.Module):
    """(B, C, N, K) -> scores (B,) (spec §3.5). ``fast``: convs with a differentiable backward (fast exact GP)."""

    def __init__(self, geo: Geometry, base: int = 16, cap: int = 512, stddev_group: int = 8, fast: bool = True):
        super().__init__()
        self.geo = geo
        plan = channel_plan(geo.depth, base, cap)
        c = plan[-1][2]  # the input 1x1 conv widens C channels to the top block's "a" (the paper: 16)
        self.inp = Conv(geo.channels, c, 1, fast=fast)  # Keras "discriminator_output_conv2d_new"
        blocks = []
        for i in reversed(range(geo.depth)):  # top block first
            c_in_g, mid, out_g = plan[i]
            blocks.append(CriticBlock(c, out_g, mid, c_in_g, shave=i >= geo.depth - 2, fast=fast))
            c = c_in_g
        self.blocks = nn.ModuleList(blocks)
        self.stddev = MinibatchStddev(stddev_group)
        self.dense = dense(geo.dense_time * geo.dense_bins * (c + 1), min(CRITIC_DENSE, cap))
        self.score = dense(self.dense.out_features, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, N, K) -> (B,)
        geo = self.geo
        x = split_to_batch(x, geo.windows, D_CONTEXT)  # (B S, C, N/S + 85, K)
        x = lrelu(self.inp(x))
        for block in self.blocks[:2]:
            x = block(x)  # shaved: -> (B S, c, N/S/16, K/4)
        x = join_from_batch(x, geo.windows, (0, 0))  # (B, c, N/16, K/4)
        for block in self.blocks[2:]:
            x = block(x)  # -> (B, c, N/4^n, K/2^n)
        x = self.stddev(x)  # (B, c + 1, N/4^n, K/2^n)
        x = lrelu(self.dense(x.permute(0, 2, 3, 1).flatten(1)))  # Keras' flatten order (h, w, c)
        with _no_autocast(x.device.type):  # the score layer in float32 at least, as the original (§4.2)
            return self.score(full_precision(x)).squeeze(1)


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` without gradients inside the block: the generator update backpropagates through
    the critic to its input only, and the critic's weight gradients would be wasted work."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _grad_norm(module: nn.Module) -> Tensor:
    """L2 norm of all parameter gradients, a 0-dim float32 tensor (no host sync)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


# ---------------------------------------------------------------------------------------------------- the model


class Mp3Net(Model):
    """The ``mp3net`` model: MP3net's generator and critic trained as a WGAN with the spec's loss (module doc)."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        latent_dim: int = 512  # z ~ N(0, I_512) (spec §0)
        blocks: int = 16384  # N, clip length in MDCT blocks: 95.26 s at 128 bins and 22016 Hz; multiple of 4^depth
        bins: int = 128  # K, MDCT bins
        channels: int = 2  # C, audio channels (stereo)
        depth: Optional[int] = None  # generator/critic blocks; None: log2(bins) - 1 (the paper's 6: dense grid 2 bins)
        base_channels: int = 16  # d of the width plan min(cap, (4, 2, 1) 4^(depth-1-i) d) (spec §3.1)
        max_channels: int = 512  # cap of the width plan (also caps the critic's Dense 512)
        critic_base_channels: Optional[int] = None  # the critic's own d (None: base_channels, as the paper)
        windows: int = 128  # time windows of the two top blocks of G and D (spec §3.4-3.5); divides blocks / 16
        stddev_group: int = 8  # minibatch-stddev group size (the original: 8 TPU replicas)
        n_critic: int = 2  # critic updates per generator update (n_discr, Colab notebook)
        lr: float = 1e-4  # Adam, G and D alike, no schedule (spec §4.2)
        betas: tuple[float, float] = (0.5, 0.9)
        eps: float = 1e-7  # Keras' Adam default, as the original (PyTorch's is 1e-8)
        fast_gp_conv: bool = True  # critic convs with a differentiable backward: same numbers, fast exact GP
        channels_last: bool = False  # NHWC memory format for the convs (faster with cuDNN; no gain on CPU)
        init: str = "glorot"  # kernels: "glorot" (the paper), "he" (G and D), "he_critic" (D only); see he_uniform_
        ema: float = 0.0  # decay of a generator-weight average that sample() uses (0: off, the paper; averaging.py)
        g_norm: str = "none"  # "none" (the paper) | "batch": BatchNorm2d before every activation of G (Generator)
        late_beta1: Optional[float] = None  # Adam beta1 of G and D from step late_beta1_from on (None: betas[0] always)
        late_beta1_from: int = 0  # critic iteration where late_beta1 starts (the 5 s model: 142,000 of 160,000)

    def __init__(self, params: "Mp3Net.Params", *, representation: Representation, loss: Loss,
                 data_info: DataInfo, runtime: Runtime):
        super().__init__()
        if params.n_critic < 1:
            raise ValueError(f"model.params.n_critic must be >= 1, got {params.n_critic}")
        if params.g_norm not in ("none", "batch"):
            raise ValueError(f"model.params.g_norm must be 'none' (the paper) or 'batch', got {params.g_norm!r}")
        if params.init not in ("glorot", "he", "he_critic"):
            raise ValueError(f"model.params.init must be 'glorot' (the paper), 'he' or 'he_critic', got {params.init!r}")
        if params.late_beta1 is not None and not (0.0 <= params.late_beta1 < 1.0 and params.late_beta1_from >= 0):
            raise ValueError(f"model.params.late_beta1 must be in [0, 1) and late_beta1_from >= 0, got "
                             f"{params.late_beta1} from {params.late_beta1_from}; or late_beta1: null (no schedule)")
        self.params, self.loss, self.rt = params, loss, runtime
        geo = Geometry.of(params)
        rep_shape = tuple(representation.shape)
        if len(rep_shape) != 3:
            raise ValueError(f"mp3net needs a representation with items (channels, blocks, bins), got shape "
                             f"{rep_shape}; use representation mdct or mdct_psy (or raw with block_size)")
        self.generator = Generator(geo, params.latent_dim, params.base_channels, params.max_channels,
                                   params.g_norm == "batch")
        if self.generator.output_shape != rep_shape:
            c, n, k = rep_shape
            raise ValueError(f"mp3net generates items of shape (channels, blocks, bins) = "
                             f"{self.generator.output_shape} but the representation encodes {rep_shape}; set "
                             f"model.params channels: {c}, blocks: {n}, bins: {k} (or change the dataset's window "
                             f"or the representation's bins)")
        d = params.base_channels if params.critic_base_channels is None else params.critic_base_channels
        if d < 1:
            raise ValueError(f"model.params.critic_base_channels must be >= 1 (or null: base_channels), got {d}")
        self.critic = Critic(geo, d, params.max_channels, params.stddev_group, params.fast_gp_conv)
        if params.init != "glorot":
            he_uniform_(self.critic)
        if params.init == "he":
            he_uniform_(self.generator)
            with torch.no_grad():  # He keeps the latent's unit variance: the tanh output would start saturated
                self.generator.out.weight.mul_(HE_OUTPUT_GAIN)
        if params.channels_last:
            self.to(memory_format=torch.channels_last)
        self.generator_ema = averaged_copy(self.generator, params.ema)  # a submodule: checkpoints carry it
        # Kept outside the module tree (plain attributes): the representation is built and moved by the core and
        # is not model state; the compiled wrappers share the networks' parameters, which must not be stored twice.
        object.__setattr__(self, "rep", representation)
        object.__setattr__(self, "_g", runtime.maybe_compile(self.generator))
        object.__setattr__(self, "_d", runtime.maybe_compile(self.critic))
        adam = dict(lr=params.lr, betas=params.betas, eps=params.eps)
        self.optimizers = {"g": torch.optim.Adam(self.generator.parameters(), **adam),
                           "d": torch.optim.Adam(self.critic.parameters(), **adam)}

    # ---- network calls ----

    def _latents(self, n: int, truncation: float | None = None) -> Tensor:  # -> (n, latent_dim)
        z = torch.randn(n, self.params.latent_dim, device=self.generator.dense.weight.device,
                        dtype=self.generator.dense.weight.dtype)
        if truncation is not None:  # the original's inference: truncated normal, redraw |z| > truncation (§4.5)
            if truncation <= 0:
                raise ValueError(f"truncation must be > 0 (the original uses 2.0), got {truncation}")
            bad = z.abs() > truncation
            while bad.any():  # host sync, in sampling only
                z[bad] = torch.randn(int(bad.sum()), device=z.device, dtype=z.dtype)
                bad = z.abs() > truncation
        return z

    def _generate(self, n: int, truncation: float | None = None, net: nn.Module | None = None) -> Tensor:
        """(n, C, N, K), float32 at least, from ``net`` (default: the live generator, compiled if asked)."""
        z = self._latents(n, truncation)
        with self.rt.autocast():
            return full_precision((self._g if net is None else net)(z))

    def _critic(self, x: Tensor, compiled: bool = True) -> Tensor:  # (B, C, N, K) -> (B,)
        if self.params.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.rt.autocast():
            return full_precision((self._d if compiled else self.critic)(x))

    def _critic_d(self, x: Tensor) -> Tensor:
        """The critic for the critic update. An input that requires grad is the penalty's interpolate, whose
        gradient is differentiated again; torch.compile cannot do double backward, so it runs eagerly."""
        return self._critic(x, compiled=not x.requires_grad)

    # ---- training ----

    def train_step(self, batch: Tensor, step: int) -> dict[str, Tensor]:
        """One critic update on ``batch`` (B, C, N, K); after every ``n_critic``-th call ((step + 1) % n_critic == 0,
        i.e. after the critic's iteration count is incremented, as the original) one generator update."""
        b = batch.shape[0]
        if self.params.late_beta1 is not None:
            self._set_beta1(step)
        # ---- critic: minimise the d/ terms (MP3net: mean D(f~) - mean D(r~) + 3.0 GP + 0.1 mean D(r~)^2) ----
        with torch.no_grad():
            fake = self._generate(b)  # (B, C, N, K)
        d_terms = self.loss.discriminator_terms(self._critic_d, self.rep.critic_view(batch),
                                                self.rep.critic_view(fake), step)
        d_loss = self.loss.total(d_terms)
        self.optimizers["d"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.rt.sync_grads(self.critic)
        out = {**d_terms, "d/loss": d_loss, "d/grad_norm": _grad_norm(self.critic)}
        self.optimizers["d"].step()
        # ---- generator: minimise the g/ terms (MP3net: -mean D(f~)), fresh z, through the critic ----
        if (step + 1) % self.params.n_critic == 0:
            with _frozen(self.critic):
                g_terms = self.loss.generator_terms(self._critic, self.rep.critic_view(self._generate(b)))
                g_loss = self.loss.total(g_terms)
                self.optimizers["g"].zero_grad(set_to_none=True)
                g_loss.backward()
            self.rt.sync_grads(self.generator)
            out.update(g_terms, **{"g/loss": g_loss, "g/grad_norm": _grad_norm(self.generator)})
            self.optimizers["g"].step()
            if self.generator_ema is not None:
                update_average_(self.generator_ema, self.generator, self.params.ema, step)
        return {k: v.detach() for k, v in out.items()}

    def _set_beta1(self, step: int) -> None:
        """Adam's beta1 for this step: a function of the step alone, so a resumed run continues the schedule."""
        p = self.params
        beta1 = p.late_beta1 if step >= p.late_beta1_from else p.betas[0]
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["betas"] = (beta1, group["betas"][1])

    # ---- inference ----

    @torch.no_grad()
    def sample(self, n: int, truncation: float | None = None) -> Tensor:
        """(n, C, N, K) float32: G(z) in eval mode, noise-free (the original's summary samples are), z truncated
        normal when ``truncation`` is given (the original's inference: 2.0), standard normal otherwise. With
        ``ema`` > 0, G is the weight average."""
        ema = self.generator_ema
        with _eval(self.generator if ema is None else ema):
            return self._generate(n, truncation, ema).float()

    @torch.no_grad()
    def score(self, z: Tensor) -> Tensor:
        """Critic scores (B,) float32 of encoded items (B, C, N, K), eval mode, one batch. ``critic_view`` is not
        applied: the best/median/worst picks rank the clean items, as the original's summaries did. The
        minibatch-stddev feature makes a score depend on the items grouped with it (groups of up to 8 of the
        batch), so scores compare items of one call."""
        with _eval(self.critic):
            return self._critic(z).float()


@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


@hookimpl
def register_models(register):
    register("mp3net", Mp3Net)
