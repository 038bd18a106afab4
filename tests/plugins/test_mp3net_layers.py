"""MP3net's layers: TF "same" conv / transposed conv against TensorFlow's outputs (tfop__* reference arrays),
the fast-GP convolution against stock autograd (values, gradients, and the penalty's parameter gradients),
split/join index math, minibatch stddev."""

import pytest
import torch

from plugins.losses.gan import gradient_penalty
from plugins.models.mp3net_layers import Conv, ConvT, MinibatchStddev, join_from_batch, split_to_batch
from tests.plugins.reference import names, ref

TFOPS = sorted(n[:-len("__out")] for n in names() if n.startswith("tfop__conv") and n.endswith("__out"))


@pytest.mark.parametrize("op", TFOPS)
def test_tf_same_padding_matches_tensorflow(op):
    spec = op.split("__")[1]  # e.g. conv2dT_same_s21_in7x5
    kind, strides, size = spec.split("_same_")[0], spec.split("_same_s")[1][:2], spec.split("_in")[1]
    sh, sw = int(strides[0]), int(strides[1])
    x = torch.from_numpy(ref(f"tfop__conv_in_{size}")).double().permute(0, 3, 1, 2)  # NHWC -> NCHW
    kernel = torch.from_numpy(ref(f"{op}__kernel")).double()
    layer = (ConvT if kind == "conv2dT" else Conv)(3, 2, 3, (sh, sw)).double()  # 3 channels in, 2 out
    with torch.no_grad():
        layer.weight.copy_(kernel.permute(3, 2, 0, 1))  # [kh, kw, a, b] -> (b, a, kh, kw), both layouts
        layer.bias.zero_()
    y = layer(x).permute(0, 2, 3, 1)
    r = torch.from_numpy(ref(f"{op}__out"))
    assert y.shape == r.shape and (y - r).abs().max() <= 1e-10


def test_all_tfop_arrays_are_checked():
    assert len(TFOPS) == 12


@pytest.mark.parametrize("stride", [(1, 1), (2, 1), (2, 2)])
def test_fast_conv_matches_stock_values_and_gradients(stride):
    torch.manual_seed(0)
    stock, fast = Conv(3, 4, 3, stride).double(), Conv(3, 4, 3, stride, fast=True).double()
    fast.load_state_dict(stock.state_dict())
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(stock(x), fast(x))
    assert torch.autograd.gradcheck(lambda v: fast(v), (x,))
    assert torch.autograd.gradgradcheck(lambda v: fast(v), (x,))


def test_fast_gp_parameter_gradients_equal_stock_autograd():
    """The exact gradient penalty's gradients w.r.t. the critic's parameters, fast vs stock convs (float64)."""
    torch.manual_seed(1)

    def critic(fast):
        return torch.nn.Sequential(Conv(2, 4, 3, (2, 1), fast=fast), torch.nn.LeakyReLU(0.2),
                                   Conv(4, 4, 3, (2, 2), fast=fast), torch.nn.LeakyReLU(0.2),
                                   torch.nn.Flatten(), torch.nn.LazyLinear(1)).double()

    stock, fast = critic(False), critic(True)
    real, fake = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64)
    stock(real), fast(real)  # materialise the lazy layer
    fast.load_state_dict(stock.state_dict())
    grads = []
    for net in (stock, fast):
        torch.manual_seed(2)
        gp = gradient_penalty(lambda v: net(v).squeeze(1), real, fake)
        grads.append(torch.autograd.grad(gp, list(net.parameters()), allow_unused=True))
    for a, b in zip(*grads):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert sum(g is not None for g in grads[1]) >= 4  # both convs' weights and biases are penalised


def test_split_and_join_index_math():
    B, C, T, Fq, S = 2, 3, 16, 4, 4
    x = torch.arange(B * C * T * Fq, dtype=torch.float64).view(B, C, T, Fq)
    win = split_to_batch(x, S, (2, 1))  # (B * S, C, T / S + 3, F)
    assert win.shape == (B * S, C, 7, Fq)
    assert torch.equal(win[1 * S + 2, :, 2:6], x[1, :, 8:12])  # batch index b * S + n, own rows after 2 context
    assert torch.equal(win[0, :, :2], torch.zeros(C, 2, Fq))  # zero padding before the first window
    assert torch.equal(win[1, :, :2], x[0, :, 2:4])  # past context of window 1
    assert torch.equal(join_from_batch(win, S, (2, 1)), x)


def test_minibatch_stddev_groups():
    x = torch.randn(16, 3, 4, 2)
    y = MinibatchStddev(8)(x)
    assert y.shape == (16, 4, 4, 2)
    groups = x.view(8, 2, 3, 4, 2)  # items m, m + 2, m + 4, ... form group m
    expect = (groups.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))
    assert torch.allclose(y[5, 3], expect[1].expand(4, 2)) and torch.allclose(y[4, 3], expect[0].expand(4, 2))
    assert MinibatchStddev(8)(torch.randn(6, 3, 4, 2)).shape == (6, 4, 4, 2)  # group = 6, the largest divisor <= 8
