"""Generic metrics through the registry: ``shared_energy`` against its invariants (identical items 100 %,
independent zero-mean items ~0 %, a known common part gives its energy share, streaming equals one batch)."""

import pytest
import torch

from framework.plugin_manager import collect_registries
from framework.protocols import DataInfo
from framework.runtime import Runtime

METRICS = collect_registries()["metrics"]


def make(name):
    cls = METRICS.get(name).cls
    return cls(cls.Params(), representation=None, data_info=DataInfo(kind="audio", shape=(2, 4096)),
               runtime=Runtime())


def test_shared_energy_invariants():
    torch.manual_seed(0)
    common = torch.randn(2, 4096)
    independent = torch.randn(16, 2, 4096)
    m = make("shared_energy")
    m.update(independent, common.expand(16, -1, -1))
    out = m.compute()
    assert out["shared_energy_fake_pct"] == pytest.approx(100.0)  # one clip, 16 times
    assert abs(out["shared_energy_real_pct"]) < 1.0  # independent items: ~0 (the 1/n of their mean is removed)
    # a common part with 3/4 of the energy, in two updates of different sizes
    mixed = common * 3 ** 0.5 + independent
    m.reset()
    m.update(independent[:5], mixed[:5])
    m.update(independent[5:], mixed[5:])
    assert make_and_compute(mixed)["shared_energy_fake_pct"] == pytest.approx(m.compute()["shared_energy_fake_pct"])
    assert m.compute()["shared_energy_fake_pct"] == pytest.approx(75.0, abs=1.5)


def make_and_compute(fake):
    m = make("shared_energy")
    m.update(fake, fake)
    return m.compute()


def test_shared_energy_needs_two_items_and_handles_silence():
    m = make("shared_energy")
    m.update(torch.randn(1, 2, 8), torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="at least 2 real and 2 generated items, got 1 and 1; raise train.eval_samples"):
        m.compute()
    assert make_and_compute(torch.zeros(3, 2, 8)) == {"shared_energy_real_pct": 0.0, "shared_energy_fake_pct": 0.0}
