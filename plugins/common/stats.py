"""Statistics shared by the distribution metrics: streaming mean/covariance and the Fréchet distance.

The Fréchet distance between Gaussians N(m1, S1) and N(m2, S2) (Dowson & Landau 1982; used as FID by
Heusel et al. 2017) is ||m1 - m2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2). The matrix square root is
taken through a symmetric eigendecomposition, in float64, which is exact for the symmetric PSD product and
avoids scipy.linalg.sqrtm's complex round-off.
"""

from __future__ import annotations

import torch
from torch import Tensor


class GaussianStats:
    """Streaming first and second moments of feature vectors ``(n, D)`` in float64."""

    def __init__(self):
        self.n = 0
        self.sum: Tensor | None = None
        self.outer: Tensor | None = None

    def add(self, feats: Tensor) -> None:  # (n, D)
        f = feats.detach().double().cpu()
        s, o = f.sum(0), f.T @ f
        self.sum = s if self.sum is None else self.sum + s
        self.outer = o if self.outer is None else self.outer + o
        self.n += f.shape[0]

    def mean_cov(self) -> tuple[Tensor, Tensor]:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mean = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return mean, cov


def _sqrt_psd(m: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1^1/2 cov2 cov1^1/2)^1/2), in float64."""
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    s1 = _sqrt_psd(cov1)
    cross = _sqrt_psd(s1 @ cov2 @ s1)
    value = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * torch.trace(cross)
    return float(value.clamp_min(0))
