"""MP3net's layers: TF "same" conv / transposed conv against TensorFlow's own outputs (every tfop__* reference
array, float64, 1e-10), Keras' initialisation, the fast-GP convolution against stock autograd (values, first and
second derivatives, the penalty's parameter gradients, autocast dtypes), split/join index math, minibatch stddev."""

import math

import pytest
import torch

from plugins.losses.gan import gradient_penalty
from plugins.models.mp3net_layers import Conv, ConvT, MinibatchStddev, join_from_batch, same_padding, split_to_batch
from tests.plugins.reference import names, ref

TFOPS = sorted(n[:-len("__out")] for n in names() if n.startswith("tfop__conv") and n.endswith("__out"))


def test_every_tfop_array_is_checked():
    # 2 input sizes (even 6x4, odd 7x5) x 3 strides x {conv, transposed conv}
    assert len(TFOPS) == 12


@pytest.mark.parametrize("op", TFOPS)
def test_tf_same_convolutions_match_tensorflow(op):
    kind, rest = op.split("__")[1].split("_same_s")  # e.g. "conv2dT", "21_in7x5"
    (sh, sw), size = map(int, rest[:2]), rest.split("_in")[1]
    x = torch.from_numpy(ref(f"tfop__conv_in_{size}")).double().permute(0, 3, 1, 2)  # NHWC -> NCHW
    kernel = torch.from_numpy(ref(f"{op}__kernel")).double()
    layer = (ConvT if kind == "conv2dT" else Conv)(3, 2, 3, (sh, sw)).double()  # 3 channels in, 2 out
    with torch.no_grad():
        # Conv2D [kh, kw, in, out] -> (out, in, kh, kw); Conv2DTranspose [kh, kw, out, in] -> (in, out, kh, kw)
        layer.weight.copy_(kernel.permute(3, 2, 0, 1))
        layer.bias.zero_()  # the reference layers have no bias
    y = layer(x).permute(0, 2, 3, 1)  # NCHW -> NHWC
    r = torch.from_numpy(ref(f"{op}__out"))
    assert y.shape == r.shape
    assert (y - r).abs().max().item() <= 1e-10


def test_same_padding_is_tensorflows_rule():
    assert same_padding(6, 3, 2) == (0, 1)  # even size, stride 2: (0, 1), not PyTorch's (1, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(5, 3, 1) == (1, 1) and same_padding(5, 1, 1) == (0, 0)


@pytest.mark.parametrize("cls", [Conv, ConvT])
def test_keras_initialisation(cls):
    torch.manual_seed(0)
    layer = cls(64, 32, 3)
    limit = math.sqrt(6.0 / (9 * (64 + 32)))  # Glorot-uniform of a 3x3 kernel
    w = layer.weight.detach()
    assert w.abs().max() <= limit and w.abs().max() > 0.99 * limit
    assert abs(w.std().item() - limit / math.sqrt(3)) < 0.02 * limit  # U(-l, l) has std l / sqrt(3)
    assert torch.equal(layer.bias.detach(), torch.zeros(32))


@pytest.mark.parametrize("stride", [(1, 1), (2, 1), (2, 2)])
@pytest.mark.parametrize("size", [(6, 4), (7, 5)])
def test_fast_conv_values_and_derivatives_equal_stock(stride, size):
    torch.manual_seed(0)
    stock, fast = Conv(2, 2, 3, stride).double(), Conv(2, 2, 3, stride, fast=True).double()
    fast.load_state_dict(stock.state_dict())
    x = torch.randn(1, 2, *size, dtype=torch.float64, requires_grad=True)
    assert torch.equal(stock(x), fast(x))
    g = torch.randn_like(stock(x))
    grads = [torch.autograd.grad((m(x) * g).sum(), [x, m.weight, m.bias]) for m in (stock, fast)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-13)
    # second derivatives w.r.t. x, weight and bias, against finite differences
    assert torch.autograd.gradgradcheck(lambda v, w, b: _apply_fast(fast, v, w, b), (x, fast.weight, fast.bias),
                                        fast_mode=True)


def _apply_fast(layer, x, weight, bias):
    return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))


def test_fast_gp_parameter_gradients_equal_stock_autograd():
    """The exact gradient penalty's gradients w.r.t. a small critic's parameters, fast vs stock convs (float64)."""
    torch.manual_seed(1)

    def critic(fast):
        return torch.nn.Sequential(Conv(2, 4, 3, (2, 1), fast=fast), torch.nn.LeakyReLU(0.2),
                                   Conv(4, 4, 3, (2, 2), fast=fast), torch.nn.LeakyReLU(0.2),
                                   Conv(4, 4, 1, fast=fast), torch.nn.LeakyReLU(0.2),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 4, 1)).double()

    stock, fast = critic(False), critic(True)
    fast.load_state_dict(stock.state_dict())
    real, fake = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64)
    grads = []
    for net in (stock, fast):
        torch.manual_seed(2)  # the same interpolation weights
        gp = gradient_penalty(lambda v: net(v).squeeze(1), real, fake)
        grads.append(torch.autograd.grad(gp, list(net.parameters()), allow_unused=True))
    assert sum(g is not None for g in grads[1]) == 7  # every parameter but the last bias (D(x) + c: no GP)
    for a, b in zip(*grads):
        assert (a is None and b is None) or (a - b).norm() <= 1e-9 * a.norm()


def test_fast_conv_under_autocast_keeps_parameter_gradients_in_float32():
    torch.manual_seed(3)
    stock, fast = Conv(4, 4, 3, (2, 1)), Conv(4, 4, 3, (2, 1), fast=True)
    fast.load_state_dict(stock.state_dict())
    x = torch.randn(2, 4, 8, 6, requires_grad=True)
    outs = []
    for m in (stock, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        assert y.dtype == torch.bfloat16
        outs.append(torch.autograd.grad(y.float().square().sum(), [x, m.weight, m.bias]))
    for a, b in zip(*outs):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).norm() <= 2e-2 * a.norm()  # bf16 rounding of the two kernels' accumulation orders


def test_fast_conv_skips_gradients_that_are_not_needed():
    layer = Conv(2, 2, 3, fast=True)
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is None and layer.bias.grad is None


def test_split_and_join_index_math():
    B, C, T, K, S = 2, 3, 16, 4, 4
    x = torch.arange(B * C * T * K, dtype=torch.float64).view(B, C, T, K)
    win = split_to_batch(x, S, (2, 1))  # (B S, C, T/S + 3, K)
    assert win.shape == (B * S, C, 7, K)
    for b in range(B):
        for n in range(S):  # window n of item b is batch index b S + n: padded rows [4n, 4n + 7)
            padded = torch.nn.functional.pad(x[b], (0, 0, 2, 1))
            assert torch.equal(win[b * S + n], padded[:, 4 * n:4 * n + 7])
    assert torch.equal(win[0, :, :2], torch.zeros(C, 2, K))  # zero context before the clip
    assert torch.equal(join_from_batch(win, S, (2, 1)), x)


def test_minibatch_stddev_groups_like_the_tpu_replicas():
    x = torch.randn(16, 3, 4, 2, dtype=torch.float64)
    y = MinibatchStddev(8)(x)
    assert y.shape == (16, 4, 4, 2) and y.dtype == torch.float64 and torch.equal(y[:, :3], x)
    groups = x.view(8, 2, 3, 4, 2)  # group m = items m, m + 2, m + 4, ... (position m on 8 "replicas")
    expect = (groups.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # population std, +1e-8, mean
    for i in range(16):
        assert torch.allclose(y[i, 3], expect[i % 2].expand(4, 2), rtol=1e-14)
    assert torch.allclose(y[0, 3, 0, 0], ((x[0::2] - x[0::2].mean(0)).square().mean(0) + 1e-8).sqrt().mean())


def test_minibatch_stddev_uses_the_largest_dividing_group():
    x = torch.randn(12, 3, 4, 2)
    y = MinibatchStddev(8)(x)  # 12 items: groups of 6 (items m and m + 2 ... ), two groups
    expect = (x.view(6, 2, 3, 4, 2).var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))
    assert torch.allclose(y[1, 3, 0, 0], expect[1]) and torch.allclose(y[10, 3, 0, 0], expect[0])
    assert torch.allclose(MinibatchStddev(8)(x[:1])[0, 3], torch.full((4, 2), 1e-4))  # one item: sqrt(1e-8)
