"""MDCT against the original TensorFlow code's outputs, perfect reconstruction, the `mdct` package's
convention, bad input, and the `mdct` representation through the registry."""

import numpy as np
import pytest
import torch

from framework.errors import DataError
from framework.plugin_manager import collect_registries
from framework.protocols import DataInfo
from plugins.representations.mdct import MDCT
from tests.plugins.reference import assert_close, mdct_domain, names, ref, signal

CASES = sorted({n.split("__")[0] for n in names() if n.endswith("__mdct128__f64") and n.split("__")[0] + "__input" in names()})
DTYPES = {"f64": torch.float64, "f32": torch.float32}


@pytest.mark.parametrize("dtype", ["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_inverse_match_reference(case, dtype):
    tested = 0
    for bins in (128, 256):
        key = f"{case}__mdct{bins}__{dtype}"
        if key not in names():
            continue
        m = MDCT(bins)
        x = signal(f"{case}__input", DTYPES[dtype])
        X = m(x)
        assert X.dtype == DTYPES[dtype]
        assert_close(X.permute(0, 2, 3, 1), ref(key), dtype, key)
        # the inverse is checked on the reference's own MDCT, so it is independent of forward rounding
        Y = m.inverse(mdct_domain(key, DTYPES[dtype]))
        assert_close(Y.permute(0, 2, 1), ref(f"{case}__imdct{bins}__{dtype}"), dtype, f"{case} imdct{bins}")
        tested += 1
    assert tested


@pytest.mark.parametrize("window", ["vorbis", "sine"])
@pytest.mark.parametrize("bins", [64, 128, 256])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-7)])
def test_perfect_reconstruction(window, bins, dtype, tol):
    # float64 keeps the original's float32-rounded sqrt(2): the round trip is off by 3.4e-8 relative
    torch.manual_seed(0)
    x = (torch.rand(2, 2, bins * 40, dtype=dtype) * 2 - 1)  # full scale
    m = MDCT(bins, window)
    y = m.inverse(m(x))
    assert y.shape[-1] == (40 + 2) * bins
    assert (y[..., bins:bins + x.shape[-1]] - x).abs().max() <= tol
    assert y[..., :bins].abs().max() <= tol and y[..., -bins:].abs().max() <= tol


@pytest.mark.parametrize("bins", [16, 64, 128])
def test_relation_to_the_mdct_package(bins):
    """The `mdct` package (0.4; sine window, textbook phase t + 1/2 + K/2) relates to ours exactly by time
    reversal: reversing the signal reverses the block order and each 2K frame, and reversing a frame turns
    the textbook cosines into -1 times ours. With the package's scaling (2 sqrt(K) larger) and our
    float32-rounded sqrt(2):  ours(x)[n] = -(sqrt2_f32 / sqrt2) / (2 sqrt(K)) * mdct.mdct(x[::-1], framelength=2K)[:, M - n]."""
    mdct_pkg = __import__("tests.plugins.mdct_compat", fromlist=["load"]).load()
    rng = np.random.default_rng(bins)
    x = rng.standard_normal(bins * 24)
    ours = MDCT(bins, "sine")(torch.from_numpy(x)[None, None])[0, 0].numpy()  # (M + 1, K)
    theirs = mdct_pkg.mdct(x[::-1].copy(), framelength=2 * bins).T[::-1]  # (M + 1, K), blocks back in order
    factor = -1 / (2 * np.sqrt(bins)) * float(np.float32(np.sqrt(2))) / np.sqrt(2)
    np.testing.assert_allclose(ours, factor * theirs, rtol=1e-9, atol=1e-12)


def test_bad_input_is_a_clear_error():
    m = MDCT(128)
    with pytest.raises(ValueError, match="not a multiple of bins = 128"):
        m(torch.zeros(1, 2, 1000))
    with pytest.raises(ValueError, match=r"expected a 3-D tensor \(B, C, T\)"):
        m(torch.zeros(2, 1280))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.zeros(1, 2, 1280, dtype=torch.int16))
    with pytest.raises(ValueError, match="NaN or inf"):
        m(torch.full((1, 2, 1280), float("nan")))
    with pytest.raises(ValueError, match="even number"):
        MDCT(127)


def test_gradients_flow():
    x = torch.randn(1, 2, 1280, dtype=torch.float64, requires_grad=True)
    m = MDCT(128)
    assert torch.autograd.gradcheck(lambda v: m(v), (x[..., :256].detach().requires_grad_(),))
    m.inverse(m(x)).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_mdct_representation_through_the_registry():
    cls = collect_registries()["representations"].get("mdct").cls
    info = DataInfo(kind="audio", shape=(2, 128 * 31), sample_rate=22016)
    rep = cls(cls.Params(), data_info=info)
    assert rep.shape == (2, 32, 128)
    x = torch.rand(3, 2, 128 * 31) * 1.8 - 0.9
    z = rep.encode(x)
    assert z.shape == (3, *rep.shape)
    assert (rep.decode(z) - x).abs().max() < 1e-6
    with pytest.raises(DataError, match="not a multiple of bins = 128"):
        cls(cls.Params(), data_info=DataInfo(kind="audio", shape=(2, 1000), sample_rate=22016))
