"""Fréchet distance against closed forms."""

import torch

from plugins.common.stats import GaussianStats, frechet_distance


def test_identical_gaussians_have_zero_distance():
    torch.manual_seed(0)
    a = torch.randn(500, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    s = GaussianStats()
    s.add(a[:200])
    s.add(a[200:])
    mu, cov = s.mean_cov()
    assert torch.allclose(mu, a.mean(0)) and torch.allclose(cov, torch.cov(a.T))
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-9


def test_closed_forms():
    d = 4
    # equal covariances: only the squared mean difference remains
    cov = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert abs(frechet_distance(torch.zeros(d), cov, torch.full((d,), 2.0), cov) - 16.0) < 1e-9
    # commuting (diagonal) covariances: sum (sqrt(a) - sqrt(b))^2
    a, b = torch.tensor([1.0, 4.0, 9.0, 16.0]), torch.tensor([4.0, 1.0, 9.0, 1.0])
    expect = float(((a.sqrt() - b.sqrt()) ** 2).sum())
    assert abs(frechet_distance(torch.zeros(d), torch.diag(a), torch.zeros(d), torch.diag(b)) - expect) < 1e-9
