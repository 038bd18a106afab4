"""Access to the reference vectors of the original TensorFlow code (tests/data/reference/, see its README)
and their tolerances. Layouts: signals [batch, samples, channels] -> ours (B, C, T); MDCT-domain
[batch, blocks, freqs, channels] -> ours (B, C, N, K)."""

from pathlib import Path

import numpy as np
import torch

NPZ = Path(__file__).resolve().parents[1] / "data" / "reference" / "mp3net_audiocodec_reference.npz"
_DATA = None


def ref(name: str) -> np.ndarray:
    global _DATA
    if _DATA is None:
        _DATA = dict(np.load(NPZ))
    return _DATA[name]


def names() -> list[str]:
    ref("sines__input")
    return sorted(_DATA)


def signal(name: str, dtype=torch.float64) -> torch.Tensor:  # [B, T, C] -> (B, C, T)
    return torch.from_numpy(ref(name)).to(dtype).permute(0, 2, 1).contiguous()


def mdct_domain(name: str, dtype=torch.float64) -> torch.Tensor:  # [B, N, K, C] -> (B, C, N, K)
    return torch.from_numpy(ref(name)).to(dtype).permute(0, 3, 1, 2).contiguous()


def assert_close(ours: torch.Tensor, reference: np.ndarray, dtype: str, what: str) -> None:
    """The README's tolerances: f64 1e-12 + 1e-9 max|R|; f32 1e-7 + 5e-6 max|R|."""
    r = np.asarray(reference, dtype=np.float64)
    d = ours.detach().double().cpu().numpy()
    assert d.shape == r.shape, f"{what}: shape {d.shape} != reference {r.shape}"
    scale = np.abs(r).max()
    tol = 1e-12 + 1e-9 * scale if dtype == "f64" else 1e-7 + 5e-6 * scale
    err = np.abs(d - r).max()
    assert err <= tol, f"{what}: max error {err:.3g} > tolerance {tol:.3g}"
