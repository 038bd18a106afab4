"""MP3net: the paper's parameter counts and shapes, geometry errors, and training steps of a small variant
through the registry with the real mdct_psy representation and wgan_gp loss."""

import pytest
import torch

from framework.plugin_manager import collect_registries
from framework.protocols import DataInfo
from framework.runtime import Runtime
from plugins.models.mp3net import Critic, Generator, Geometry

REG = collect_registries()
SMALL = dict(latent_dim=32, base_channels=2, max_channels=16, windows=2)


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_paper_parameter_counts_and_shapes():
    geo = Geometry.of((2, 16384, 128), 128)
    assert (geo.n_blocks, geo.dense_time) == (6, 4)
    with torch.device("meta"):
        g = Generator(geo, 512, 16, 512, 128, (4, 2))
        d = Critic(geo, 16, 512, 128, (35, 50), 8, fast=True)
        x = g(torch.empty(2, 512))
        score = d(x)
    assert count(g) == 58_981_762 and count(d) == 59_088_225
    assert x.shape == (2, 2, 16384, 128) and score.shape == (2,)


def build(bins=32, blocks=256, loss="wgan_gp", **params):
    rep_cls = REG["representations"].get("mdct_psy").cls
    info = DataInfo(kind="audio", shape=(2, (blocks - 1) * bins), sample_rate=22016)
    rep = rep_cls(rep_cls.Params(bins=bins), data_info=info)
    loss_cls = REG["losses"].get(loss).cls
    lo = loss_cls(loss_cls.Params(), weights={"d/gp": 3.0, "d/drift": 0.1} if loss == "wgan_gp" else None)
    cls = REG["models"].get("mp3net").cls
    return cls(cls.Params(**{**SMALL, **params}), representation=rep, loss=lo, data_info=info, runtime=Runtime()), rep


def test_small_variant_trains_and_updates_g_every_n_critic():
    torch.manual_seed(0)
    model, rep = build()
    assert rep.shape == (2, 256, 32)
    x = rep.encode(torch.rand(4, *DataInfo(kind="audio", shape=(2, 255 * 32)).shape) * 0.2 - 0.1)
    g_before = [p.clone() for p in model.generator.parameters()]
    out0 = model.train_step(x, 0)
    assert "g/loss" not in out0 and all(torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters()))
    out1 = model.train_step(x, 1)
    assert {"d/wasserstein", "d/gp", "d/drift", "d/loss", "g/adv", "g/loss"} <= set(out1)
    assert all(torch.isfinite(v) for v in out1.values())
    assert not all(torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters()))
    s = model.sample(3, truncation=2.0)
    assert s.shape == (3, 2, 256, 32) and s.abs().max() < 1 and model.score(s).shape == (3,)


def test_geometry_errors_name_the_fix():
    with pytest.raises(ValueError, match="multiple of 4\\^4 = 256 MDCT blocks"):
        Geometry.of((2, 300, 32), 1)
    with pytest.raises(ValueError, match="bins"):
        Geometry.of((2, 256, 48), 1)
    with pytest.raises(ValueError, match="windows"):
        Geometry.of((2, 256, 32), 3)


def test_fast_and_stock_convs_compute_the_same_losses():
    """The optimised critic path computes the same step as the naive one (same seeds, float64)."""
    outs = []
    for fast in (True, False):
        torch.manual_seed(3)
        model, rep = build(fast_gp_conv=fast)
        model.double()
        torch.manual_seed(4)
        x = rep.encode(torch.rand(2, 2, 255 * 32, dtype=torch.float64) * 0.2 - 0.1)
        outs.append(model.train_step(x, 1))
    for k in outs[0]:
        assert torch.allclose(outs[0][k], outs[1][k], rtol=1e-9), k
