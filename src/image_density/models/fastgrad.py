"""Layers of the UNet with a cheap double backward: convolution, ScaleNorm, GELU.

Dual score matching backpropagates through grad_y U (double backward), so every layer runs forward,
backward and the backward of its backward. torch's generic formulas for the last are slow on the CPU:
a convolution's weight gradient comes from a convolution of transposed tensors (batch as channels),
2-4x slower than the weight-gradient kernel, and an instance norm + GELU composed of ~10 elementwise
ops becomes ~50 full-size passes (benchmarks/speed.py). Here each layer is an autograd Function with a
hand-written backward, itself a Function with a hand-written backward; same math as the plain ops
(tests/test_fastgrad.py compares both to second order).

Convolutions are differentiable to any order; ScaleNorm and GELU to second order (training, the ODE's
divergence): a third derivative raises an error instead of being wrong.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


def _tracked(*tensors: torch.Tensor) -> bool:
    """Whether to use the hand-written Functions. Not under torch.compile: it cannot take a double
    backward anyway, and its own backward of the plain ops (same math) traces, where these Functions
    break the graph into pieces that recompile."""
    if torch.compiler.is_compiling():
        return False
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _needed(ctx, i: int) -> bool:
    """Whether the running backward needs the gradient of input i. ctx.needs_input_grad only says that
    input i requires grad: autograd.grad(U, y) would also get every weight gradient, wasted (torch's
    own convolution backward asks the engine the same question)."""
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    try:
        return node is None or torch._C._will_engine_execute_node(node)
    except RuntimeError:  # raised for a leaf that autograd.grad returns: needed
        return True


# ------------------------------------------------------------------------------ convolutions
# A convolution, its input gradient (a transposed convolution) and its weight gradient, as three
# Functions whose backwards call each other: every derivative of every order runs on the forward,
# transposed and weight-gradient kernels. No bias, dilation 1, groups 1.


class _Conv(torch.autograd.Function):
    """y = conv(x, w). Adjoints: x <- conv_input_grad(g, w); w <- conv_weight_grad(x, g)."""

    @staticmethod
    def forward(ctx, x, w, stride, padding):
        ctx.save_for_backward(x, w)
        ctx.conf = stride, padding
        return F.conv2d(x, w, None, stride, padding)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = _ConvInputGrad.apply(g, w, x.shape, *ctx.conf) if _needed(ctx, 0) else None
        gw = _ConvWeightGrad.apply(x, g, w, *ctx.conf) if _needed(ctx, 1) else None
        return gx, gw, None, None


class _ConvInputGrad(torch.autograd.Function):
    """x-gradient of conv(., w) for the output gradient g: the transposed convolution, linear in g and w.
    <conv_input_grad(g, w), v> = <g, conv(v, w)>: g <- conv(gg, w); w <- conv_weight_grad(gg, g)."""

    @staticmethod
    def forward(ctx, g, w, x_shape, stride, padding):
        ctx.save_for_backward(g, w)
        ctx.conf = stride, padding
        k = w.shape[2:]
        # output_padding: the rows a strided convolution dropped, so the result has x's shape
        extra = [
            x_shape[2 + i] - ((g.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + k[i]) for i in range(2)
        ]
        return F.conv_transpose2d(g, w, None, stride, padding, extra)

    @staticmethod
    def backward(ctx, gg):
        g, w = ctx.saved_tensors
        dg = _Conv.apply(gg, w, *ctx.conf) if _needed(ctx, 0) else None
        dw = _ConvWeightGrad.apply(gg, g, w, *ctx.conf) if _needed(ctx, 1) else None
        return dg, dw, None, None, None


class _ConvWeightGrad(torch.autograd.Function):
    """w-gradient of conv(x, w) for the output gradient g (w only gives shape and layout), bilinear:
    <conv_weight_grad(x, g), v> = <g, conv(x, v)>: x <- conv_input_grad(g, gw); g <- conv(x, gw)."""

    @staticmethod
    def forward(ctx, x, g, w, stride, padding):
        ctx.save_for_backward(x, g)
        ctx.conf = stride, padding
        mask = (False, True, False)
        w = w.detach()
        return torch.ops.aten.convolution_backward(
            g, x, w, None, stride, padding, (1, 1), False, (0, 0), 1, mask
        )[1]

    @staticmethod
    def backward(ctx, gw):
        x, g = ctx.saved_tensors
        dx = _ConvInputGrad.apply(g, gw, x.shape, *ctx.conf) if _needed(ctx, 0) else None
        dg = _Conv.apply(x, gw, *ctx.conf) if _needed(ctx, 1) else None
        return dx, dg, None, None, None


def _autocast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast to the autocast dtype when autocast is on, as F.conv2d would inside: the Functions'
    backwards then see tensors of one dtype whatever the autocast state when they run."""
    dev = tensors[0].device.type
    if not torch.is_autocast_enabled(dev):
        return tensors
    dtype = torch.get_autocast_dtype(dev)
    return tuple(t.to(dtype) for t in tensors)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=(1, 1), padding=(0, 0)) -> torch.Tensor:
    """F.conv2d(x, w, None, stride, padding) with the fast double backward."""
    if not _tracked(x, w):
        return F.conv2d(x, w, None, stride, padding)
    return _Conv.apply(*_autocast(x, w), tuple(stride), tuple(padding))


def conv_transpose2d(
    x: torch.Tensor, w: torch.Tensor, stride, padding, output_padding=(0, 0)
) -> torch.Tensor:
    """F.conv_transpose2d(x, w, None, stride, padding, output_padding) with the fast double backward."""
    if not _tracked(x, w):
        return F.conv_transpose2d(x, w, None, stride, padding, output_padding)
    b, _, h, wd = x.shape
    k = w.shape[2:]
    size = [(n - 1) * stride[i] - 2 * padding[i] + k[i] + output_padding[i] for i, n in enumerate((h, wd))]
    x, w = _autocast(x, w)
    return _ConvInputGrad.apply(x, w, (b, w.shape[1], *size), tuple(stride), tuple(padding))


# --------------------------------------------------------------------------------- ScaleNorm
# n = (z - mean z) s gamma per image and channel (B, C, 1, 1 factors), s = s(v, a), v the channel
# variance, a = mean_c v: "homogeneous" s = (v / a + eps)^(-1/2) (eps relative to a: degree-1
# homogeneous), "release" s = sqrt(a / (v + eps) + eps) (DSM's norm). The full-size work is a few
# passes written by hand; the small per-channel algebra and its derivatives are autograd on
# (B, C, 1, 1) tensors (negligible), so any s(v, a) gets the same fast double backward.

_STATS_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}  # half: statistics in fp32
SCALES = {
    "homogeneous": lambda v, a, eps: torch.rsqrt(v / a + eps),
    "release": lambda v, a, eps: torch.sqrt(a / (v + eps) + eps),
}


def _hw_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over H, W per image and channel, (B, C, 1, 1)."""
    return x.sum(dim=(2, 3), keepdim=True, dtype=_STATS_DTYPE.get(x.dtype, x.dtype))


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


class _Stats:
    """Per image and channel (B, C, 1, 1): v the variance and s = s(v, a), a = mean_c v clamped away
    from 0 (where clamped, a does not depend on v: every channel of the image is constant)."""

    def __init__(self, zc: torch.Tensor, eps: float, form: str):
        if form not in SCALES:
            raise ValueError(f"unet.norm must be one of {sorted(SCALES)}, got {form!r}")
        self.pixels, self.eps, self.form = zc.shape[2] * zc.shape[3], eps, form
        dtype = _STATS_DTYPE.get(zc.dtype, zc.dtype)
        self.tiny = torch.finfo(dtype).tiny
        # out of place (small tensors): under torch.compile autograd differentiates this itself
        self.v = torch.linalg.vector_norm(zc, dim=(2, 3), keepdim=True, dtype=dtype).square().div(self.pixels)
        self.s = self.scale(self.v)

    def scale(self, v: torch.Tensor) -> torch.Tensor:
        return SCALES[self.form](v, v.mean(dim=1, keepdim=True).clamp_min(self.tiny), self.eps)


def _norm_forward(z: torch.Tensor, gamma: torch.Tensor, eps: float, form: str):
    """(n, zc, stats): the output, the centred input, its _Stats."""
    zc = z - _cast(_hw_sum(z) / (z.shape[2] * z.shape[3]), z.dtype)
    st = _Stats(zc, eps, form)
    return zc * _cast(st.s * gamma, z.dtype), zc, st


class _ScaleNorm(torch.autograd.Function):
    """(n, zc) from (z, gamma (B, C, 1, 1)). zc = z - mean z is returned so that the backward, which
    uses it, is connected to z: the double backward's zc-gradient comes back here and is centred."""

    @staticmethod
    def forward(ctx, z, gamma, eps, form):
        n, zc, st = _norm_forward(z, gamma, eps, form)
        ctx.save_for_backward(zc, gamma)
        ctx.st = st
        ctx.set_materialize_grads(False)
        return n, zc

    @staticmethod
    def backward(ctx, g_n, g_zc):
        zc, gamma = ctx.saved_tensors
        g_z = g_gamma = None
        if g_n is not None:
            g_z, g_gamma = _ScaleNormGrad.apply(g_n, zc, gamma, ctx.st)
        if g_zc is not None:  # zc = z - mean z
            centred = g_zc - _cast(_hw_sum(g_zc) / ctx.st.pixels, g_zc.dtype)
            g_z = centred if g_z is None else g_z + centred
        return g_z, g_gamma, None, None


class _ScaleNormGrad(torch.autograd.Function):
    """(gz, g_gamma): the ScaleNorm backward at the output gradient g, a function of (g, zc, gamma):
        S = sum g, P = sum g zc (over H, W), k = s gamma, g_gamma = P s,
        g_v = d/dv sum_c P_c gamma_c s_c(v, a(v))    (dL/dv, by autograd on the small tensors)
        gz = k g + c_z zc + c_0,  c_z = 2 g_v / pixels,  c_0 = -k S / pixels.
    Its backward: the adjoints of (k, c_z, c_0, g_gamma) are sums over H, W; autograd takes them back to
    (S, P, v, gamma); then the three full-size terms (v = sum zc^2 / pixels)."""

    @staticmethod
    def forward(ctx, g, zc, gamma, st):
        S, P = _hw_sum(g), _hw_sum(g * zc)
        with torch.enable_grad():
            v, S_, P_, gm = (t.detach().to(st.v.dtype).requires_grad_(True) for t in (st.v, S, P, gamma))
            s = st.scale(v)
            k = s * gm
            (g_v,) = torch.autograd.grad((P_ * k).sum(), v, create_graph=True)
            c_z = (2 / st.pixels) * g_v
            c_0 = -k * S_ / st.pixels
            g_gamma = P_ * s
        dt = g.dtype
        g_z = g * _cast(k.detach(), dt)
        g_z.addcmul_(zc, _cast(c_z.detach(), dt)).add_(_cast(c_0.detach(), dt))
        ctx.save_for_backward(g, zc)
        ctx.small, ctx.pixels, ctx.gamma_dtype = (v, S_, P_, gm, k, c_z, c_0, g_gamma), st.pixels, gamma.dtype
        ctx.set_materialize_grads(False)
        return g_z, g_gamma.detach().to(gamma.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_z, gg_gamma):
        g, zc = ctx.saved_tensors
        v, S_, P_, gm, k, c_z, c_0, g_gamma = ctx.small
        outs, adjoints = [], []
        if gg_z is not None:
            outs += [k, c_z, c_0]
            adjoints += [_hw_sum(gg_z * g), _hw_sum(gg_z * zc), _hw_sum(gg_z)]
        if gg_gamma is not None:
            outs.append(g_gamma)
            adjoints.append(gg_gamma.to(g_gamma.dtype))
        with torch.enable_grad():
            hats = torch.autograd.grad(outs, [v, S_, P_, gm], adjoints, retain_graph=True, allow_unused=True)
        v_hat, S_hat, P_hat, gm_hat = (torch.zeros_like(v) if h is None else h for h in hats)
        dt = g.dtype
        d_g = d_zc = None
        if ctx.needs_input_grad[0]:  # g enters through k g, S = sum g and P = sum g zc
            d_g = zc * _cast(P_hat, dt)
            d_g.add_(_cast(S_hat, dt))
            if gg_z is not None:
                d_g.addcmul_(gg_z, _cast(k.detach(), dt))
        if ctx.needs_input_grad[1]:  # zc enters through c_z zc, P and v = sum zc^2 / pixels
            d_zc = zc * _cast(2 * v_hat / ctx.pixels, dt)
            d_zc.addcmul_(g, _cast(P_hat, dt))
            if gg_z is not None:
                d_zc.addcmul_(gg_z, _cast(c_z.detach(), dt))
        return d_g, d_zc, _cast(gm_hat, ctx.gamma_dtype), None


def scale_norm(z: torch.Tensor, gamma: torch.Tensor, eps: float, form: str = "homogeneous") -> torch.Tensor:
    """(z - mean z) s(v, a) gamma per image and channel (see SCALES); z (B, C, H, W), gamma
    broadcastable to (B, C, 1, 1)."""
    gamma = gamma.expand(z.shape[0], z.shape[1], 1, 1)
    if not _tracked(z, gamma):
        return _norm_forward(z, gamma, eps, form)[0]
    return _ScaleNorm.apply(z, gamma, eps, form)[0]


# ---------------------------------------------------------------------------------------- GELU

_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n):
        ctx.save_for_backward(n)
        return F.gelu(n)

    @staticmethod
    def backward(ctx, g):
        (n,) = ctx.saved_tensors
        return _GeluGrad.apply(g, n)


class _GeluGrad(torch.autograd.Function):
    """g gelu'(n); its derivative in n is g gelu''(n) = g phi(n) (2 - n^2)."""

    @staticmethod
    def forward(ctx, g, n):
        ctx.save_for_backward(g, n)
        return torch.ops.aten.gelu_backward(g, n)

    @staticmethod
    @once_differentiable
    def backward(ctx, gg):
        g, n = ctx.saved_tensors
        d_g = torch.ops.aten.gelu_backward(gg, n) if ctx.needs_input_grad[0] else None
        d_n = None
        if ctx.needs_input_grad[1]:
            sq = n.square()
            e = sq.mul(-0.5).exp_().mul_(sq.sub_(2.0))  # exp(-n^2/2) (n^2 - 2)
            d_n = torch.mul(gg, g).mul_(e).mul_(-_INV_SQRT_2PI)
        return d_g, d_n


def gelu(n: torch.Tensor) -> torch.Tensor:
    """F.gelu (exact, erf form) with the fast double backward."""
    return _Gelu.apply(n) if _tracked(n) else F.gelu(n)
