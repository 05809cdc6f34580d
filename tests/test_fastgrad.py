"""models/fastgrad.py: the layers with hand-written backwards equal the plain ops to second order."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from image_density.models import fastgrad

F64 = torch.float64


def _plain_norm(z, gamma, eps):
    """ScaleNorm as plain autograd ops (the reference)."""
    zc = z - z.mean(dim=(2, 3), keepdim=True)
    var = zc.square().mean(dim=(2, 3), keepdim=True)
    avg = var.mean(dim=1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    return zc * torch.rsqrt(var / avg + eps) * gamma


def _plain_release_norm(z, gamma, eps):
    """The release's norm (METHOD.md): centre, x sqrt(mean_c v / (v + eps) + eps), x gamma."""
    zc = z - z.mean(dim=(2, 3), keepdim=True)
    var = zc.square().mean(dim=(2, 3), keepdim=True)
    avg = var.mean(dim=1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    return zc * torch.sqrt(avg / (var + eps) + eps) * gamma


def _second_order(layer, inputs, seed=0):
    """Gradients w.r.t. `inputs` of L = <grad_inputs <w, layer(*inputs)>, r>: the double backward of
    dual score matching in miniature (a first backward with create_graph, then a backward)."""
    g = torch.Generator().manual_seed(seed)
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = layer(*xs)
    w = torch.randn(out.shape, generator=g, dtype=F64)
    firsts = torch.autograd.grad((w * out).sum(), xs, create_graph=True)
    loss = sum((f * torch.randn(f.shape, generator=g, dtype=F64)).sum() for f in firsts)
    return firsts, torch.autograd.grad(loss, xs)


def _compare(fast, plain, inputs):
    f1, f2 = _second_order(fast, inputs)
    p1, p2 = _second_order(plain, inputs)
    for a, b in zip([*f1, *f2], [*p1, *p2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize(("k", "stride", "padding"), [(3, 1, 1), (2, 2, 0), (3, 2, 1)])
def test_convolutions_match_torch_to_second_order(k, stride, padding):
    g = torch.Generator().manual_seed(k + stride)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=F64)
    w = torch.randn(4, 3, k, k, generator=g, dtype=F64)
    s, p = (stride, stride), (padding, padding)
    _compare(lambda x, w: fastgrad.conv2d(x, w, s, p), lambda x, w: F.conv2d(x, w, None, s, p), [x, w])
    y = F.conv2d(x, w, None, s, p)
    wt = torch.randn(4, 3, k, k, generator=g, dtype=F64)  # transposed: (in, out, k, k)
    op = (8 - ((y.shape[2] - 1) * stride - 2 * padding + k),) * 2
    _compare(
        lambda y, w: fastgrad.conv_transpose2d(y, w, s, p, op),
        lambda y, w: F.conv_transpose2d(y, w, None, s, p, op),
        [y, wt],
    )


def test_convolutions_pass_gradgradcheck_and_third_order():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 4, 4, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: fastgrad.conv2d(x, w, (1, 1), (1, 1)), (x, w))
    # any order: a third derivative is still a convolution
    (gx,) = torch.autograd.grad(fastgrad.conv2d(x, w, (1, 1), (1, 1)).square().sum(), x, create_graph=True)
    (hx,) = torch.autograd.grad(gx.square().sum(), x, create_graph=True)
    (tx,) = torch.autograd.grad(hx.sum(), w)
    (rx,) = torch.autograd.grad(
        torch.autograd.grad(
            torch.autograd.grad(F.conv2d(x, w, None, 1, 1).square().sum(), x, create_graph=True)[0]
            .square()
            .sum(),
            x,
            create_graph=True,
        )[0].sum(),
        w,
    )
    torch.testing.assert_close(tx, rx)


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_scale_norm_and_gelu_match_plain_ops_to_second_order(offset):
    g = torch.Generator().manual_seed(1)
    z = (
        torch.randn(3, 4, 5, 6, generator=g, dtype=F64)
        * torch.tensor([0.1, 1.0, 3.0, 0.5], dtype=F64).view(4, 1, 1)
        + offset
    )
    gamma = torch.randn(3, 4, 1, 1, generator=g, dtype=F64)
    _compare(
        lambda z, gamma: fastgrad.gelu(fastgrad.scale_norm(z, gamma, 1e-5)),
        lambda z, gamma: F.gelu(_plain_norm(z, gamma, 1e-5)),
        [z, gamma],
    )
    _compare(
        lambda z, gamma: fastgrad.scale_norm(z, gamma, 1e-2),
        lambda z, gamma: _plain_norm(z, gamma, 1e-2),
        [z, gamma],
    )
    torch.testing.assert_close(fastgrad.scale_norm(z, gamma, 1e-5), _plain_norm(z, gamma, 1e-5))
    # the release's norm: eps absolute, so channels of variance ~ eps (the 0.1-scaled one at 1e-2)
    # are where the two forms differ; both derivatives still match plain autograd
    for eps in (1e-5, 1e-2):
        _compare(
            lambda z, gamma, eps=eps: fastgrad.gelu(fastgrad.scale_norm(z, gamma, eps, "release")),
            lambda z, gamma, eps=eps: F.gelu(_plain_release_norm(z, gamma, eps)),
            [z, gamma],
        )
    assert not torch.allclose(fastgrad.scale_norm(z, gamma, 1e-2, "release"), _plain_norm(z, gamma, 1e-2))


def test_scale_norm_and_gelu_pass_gradgradcheck():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 3, 3, 3, generator=g, dtype=F64, requires_grad=True)
    gamma = torch.randn(2, 3, 1, 1, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda z, gm: fastgrad.scale_norm(z, gm, 1e-3), (z, gamma))
    assert torch.autograd.gradgradcheck(lambda z, gm: fastgrad.scale_norm(z, gm, 1e-3, "release"), (z, gamma))
    assert torch.autograd.gradgradcheck(fastgrad.gelu, (z,))


def test_third_order_of_norm_and_gelu_raises():
    z = torch.randn(1, 2, 3, 3, dtype=F64, requires_grad=True)
    (gz,) = torch.autograd.grad(fastgrad.gelu(z).sum(), z, create_graph=True)
    (hz,) = torch.autograd.grad(gz.square().sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|not have been used"):
        torch.autograd.grad(hz.sum(), z)


def test_zero_images_and_untracked_paths():
    # constant channels: a is clamped; the plain ops give NaN in the second derivative in z, and so do these
    z = torch.zeros(2, 3, 4, 4, dtype=F64, requires_grad=True)
    gamma = torch.ones(2, 3, 1, 1, dtype=F64, requires_grad=True)
    _compare(
        lambda z, gm: fastgrad.scale_norm(z, gm, 1e-5), lambda z, gm: _plain_norm(z, gm, 1e-5), [z, gamma]
    )
    with torch.no_grad():
        assert fastgrad.scale_norm(z, gamma, 1e-5).abs().max() == 0
    # float32 far from 0 (centring cancels): the untracked two-pass norm (NLL) = the training path's
    g = torch.Generator().manual_seed(3)
    z = 100 + 0.01 * torch.randn(2, 3, 8, 8, generator=g)
    gamma = torch.randn(2, 3, 1, 1, generator=g)
    with torch.no_grad():
        untracked = fastgrad.scale_norm(z, gamma, 1e-5)
    tracked = fastgrad.scale_norm(z, gamma.requires_grad_(True), 1e-5)
    torch.testing.assert_close(untracked, tracked.detach(), rtol=1e-4, atol=1e-4)
    plain = _plain_norm(z.double(), gamma.double(), 1e-5)
    torch.testing.assert_close(untracked.double(), plain, rtol=1e-4, atol=1e-4)


def test_autocast_keeps_one_dtype_through_the_double_backward():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fastgrad.gelu(
            fastgrad.scale_norm(fastgrad.conv2d(x, w, (1, 1), (1, 1)), torch.ones(1, 4, 1, 1), 1e-5)
        )
        assert y.dtype == torch.bfloat16
        (gx,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    assert gx.dtype == torch.float32 and w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


def test_under_torch_compile_the_layers_are_plain_differentiable_ops(monkeypatch):
    """Inside torch.compile the hand-written Functions step aside (they break its graph) and the
    layers' own ops are differentiated by autograd: the same second-order result as the Functions."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, 5, 5, generator=g, dtype=F64) * 2 + 0.5
    gamma = torch.rand(2, 3, 1, 1, generator=g, dtype=F64) + 0.5
    w = torch.randn(3, 3, 3, 3, generator=g, dtype=F64)
    for form in ("homogeneous", "release"):

        def layer(z, gamma, w, form=form):
            return fastgrad.gelu(
                fastgrad.scale_norm(fastgrad.conv2d(z, w, padding=(1, 1)), gamma, 1e-5, form)
            )

        fast = _second_order(layer, [z, gamma, w])
        with monkeypatch.context() as m:
            m.setattr(torch.compiler, "is_compiling", lambda: True)
            plain = _second_order(layer, [z, gamma, w])
        for a, b in zip([*fast[0], *fast[1]], [*plain[0], *plain[1]], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
