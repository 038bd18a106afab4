"""MP3net's networks and the ``mp3net`` model plugin: the original's exact parameter counts and shapes, the windowed
top blocks against the same layers run on the whole clip, the fast-conv gradient penalty against stock autograd,
and training steps of a tiny variant built through the registry (identity representation, the real wgan_gp loss).
"""

import dataclasses

import pytest
import torch

from framework.plugin_manager import collect_registries
from framework.protocols import DataInfo, Representation
from framework.runtime import Runtime
from plugins.losses.gan import gradient_penalty
from plugins.models.mp3net import (D_CONTEXT, G_CONTEXT, G_SHAVE, Critic, CriticBlock, Generator, GeneratorBlock,
                                  Geometry, Mp3Net)
from plugins.models.mp3net_layers import Conv, ConvT, dense, he_uniform_, join_from_batch, lrelu, split_to_batch

REG = collect_registries()
# depth 3 (16 bins): one block on the whole clip and the two windowed ones; 128 blocks in 2 windows
TINY = dict(latent_dim=8, blocks=128, bins=16, base_channels=2, max_channels=8, windows=2)


class Identity(Representation):
    """The networks see the data as is; data items are already (C, N, K)."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params, *, data_info):
        super().__init__()
        self.shape = tuple(data_info.shape)

    def encode(self, x):
        return x

    def decode(self, z):
        return z


def count(module):
    return sum(p.numel() for p in module.parameters())


def build(shape=(2, 128, 16), **params):
    info = DataInfo(kind="audio", shape=shape, sample_rate=22016)
    loss_cls = REG["losses"].get("wgan_gp").cls
    loss = loss_cls(loss_cls.Params(), weights={"d/gp": 3.0, "d/drift": 0.1})  # MP3net's weights
    cls = REG["models"].get("mp3net").cls
    return cls(cls.Params(**{**TINY, **params}), representation=Identity(Identity.Params(), data_info=info),
               loss=loss, data_info=info, runtime=Runtime())


def test_the_papers_parameter_counts_and_shapes():
    geo = Geometry.of(Mp3Net.Params())
    assert (geo.channels, geo.blocks, geo.bins, geo.depth, geo.dense_time, geo.dense_bins) == (2, 16384, 128, 6, 4, 2)
    with torch.device("meta"):  # no memory, no arithmetic: shapes only
        g, d = Generator(geo), Critic(geo)
        x = g(torch.empty(3, 512))
        scores = d(x)
    assert count(g) == 58_981_762 and count(d) == 59_088_225  # the original Keras graph's counts (spec §3.6)
    assert x.shape == (3, 2, 16384, 128) and g.output_shape == (2, 16384, 128) and scores.shape == (3,)


@pytest.mark.parametrize("params", [dict(TINY), dict(TINY, bins=32, depth=3, blocks=256, windows=4),
                                    dict(TINY, bins=8, blocks=64, windows=1)])
def test_tiny_variants_forward_shapes(params):
    torch.manual_seed(0)
    geo = Geometry.of(Mp3Net.Params(**params))
    g, d = Generator(geo, 8, 2, 8), Critic(geo, 2, 8)
    x = g(torch.randn(5, 8))
    assert x.shape == (5, 2, params["blocks"], params["bins"]) and x.abs().max() < 1
    assert d(x).shape == (5,)


def test_the_top_octave_is_built_from_the_top_half_and_the_critic_mirrors_it():
    torch.manual_seed(0)
    block = GeneratorBlock(4, 6, 3)
    seen = []
    block.merge[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 4, 5, 8)
    x2 = x.clone()
    x2[..., :4] += 1.0  # change the lower half of the bins only
    block(x), block(x2)
    assert seen[0].shape == (2, 6, 10, 16)  # concatenated on frequency: [lower (8 bins), higher (8 bins)]
    assert torch.equal(seen[0][..., 8:], seen[1][..., 8:]) and not torch.equal(seen[0][..., :8], seen[1][..., :8])

    critic_block, paths = CriticBlock(3, 3, 6, 4, shave=False, fast=False), {}
    critic_block.out_low.register_forward_hook(lambda m, a, out: paths.update(low=out))
    critic_block.out_high.register_forward_hook(lambda m, a, out: paths.update(high=out))
    y = critic_block(torch.randn(2, 3, 8, 16))  # (B', out, T/4, F/2): high (4 bins) on low's top 4 bins
    assert y.shape == (2, 4, 2, 8) and paths["high"].shape == (2, 4, 2, 4)
    assert torch.equal(y[..., :4], paths["low"][..., :4])
    assert torch.equal(y[..., 4:], paths["low"][..., 4:] + paths["high"])


def _interior_rows(full: torch.Tensor, windowed: torch.Tensor, edge: int) -> float:
    return (full - windowed)[:, :, edge:full.shape[2] - edge].abs().max().item()


def test_windowed_blocks_equal_the_whole_clip_away_from_its_ends():
    """Split, context, the critic's time shaving and join are exact: the windowed top blocks give what the same
    layers give on the whole clip, except near the clip's two ends, where the windows see zero context."""
    torch.manual_seed(0)
    geo = Geometry.of(Mp3Net.Params(**dict(TINY, blocks=512, windows=4)))
    d, g = Critic(geo, 2, 8, fast=False).double(), Generator(geo, 8, 2, 8).double()
    x = torch.randn(2, 2, 512, 16, dtype=torch.float64)
    win = lrelu(d.inp(split_to_batch(x, 4, D_CONTEXT)))
    full = lrelu(d.inp(x))
    for block in d.blocks[:2]:
        win = block(win)
        block.shave = False  # the same block without shaving, on the whole clip
        full = block(full)
    win = join_from_batch(win, 4, (0, 0))  # (B, c, N/16, K/4)
    assert win.shape == full.shape == (2, 8, 32, 4)
    assert _interior_rows(full, win, 2) < 1e-12 < _interior_rows(full, win, 0)

    h = g.blocks[0](lrelu(g.dense(torch.randn(2, 8, dtype=torch.float64)).view(2, 8, 2, 8).permute(0, 3, 1, 2)))
    win, full = split_to_batch(h, 4, G_CONTEXT), h
    for block in g.blocks[1:]:
        win, full = block(win), block(full)
    win = join_from_batch(g.out(win), 4, G_SHAVE)
    full = g.out(full)
    assert win.shape == full.shape == (2, 2, 512, 16)
    assert _interior_rows(full, win, 16) < 1e-12 < _interior_rows(full, win, 0)


def test_fast_conv_gradient_penalty_equals_stock_autograd():
    """The exact GP's gradients w.r.t. every critic parameter, fast vs stock convs, float64 (rel. error < 1e-9)."""
    torch.manual_seed(1)
    geo = Geometry.of(Mp3Net.Params(**TINY))
    stock, fast = Critic(geo, 2, 8, fast=False).double(), Critic(geo, 2, 8, fast=True).double()
    fast.load_state_dict(stock.state_dict())
    real, fake = torch.randn(2, 4, 2, 128, 16, dtype=torch.float64).unbind(0)
    grads = []
    for critic in (stock, fast):
        torch.manual_seed(2)  # the same interpolation weights
        gp = gradient_penalty(critic, real, fake)
        grads.append(torch.autograd.grad(gp, list(critic.parameters()), allow_unused=True))
    flat = [torch.cat([g.flatten() for g in gs if g is not None]) for gs in grads]
    assert [g is None for g in grads[0]] == [g is None for g in grads[1]]
    assert sum(g is not None for g in grads[0]) == len(list(stock.parameters())) - 1  # all but the score's bias
    assert (flat[0] - flat[1]).norm() <= 1e-9 * flat[0].norm()


def test_train_step_updates_the_critic_every_call_and_the_generator_every_n_critic():
    torch.manual_seed(0)
    model = build(n_critic=3)
    batch = torch.rand(4, 2, 128, 16) * 0.6 - 0.3
    g_params = lambda: [p.detach().clone() for p in model.generator.parameters()]  # noqa: E731
    d_params = lambda: [p.detach().clone() for p in model.critic.parameters()]  # noqa: E731
    for step in range(6):
        g0, d0 = g_params(), d_params()
        out = model.train_step(batch, step)
        g_step = (step + 1) % 3 == 0
        assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in out.values())
        assert {"d/wasserstein", "d/gp", "d/drift", "d/loss", "d/grad_norm"} <= set(out)
        assert ({"g/adv", "g/loss", "g/grad_norm"} <= set(out)) == g_step
        assert not any(torch.equal(a, b) for a, b in zip(d0, d_params()))  # Adam moves every critic tensor
        assert all(torch.equal(a, b) for a, b in zip(g0, g_params())) != g_step
        assert all(p.requires_grad for p in model.critic.parameters())
    assert set(model.optimizers) == {"g", "d"}
    adam = model.optimizers["d"].param_groups[0]
    assert (adam["lr"], adam["betas"], adam["eps"]) == (1e-4, (0.5, 0.9), 1e-7)


def test_ema_averages_the_generator_after_its_updates_and_sample_uses_it():
    torch.manual_seed(0)
    model = build(ema=0.999)
    batch = torch.rand(2, 2, 128, 16) * 0.6 - 0.3
    before = [p.detach().clone() for p in model.generator.parameters()]
    model.train_step(batch, 0)  # n_critic 2: a critic update only, the average stays
    assert all(torch.equal(a, b) for a, b in zip(before, model.generator_ema.parameters()))
    model.train_step(batch, 1)  # the generator moves; the average takes 1 - min(0.999, 2 / 11) of the step
    d = 2 / 11
    for old, new, avg in zip(before, model.generator.parameters(), model.generator_ema.parameters()):
        assert torch.allclose(avg, d * old + (1 - d) * new.detach(), atol=1e-7)
    assert not any(p.requires_grad for p in model.generator_ema.parameters())
    torch.manual_seed(5)
    x = model.sample(2)
    torch.manual_seed(5)
    with torch.no_grad():
        want = model.generator_ema.eval()(torch.randn(2, TINY["latent_dim"]))
    assert torch.equal(x, want)
    assert any(k.startswith("generator_ema.") for k in model.state_dict()) and build().generator_ema is None
    with pytest.raises(ValueError, match="model.params.ema"):
        build(ema=-0.1)


def test_fast_stock_and_channels_last_make_the_same_training_step():
    outs = []
    for fast, channels_last in ((False, False), (True, False), (True, True)):
        torch.manual_seed(3)
        model = build(fast_gp_conv=fast, channels_last=channels_last).double()
        batch = torch.rand(2, 2, 128, 16, dtype=torch.float64) * 0.6 - 0.3
        outs.append(model.train_step(batch, 1))  # a critic and a generator update
    for out in outs[1:]:
        assert out.keys() == outs[0].keys()
        for k in out:
            assert torch.allclose(out[k], outs[0][k], rtol=1e-9, atol=1e-12), k


def test_sample_and_score():
    torch.manual_seed(0)
    model = build()
    s = model.sample(3, truncation=2.0)
    assert s.shape == (3, 2, 128, 16) and s.dtype == torch.float32 and s.abs().max() < 1
    assert model.sample(2).shape == (2, 2, 128, 16)
    z = model._latents(4000, truncation=0.5)
    # redrawn, not clipped: N(0, 1) truncated to +-0.5 has std 0.284 (clipped to +-0.5: 0.43)
    assert z.abs().max() <= 0.5 and 0.26 < z.std() < 0.31
    scores = model.score(s)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert model.generator.training and model.critic.training  # eval mode only inside sample / score
    with pytest.raises(ValueError, match="truncation"):
        model.sample(1, truncation=0.0)


def test_checkpoint_state_holds_each_network_once():
    model = build()
    keys = model.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"generator", "critic"}
    assert sum(v.numel() for v in model.state_dict().values()) == count(model.generator) + count(model.critic)


def test_critic_width_can_differ_from_the_generators():
    m, wide = build(), build(critic_base_channels=4)
    assert count(wide.generator) == count(m.generator)
    assert count(wide.critic) == count(Critic(Geometry.of(Mp3Net.Params(**TINY)), 4, 8))  # d = 4, cap 8
    assert count(wide.critic) > count(m.critic)


def test_g_norm_batch_normalises_every_generator_activation_and_samples_with_running_statistics():
    plain, normed = build(), build(g_norm="batch")
    bns = [m for m in normed.generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # one before the dense layer's activation and six per block (higher and lower paths, merge), each 2 x width
    convs_before_activation = 1 + 6 * len(normed.generator.blocks)
    assert len(bns) == convs_before_activation and not any(isinstance(m, torch.nn.BatchNorm2d)
                                                           for m in plain.generator.modules())
    assert count(normed.generator) == count(plain.generator) + sum(2 * b.num_features for b in bns)
    assert count(normed.critic) == count(plain.critic)
    torch.manual_seed(0)
    batch = torch.rand(4, 2, 128, 16) * 0.6 - 0.3
    for step in range(2):
        out = normed.train_step(batch, step)
        assert all(torch.isfinite(v).all() for v in out.values())
    assert all(b.num_batches_tracked > 0 for b in bns)  # statistics gathered in training ...
    torch.manual_seed(1)
    one = normed.sample(1)  # ... and used in eval mode, so one item can be sampled alone
    assert one.shape == (1, 2, 128, 16) and torch.isfinite(one).all() and normed.generator.training


def test_representation_shape_mismatch_names_the_params():
    with pytest.raises(ValueError, match=r"model.params channels: 2, blocks: 256, bins: 16"):
        build(shape=(2, 256, 16))
    with pytest.raises(ValueError, match=r"items \(channels, blocks, bins\), got shape \(2, 2048\)"):
        build(shape=(2, 2048))


@pytest.mark.parametrize("params, match", [
    (dict(bins=48), "bins = 48 is not a power of two"),
    (dict(bins=4), "at least 2 blocks"),
    (dict(bins=40, depth=3), "bins = 40 must be a multiple of 2\\^\\(depth \\+ 1\\) = 16"),
    (dict(blocks=96), "blocks = 96 must be a positive multiple of 4\\^depth = 64"),
    (dict(windows=3), "windows = 3 must divide blocks / 16 = 8"),
    (dict(n_critic=0), "n_critic"),
    (dict(init="kaiming"), "init must be 'glorot'"),
    (dict(critic_base_channels=0), "critic_base_channels must be >= 1"),
    (dict(g_norm="layer"), "g_norm must be 'none' \\(the paper\\) or 'batch'"),
])
def test_bad_params_name_the_fix(params, match):
    with pytest.raises(ValueError, match=match):
        build(**params)


@pytest.mark.parametrize("layer", [Conv(64, 64, 3), Conv(64, 128, 3, stride=(2, 2)), ConvT(64, 64, 3, stride=(2, 2)),
                                   ConvT(128, 64, 3, stride=(2, 1)), ConvT(64, 64, 1), dense(1024, 512)],
                         ids=["conv", "conv-stride2", "convT-stride2", "convT-stride2x1", "convT-1x1", "dense"])
def test_he_init_keeps_the_second_moment_through_leaky_relu(layer):
    # He et al. 2015, eq. 10 with LeakyReLU(0.2): E[lrelu(W x)^2] = E[x^2] for zero-mean W; for a transposed conv
    # the fan-in is what one output sees, k^2 c_in / (s_h s_w), averaged over the output phases (the model's
    # strides and kernels)
    torch.manual_seed(0)
    he_uniform_(layer)
    x = torch.randn(4, 1024) if isinstance(layer, torch.nn.Linear) else torch.randn(4, layer.weight.shape[
        1 if isinstance(layer, Conv) else 0], 32, 32)
    with torch.no_grad():
        ratio = (lrelu(layer(x)).square().mean() / x.square().mean()).item()
    assert 0.8 < ratio < 1.25, ratio
    assert layer.bias.abs().max() == 0


def test_he_init_gives_the_untrained_critic_a_usable_input_gradient():
    # the paper's Glorot critic starts with |grad_x D| ~ 1e-4 where the penalty asks for 1 (docs/notes/mp3net-small-cpu.md);
    # init "he" starts it near the penalty's target 1. The generator keeps an unsaturated tanh output.
    def critic_grad_and_g_level(init):
        torch.manual_seed(0)
        model = build(init=init)
        x = (torch.randn(8, 2, 128, 16) * 3e-3).requires_grad_(True)
        grad, = torch.autograd.grad(model.critic(x).sum(), x)
        with torch.no_grad():
            y = model.generator(torch.randn(8, 8))
        return grad.flatten(1).norm(dim=1).mean().item(), y.abs().max().item()

    g_glorot, _ = critic_grad_and_g_level("glorot")
    g_he, out_he = critic_grad_and_g_level("he")
    g_he_critic, _ = critic_grad_and_g_level("he_critic")
    assert g_glorot < 0.05 and 0.2 < g_he < 5 and 0.2 < g_he_critic < 5, (g_glorot, g_he, g_he_critic)
    assert out_he < 0.5


def test_registered_name():
    assert REG["models"].get("mp3net").cls is Mp3Net
