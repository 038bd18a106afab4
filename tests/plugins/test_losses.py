"""Loss plugins against closed forms: a linear critic D(x) = <w, x> has gradient w everywhere, so the
gradient penalty is exactly (||w|| - 1)^2; bce and hinge against their formulas on known scores."""

import math

import pytest
import torch

from framework.plugin_manager import collect_registries

LOSSES = collect_registries()["losses"]


def make(name, **params):
    cls = LOSSES.get(name).cls
    return cls(cls.Params(**params))


def linear_critic(w):
    return lambda x: (x.flatten(1) * w.flatten()).sum(1)


def test_wgan_gp_terms_on_a_linear_critic():
    torch.manual_seed(0)
    w = torch.randn(2, 3, 4, dtype=torch.float64)
    real, fake = torch.randn(5, 2, 3, 4, dtype=torch.float64), torch.randn(5, 2, 3, 4, dtype=torch.float64)
    terms = make("wgan_gp").discriminator_terms(linear_critic(w), real, fake)
    d_r, d_f = linear_critic(w)(real), linear_critic(w)(fake)
    assert torch.allclose(terms["d/gp"], (w.norm() - 1) ** 2)
    assert torch.allclose(terms["d/wasserstein"], d_f.mean() - d_r.mean())
    assert torch.allclose(terms["d/drift"], (d_r ** 2).mean())
    assert torch.allclose(make("wgan_gp").generator_terms(linear_critic(w), fake)["g/adv"], -d_f.mean())


def test_gp_is_differentiable_wrt_critic_parameters():
    w = torch.full((1, 4), 0.25, dtype=torch.float64, requires_grad=True)  # ||w|| = 0.5
    gp = make("wgan_gp").discriminator_terms(linear_critic(w), torch.zeros(3, 1, 4, dtype=torch.float64),
                                             torch.ones(3, 1, 4, dtype=torch.float64))["d/gp"]
    gp.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    assert torch.allclose(w.grad, 2 * (0.5 - 1) * w.detach() / 0.5)


def test_lazy_gp_skips_steps_and_scales_by_k():
    w = torch.ones(1, 4, dtype=torch.float64)
    loss = make("wgan_gp", gp_every=4)
    x = torch.zeros(2, 1, 4, dtype=torch.float64)
    assert "d/gp" not in loss.discriminator_terms(linear_critic(w), x, x, step=1)
    assert torch.allclose(loss.discriminator_terms(linear_critic(w), x, x, step=8)["d/gp"],
                          torch.tensor(4 * (2.0 - 1) ** 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="gp_every"):
        make("wgan_gp", gp_every=0)


def test_r1_is_the_squared_gradient_norm_on_the_reals_only():
    # D(x) = 0.5 ||x||^2 + <w, x> has gradient x + w, so R1 = mean_i ||x_i + w||^2 (Mescheder et al. 2018, eq. 9);
    # the fakes must not enter it.
    torch.manual_seed(0)
    w = torch.randn(1, 2, 3, dtype=torch.float64)
    critic = lambda x: 0.5 * x.flatten(1).pow(2).sum(1) + (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(4, 1, 2, 3, dtype=torch.float64), torch.randn(4, 1, 2, 3, dtype=torch.float64)
    loss = make("bce_r1")
    terms = loss.discriminator_terms(critic, real, fake)
    assert torch.allclose(terms["d/r1"], (real + w).flatten(1).pow(2).sum(1).mean())
    plain = make("bce").discriminator_terms(critic, real, fake)
    assert torch.allclose(terms["d/real"], plain["d/real"]) and torch.allclose(terms["d/fake"], plain["d/fake"])
    assert loss.weights["d/r1"] == 5.0  # gamma / 2 with gamma = 10
    lazy = make("bce_r1", r1_every=3)
    assert "d/r1" not in lazy.discriminator_terms(critic, real, fake, step=1)
    assert torch.allclose(lazy.discriminator_terms(critic, real, fake, step=6)["d/r1"], 3 * terms["d/r1"])
    with pytest.raises(ValueError, match="r1_every"):
        make("bce_r1", r1_every=0)


def test_r1_is_differentiable_wrt_critic_parameters():
    w = torch.full((1, 4), 0.5, dtype=torch.float64, requires_grad=True)
    r1 = make("bce_r1").discriminator_terms(linear_critic(w), torch.zeros(3, 1, 4, dtype=torch.float64),
                                            torch.ones(3, 1, 4, dtype=torch.float64))["d/r1"]
    r1.backward()
    assert torch.allclose(w.grad, 2 * w.detach())  # d/dw ||w||^2


@pytest.mark.parametrize("name", ["bce", "hinge"])
def test_bce_and_hinge_formulas(name):
    s_real, s_fake = torch.tensor([2.0, -0.5]), torch.tensor([0.3, -3.0])
    critic = lambda x: x  # noqa: E731 - the batch holds the scores themselves
    loss = make(name)
    d, g = loss.discriminator_terms(critic, s_real, s_fake), loss.generator_terms(critic, s_fake)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731 - softplus
    if name == "bce":
        expect = {"d/real": (sp(-2.0) + sp(0.5)) / 2, "d/fake": (sp(0.3) + sp(-3.0)) / 2, "g/adv": (sp(-0.3) + sp(3.0)) / 2}
    else:
        expect = {"d/real": (0 + 1.5) / 2, "d/fake": (1.3 + 0) / 2, "g/adv": -(0.3 - 3.0) / 2}
    for k, v in {**d, **g}.items():
        assert v.item() == pytest.approx(expect[k], rel=1e-6)
    assert loss.total(d).item() == pytest.approx(expect["d/real"] + expect["d/fake"], rel=1e-6)


def test_weights_from_spec_override_defaults():
    cls = LOSSES.get("wgan_gp").cls
    loss = cls(cls.Params(), weights={"d/gp": 3.0, "d/drift": 0.1})
    terms = {"d/wasserstein": torch.tensor(1.0), "d/gp": torch.tensor(2.0), "d/drift": torch.tensor(10.0)}
    assert loss.total(terms).item() == pytest.approx(1.0 + 6.0 + 1.0)
