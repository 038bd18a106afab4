"""The paper's 5 s model (experiments/mp3net_piano_5s.yaml): its parameter counts and output shape, built from the
spec on the meta device (no memory, no arithmetic), and the late-beta1 Adam schedule it trains with."""

from pathlib import Path

import pytest
import torch

from framework.plugin_manager import collect_registries
from framework.spec import load_spec
from plugins.models.mp3net import Critic, Generator, Geometry, channel_plan
from tests.plugins.test_mp3net import build, count

ROOT = Path(__file__).resolve().parents[2]
REG = collect_registries()


def test_the_5s_spec_builds_the_papers_64m_parameter_networks():
    p = load_spec(ROOT / "experiments/mp3net_piano_5s.yaml", REG).model.params
    geo = Geometry.of(p)
    assert (geo.depth, geo.blocks, geo.bins, geo.windows, geo.dense_time, geo.dense_bins) == (5, 1024, 128, 1, 1, 4)
    with torch.device("meta"):
        g = Generator(geo, p.latent_dim, p.base_channels, p.max_channels)
        d = Critic(geo, p.base_channels, p.max_channels)
        x = g(torch.empty(3, p.latent_dim))
        scores = d(x)
    assert count(g) == 63_901_698 and count(d) == 64_297_217  # "about 64 M parameters each" (paper §4.2.2)
    assert x.shape == (3, 2, 1024, 128) and scores.shape == (3,)
    assert channel_plan(5, p.base_channels, p.max_channels)[-1][2] == 128  # the shallowest layer: 128 features
    assert (p.late_beta1, p.late_beta1_from) == (0.0, 160_000 - 18_000)


def betas(model):
    return {name: [g["betas"] for g in opt.param_groups] for name, opt in model.optimizers.items()}


def test_late_beta1_switches_both_optimisers_at_its_step_and_leaves_earlier_steps_unchanged():
    batch = torch.rand(4, 2, 128, 16) * 0.6 - 0.3
    torch.manual_seed(0)
    plain = build()
    torch.manual_seed(0)
    late = build(late_beta1=0.0, late_beta1_from=2)
    for step in range(4):
        torch.manual_seed(step)
        a = plain.train_step(batch, step)
        torch.manual_seed(step)
        b = late.train_step(batch, step)
        expected = (0.0, 0.9) if step >= 2 else (0.5, 0.9)
        assert betas(late) == {"g": [expected], "d": [expected]}
        assert betas(plain) == {"g": [(0.5, 0.9)], "d": [(0.5, 0.9)]}  # the default: no schedule
        if step < 2:  # before the switch the schedule changes nothing
            assert all(torch.equal(a[k], b[k]) for k in a)
    # after it, beta1 = 0 makes Adam's step follow the current gradient alone: the critics diverge
    assert any(not torch.equal(p, q) for p, q in zip(plain.critic.parameters(), late.critic.parameters()))


def test_a_resumed_run_continues_the_schedule():
    torch.manual_seed(0)
    model = build(late_beta1=0.0, late_beta1_from=3)
    batch = torch.rand(4, 2, 128, 16) * 0.6 - 0.3
    for step in range(2):
        model.train_step(batch, step)
    resumed = build(late_beta1=0.0, late_beta1_from=3)
    resumed.load_checkpoint_state(model.checkpoint_state())  # saved with beta1 0.5, before the switch
    resumed.train_step(batch, 5)  # resumed later (train.steps raised past the switch)
    assert betas(resumed) == {"g": [(0.0, 0.9)], "d": [(0.0, 0.9)]}


@pytest.mark.parametrize("params, match", [(dict(late_beta1=1.0), "late_beta1 must be in \\[0, 1\\)"),
                                           (dict(late_beta1=0.0, late_beta1_from=-1), "late_beta1_from >= 0")])
def test_bad_late_beta1_names_the_fix(params, match):
    with pytest.raises(ValueError, match=match):
        build(**params)
