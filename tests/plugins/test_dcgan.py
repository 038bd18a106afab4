"""The ``dcgan`` model through the registry: shapes and ranges, parameter counts against the layer formula,
one optimisation step per call with every loss plugin, n_critic, the critic norm that keeps WGAN-GP valid
(scores of one item independent of the rest of the batch), gradient sync before each optimiser step, and
checkpoint round trips."""

import io

import pytest
import torch
from torch import nn

from framework.plugin_manager import collect_registries
from framework.protocols import DataInfo
from framework.runtime import Runtime

REG = collect_registries()
INFO = DataInfo(kind="image", shape=(1, 28, 28))


def build(loss="bce", runtime=None, info=INFO, **params):
    rep_cls, loss_cls, cls = (REG[k].get(n).cls for k, n in
                              (("representations", "raw"), ("losses", loss), ("models", "dcgan")))
    rep = rep_cls(rep_cls.Params(), data_info=info)
    params = {"g_width": 8, "d_width": 8, **params}
    return cls(cls.Params(**params), representation=rep, loss=loss_cls(loss_cls.Params()), data_info=info,
               runtime=runtime or Runtime())


def batch(b=6, seed=0):
    return torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_follow_the_layer_formula():
    m = build(g_width=64, d_width=64)  # the pytorch/examples widths (ngf = ndf = 64), latent 100
    w, z = 64, 100
    # transposed convs 4x4 (z->4w), 3x3 (4w->2w), 4x4 (2w->w), 4x4 (w->1), no biases; BatchNorm gain + bias
    g = z * 4 * w * 16 + 4 * w * 2 * w * 9 + 2 * w * w * 16 + w * 16 + 2 * (4 * w + 2 * w + w)
    # convs 4x4 (1->w), 4x4 (w->2w), 3x3 (2w->4w), 4x4 (4w->1), no biases; BatchNorm on 2w and 4w
    d = 16 * w + w * 2 * w * 16 + 2 * w * 4 * w * 9 + 4 * w * 16 + 2 * (2 * w + 4 * w)
    assert (count(m.generator), count(m.critic)) == (g, d) == (837504, 431872)


def test_sample_and_score_shapes():
    torch.manual_seed(0)
    m = build()
    x = m.sample(5)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and x.abs().max() <= 1
    assert m.sample(3, truncation=0.5).shape == (3, 1, 28, 28)
    assert m.score(x).shape == (5,)
    assert m.generator.training and m.critic.training  # sampling and scoring restore the training mode


def test_truncation_clips_the_latents():
    m = build()
    assert m._latents(1000, truncation=0.5).abs().max() <= 0.5


@pytest.mark.parametrize("loss", ["bce", "hinge", "wgan_gp"])
def test_train_step_updates_both_networks(loss):
    torch.manual_seed(0)
    m = build(loss)
    g0, d0 = [p.clone() for p in m.generator.parameters()], [p.clone() for p in m.critic.parameters()]
    out = m.train_step(batch(), 0)
    assert {"d/loss", "g/loss", "g/adv"} <= set(out)
    for k, v in out.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad and torch.isfinite(v), k
    assert all(not torch.equal(a, b) for a, b in zip(g0, m.generator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, m.critic.parameters()))
    if loss == "wgan_gp":
        assert "d/gp" in out


def test_n_critic_updates_the_generator_every_kth_step():
    torch.manual_seed(0)
    m = build("wgan_gp", n_critic=2)
    g0 = [p.clone() for p in m.generator.parameters()]
    out = m.train_step(batch(), 0)
    assert "g/loss" not in out and all(torch.equal(a, b) for a, b in zip(g0, m.generator.parameters()))
    assert "g/loss" in m.train_step(batch(seed=1), 1)
    assert not all(torch.equal(a, b) for a, b in zip(g0, m.generator.parameters()))


def test_gradient_penalty_loss_gets_a_per_item_critic():
    """BatchNorm couples a batch's items, which invalidates WGAN-GP's and R1's per-item penalty; auto must avoid it."""
    torch.manual_seed(0)
    gp, bce = build("wgan_gp"), build("bce")
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in gp.critic.modules())
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in build("bce_r1").critic.modules())
    assert any(isinstance(mod, nn.BatchNorm2d) for mod in bce.critic.modules())
    x, y = batch(4), batch(4, seed=1)
    y[0] = x[0]  # same first item, different batch-mates
    assert torch.allclose(gp._critic(x)[0], gp._critic(y)[0], atol=1e-6)
    assert not torch.allclose(bce._critic(x)[0], bce._critic(y)[0], atol=1e-6)  # train-mode BatchNorm does couple
    assert any(isinstance(mod, nn.InstanceNorm2d) for mod in build("wgan_gp", critic_norm="instance").critic.modules())


def test_sync_grads_before_each_optimiser_step():
    calls = []

    class Spy(Runtime):
        def sync_grads(self, *modules):
            calls.append((modules, [p.grad is not None for m in modules for p in m.parameters()]))

    m = build(runtime=Spy())
    m.train_step(batch(), 0)
    assert [c[0] for c in calls] == [(m.critic,), (m.generator,)] and all(all(c[1]) for c in calls)


def test_bf16_autocast_step_returns_float_terms():
    torch.manual_seed(0)
    m = build(runtime=Runtime(precision="bf16"))
    out = m.train_step(batch(), 0)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    assert m.sample(2).dtype == torch.float32


def test_checkpoint_round_trip_reproduces_samples_and_steps():
    torch.manual_seed(0)
    a = build()
    a.train_step(batch(), 0)
    buf = io.BytesIO()  # through serialisation, as a checkpoint file (in memory the optimisers would share tensors)
    torch.save(a.checkpoint_state(), buf)
    b = build()
    b.load_checkpoint_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    torch.manual_seed(1)
    sa, oa = a.sample(4), a.train_step(batch(seed=2), 1)
    torch.manual_seed(1)
    sb, ob = b.sample(4), b.train_step(batch(seed=2), 1)
    assert torch.equal(sa, sb) and all(torch.equal(oa[k], ob[k]) for k in oa)


def test_rejects_other_image_sizes_and_bad_params():
    with pytest.raises(ValueError, match=r"\(C, 28, 28\)"):
        build(info=DataInfo(kind="image", shape=(1, 32, 32)))
    with pytest.raises(ValueError, match="n_critic"):
        build(n_critic=0)


def test_ema_generator_averages_weights_and_is_what_sample_uses():
    torch.manual_seed(0)
    m = build(ema=0.999)
    before = [p.clone() for p in m.generator.parameters()]
    m.train_step(batch(), 5)
    decay = min(0.999, (1 + 5) / (10 + 5))  # warm-up: (1 + step) / (10 + step) while below the decay
    for old, new, avg in zip(before, m.generator.parameters(), m.generator_ema.parameters()):
        assert torch.allclose(avg, decay * old + (1 - decay) * new.detach(), atol=1e-7)
    assert any(k.startswith("generator_ema.") for k in m.state_dict())
    torch.manual_seed(3)
    x = m.sample(4)
    torch.manual_seed(3)
    with torch.no_grad():
        want = m.generator_ema.eval()(torch.randn(4, 100, 1, 1))
    assert torch.equal(x, want)
    assert build().generator_ema is None
    with pytest.raises(ValueError, match="ema"):
        build(ema=1.0)


LABELLED = DataInfo(kind="image", shape=(1, 28, 28), num_classes=10)


def test_conditional_generator_draws_the_class_it_is_given():
    torch.manual_seed(0)
    m = build("wgan_gp", info=LABELLED, num_classes=10)
    w, z = 8, 100
    # the one-hot class adds 10 input channels to the first transposed conv; the critic an embedding of (4w, 4, 4)
    assert count(m.generator) == count(build(latent_dim=z + 10).generator)
    assert count(m.critic) == count(build("wgan_gp").critic) + 10 * 4 * w * 16
    zs = m._latents(3)
    m.generator.eval()  # running BatchNorm statistics: an item's image does not depend on its batch-mates
    with torch.no_grad():
        a, b = m._generate(zs, torch.tensor([1, 2, 3])), m._generate(zs, torch.tensor([1, 2, 4]))
    assert torch.equal(a[:2], b[:2]) and not torch.allclose(a[2], b[2])  # same z, another class: another image
    x = m.sample(4, labels=torch.tensor([0, 1, 2, 3]))
    assert x.shape == (4, 1, 28, 28) and m.sample(5).shape == (5, 1, 28, 28)  # no labels: drawn uniformly
    assert m.score(x) is None  # a conditional critic needs the class to score an image


def test_projection_critic_adds_the_class_embedding_dot_the_features():
    """Miyato & Koyama 2018, eq. 3: score(x, y) = head(phi(x)) + <e_y, phi(x)>, checked against its parts."""
    torch.manual_seed(0)
    m = build("wgan_gp", info=LABELLED, num_classes=10)
    x, y = batch(4), torch.tensor([0, 3, 3, 9])
    with torch.no_grad():
        phi = m.critic.body(x)  # (4, 4w, 4, 4)
        unconditional = (phi * m.critic.head.weight).sum((1, 2, 3))  # the 4x4 conv to one value, no bias
        want = unconditional + (m.critic.embed.weight[y] * phi.flatten(1)).sum(1)
        assert torch.allclose(m._critic(x, y), want, atol=1e-5)
        m.critic.embed.weight[3].zero_()  # class 3 now scores as the unconditional critic
        assert torch.allclose(m._critic(x, y)[1:3], unconditional[1:3], atol=1e-5)


def test_conditional_train_step_uses_the_labels_everywhere():
    torch.manual_seed(0)
    m = build("wgan_gp", info=LABELLED, num_classes=10)
    e0 = m.critic.embed.weight.clone()
    out = m.train_step(batch(), 0, labels=torch.tensor([0, 0, 1, 1, 2, 2]))
    assert all(torch.isfinite(v) for v in out.values()) and "d/gp" in out
    changed = (m.critic.embed.weight != e0).any(1)
    assert changed[:3].all() and not changed[3:].any()  # only the batch's classes' embeddings get gradients
    with pytest.raises(ValueError, match="labels"):
        m.train_step(batch(), 1)
    with pytest.raises(ValueError, match="unconditional"):
        build().sample(2, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        build(num_classes=10)  # the dataset has no labels
