"""The bias-free UNet f(y, t) of paper 1 (METHOD.md, "Model").

3x3 bias-free convs, GELU, down = 2x2 stride-2 conv, up = 2x2 stride-2 transposed conv, skips by
concatenation, a last conv to C channels. Every conv but the last is followed by a norm conditioned
multiplicatively on t (`norm`). No conv has a bias, so f is homogeneous of degree 1 in y at fixed t.

Two layouts (`layout`):
- "release": the release's network (networks/unet.py there): the resampling convs are *layers of
  their blocks* -- the first layer of every encoder block but the first and of the middle, the last
  layer of the middle and of every decoder block but the last, whose last layer is the conv to C.
  Its t-embedding MLP and conditioning Linears have biases (they scale gains, not activations, so f
  stays homogeneous in y). 21 convs and 8,647,552 parameters at 64/128/256/512, 3 layers, C = 1.
- "separate": this project's first layout: every block has `convs_per_block` 3x3 convs, the
  resampling convs and a last 3x3 conv come on top, and no Linear has a bias (13.1 M parameters at
  the same widths). Kept so that models trained with it still load and train.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from image_density.models import fastgrad

Layout = Literal["release", "separate"]
Embedding = Literal["t", "log_t"]
Norm = Literal["release", "homogeneous"]
Init = Literal["release", "identity"]

# t = 0 (the clean image of -log p(x) = U(x, 0) + log Z) has no log; below T_FLOOR the log_t
# embedding is frozen. 1e-9 is the release's smallest training t, so U(x, 0) = U(x, 1e-9) there; a
# model trained from a larger t_min should be evaluated at its own t_min (likelihood.nll's `t`).
T_FLOOR = 1e-9

# "t", the release's embedding: sinusoids of t itself at frequencies log-spaced from 1/T_RANGE[0] to
# 1/T_RANGE[1] (its NoiseVarEmbedding defaults t_min = 1, t_max = 100). Every feature is nearly
# constant for t << 1e-2, so U(x, t) is the same function of x at all small t.
RELEASE_T_RANGE = (1.0, 100.0)

# "log_t": sinusoidal features of u = log t - LOG_T_CENTRE. log t, not t: t spans 12 decades, and the
# densities p_t change on a log scale (-log p_t grows like (d/2) log t), so equal steps in log t
# matter equally. Frequencies are log-spaced from OMEGA_MIN (half a period over ~60 nats of log t) to
# OMEGA_MAX (period ~25 in log t): every feature is smooth in log t. Below the data's smallest
# variance the loss has almost no signal and U(x, t) must stay what it was at larger t; smooth
# features carry it there. Measured (16x16 Gaussian field, 400 steps, t_min 1e-5): OMEGA_MAX 5 left
# U(x, t_min) nearly constant in x (per-image NLL std 4e-4 vs exact 0.066 bits/dim, mean error 0.10);
# 1.0: 0.005, 0.011; 0.25: 0.048, 0.019 (per-image MAE 0.024); 0.1 is too smooth to follow -log p_t
# (error 0.47). Denoising is within 0.05 dB of 0.25 and 5 at t <= 0.1.
LOG_T_CENTRE = math.log(1e-3)
OMEGA_MIN, OMEGA_MAX = 0.05, 0.25


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state_dict), bias-free, with the fast double backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        return fastgrad.conv2d(x, self.weight, self.stride, padding)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters), bias-free, with the fast double backward."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        return fastgrad.conv_transpose2d(x, self.weight, self.stride, self.padding, self.output_padding)


class TimeEmbedding(nn.Module):
    """t (B,) -> (B, emb_dim): [cos, sin](omega_k s) -> Linear -> SiLU -> Linear -> SiLU, with s = t
    ("t", the release) or s = log t - LOG_T_CENTRE ("log_t")."""

    def __init__(
        self,
        emb_features: int,
        emb_dim: int,
        t_floor: float = T_FLOOR,
        embedding: Embedding = "log_t",
        bias: bool = False,
    ):
        super().__init__()
        if embedding == "t":
            lo, hi = (math.log(v) for v in RELEASE_T_RANGE)
            omega = torch.exp(-torch.linspace(lo, hi, emb_features, dtype=torch.float64)).float()
        elif embedding == "log_t":
            omega = torch.logspace(math.log10(OMEGA_MIN), math.log10(OMEGA_MAX), emb_features)
        else:
            raise ValueError(f"unet.embedding must be 't' or 'log_t', got {embedding!r}")
        self.register_buffer("omega", omega, persistent=False)
        self.t_floor, self.embedding = t_floor, embedding
        self.mlp = nn.Sequential(
            nn.Linear(2 * emb_features, emb_dim, bias=bias),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim, bias=bias),
            nn.SiLU(),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        s = t if self.embedding == "t" else t.clamp_min(self.t_floor).log() - LOG_T_CENTRE
        arg = s[:, None] * self.omega.to(s)  # (B, F)
        return self.mlp(torch.cat([arg.cos(), arg.sin()], dim=1))


class TimeGain(nn.Module):
    """h x learnable per-channel weight x (1 + Linear(emb)): multiplicative conditioning on t only
    (no additive shift, so a bias-free network stays bias-free)."""

    def __init__(self, channels: int, emb_dim: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.cond = nn.Linear(emb_dim, channels, bias=bias)
        nn.init.zeros_(self.cond.weight)  # start t-independent (UNet init "release" redraws it)

    def gain(self, emb: torch.Tensor) -> torch.Tensor:
        """The factor, (B, C, 1, 1)."""
        return (self.weight * (1 + self.cond(emb)))[:, :, None, None]

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h * self.gain(emb)


class ScaleNorm(TimeGain):
    """Per-sample, per-channel centring; each channel rescaled to the *average* channel variance
    (not to 1), then the TimeGain: x learnable per-channel weight x (1 + Linear(emb)).
    norm "homogeneous": scale (v / a + eps)^(-1/2), eps relative to a, so norm(c h) = c norm(h)
    exactly. "release": the release's sqrt(a / (v + eps) + eps), homogeneous only while v >> eps.
    Both with fastgrad's fast double backward."""

    def __init__(
        self, channels: int, emb_dim: int, eps: float = 1e-5, norm: Norm = "homogeneous", bias=False
    ):
        super().__init__(channels, emb_dim, bias)
        if norm not in ("release", "homogeneous"):
            raise ValueError(f"unet.norm must be 'release' or 'homogeneous', got {norm!r}")
        self.eps, self.norm = eps, norm

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Keepdim reductions only (no reshapes): gradients stay contiguous.
        return fastgrad.scale_norm(h, self.gain(emb), self.eps, self.norm)


class ConvBlock(nn.Module):
    """Layers conv -> ScaleNorm(t) -> GELU; with `plain_last` the last conv has neither."""

    def __init__(self, convs: list[nn.Module], emb_dim: int, norm: Norm, bias: bool, plain_last=False):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        normed = convs[:-1] if plain_last else convs
        self.norms = nn.ModuleList(ScaleNorm(c.out_channels, emb_dim, norm=norm, bias=bias) for c in normed)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=False):
            h = fastgrad.gelu(norm(conv(h), emb))
        return self.convs[-1](h) if len(self.convs) > len(self.norms) else h


class UNet(nn.Module):
    """f(y, t): (B, C, H, W), (B,) -> (B, C, H, W); H, W divisible by 2^len(widths).

    Widths per scale `widths` (the release: 64, 128, 256), `mid_width` at the coarsest scale,
    `convs_per_block` layers per block; layout, embedding, norm and init as in the module docstring
    and config.UNetSpec. padding_mode "circular" (periodic images, e.g. the Gaussian fields) makes f
    exactly equivariant to shifts by multiples of 2^len(widths); "zeros" is the release's.
    The keyword defaults are this project's first choices, so that a model spec written before an
    option existed rebuilds the network it was trained with; params/*.yaml set every option.
    """

    def __init__(
        self,
        channels: int,
        widths: list[int] | tuple[int, ...] = (64, 128, 256),
        mid_width: int = 512,
        convs_per_block: int = 3,
        emb_features: int = 32,
        emb_dim: int = 256,
        padding_mode: str = "zeros",
        t_floor: float = T_FLOOR,
        layout: Layout = "separate",
        embedding: Embedding = "log_t",
        norm: Norm = "homogeneous",
        init: Init = "identity",
    ):
        super().__init__()
        widths = list(widths)
        if not widths:
            raise ValueError("UNet needs at least one width (one downsampling)")
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"unet.padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")
        if layout not in ("release", "separate"):
            raise ValueError(f"unet.layout must be 'release' or 'separate', got {layout!r}")
        if init not in ("release", "identity"):
            raise ValueError(f"unet.init must be 'release' or 'identity', got {init!r}")
        if layout == "release" and convs_per_block < 2:
            raise ValueError("unet.convs_per_block must be >= 2 with layout 'release' (the middle block "
                             f"holds a down and an up conv), got {convs_per_block}")  # fmt: skip
        self.channels, self.downsamplings, self.layout = channels, len(widths), layout
        bias = layout == "release"
        self.embed = TimeEmbedding(emb_features, emb_dim, t_floor, embedding, bias)

        def conv3(c_in: int, c_out: int) -> Conv2d:
            return Conv2d(c_in, c_out, 3, padding=1, bias=False, padding_mode=padding_mode)

        def down(c_in: int, c_out: int) -> Conv2d:
            return Conv2d(c_in, c_out, 2, stride=2, bias=False)

        def up(c_in: int, c_out: int) -> ConvTranspose2d:
            return ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False)

        def block(convs: list[nn.Module], plain_last: bool = False) -> ConvBlock:
            return ConvBlock(convs, emb_dim, norm, bias, plain_last)

        n, w = convs_per_block, widths
        if layout == "release":
            self.enc = nn.ModuleList(
                block([conv3(channels, w[0]) if j == 0 else down(w[j - 1], w[j])]
                      + [conv3(w[j], w[j]) for _ in range(n - 1)])
                for j in range(len(w))
            )  # fmt: skip
            self.mid = block([down(w[-1], mid_width)] + [conv3(mid_width, mid_width) for _ in range(n - 2)]
                             + [up(mid_width, w[-1])])  # fmt: skip
            self.dec = nn.ModuleList(
                block([conv3(2 * w[j], w[j])] + [conv3(w[j], w[j]) for _ in range(n - 2)]
                      + [up(w[j], w[j - 1]) if j else conv3(w[0], channels)], plain_last=j == 0)
                for j in reversed(range(len(w)))
            )  # fmt: skip
        else:  # built in the order of the first version, so a seed gives the same initial weights
            self.enc, self.down, self.up, self.dec = (nn.ModuleList() for _ in range(4))
            for j, wj in enumerate(w):
                self.enc.append(
                    block([conv3(w[j - 1] if j else channels, wj)] + [conv3(wj, wj) for _ in range(n - 1)])
                )
                self.down.append(down(wj, wj))
            self.mid = block([conv3(w[-1], mid_width)] + [conv3(mid_width, mid_width) for _ in range(n - 1)])
            for j in reversed(range(len(w))):
                self.up.append(up(w[j + 1] if j + 1 < len(w) else mid_width, w[j]))
                self.dec.append(block([conv3(2 * w[j], w[j])] + [conv3(w[j], w[j]) for _ in range(n - 1)]))
            self.out = conv3(w[0], channels)
        if init == "identity":  # f = 0, t-independent gains: the denoiser starts as the identity
            nn.init.zeros_(self.last_conv.weight)
        else:  # PyTorch's default init everywhere, as the release
            for m in self.modules():
                if isinstance(m, TimeGain):
                    m.cond.reset_parameters()
        self.channels_last: bool | None = None  # activations' layout; None: NHWC on CUDA, NCHW else

    @property
    def last_conv(self) -> nn.Module:
        """The conv to C channels."""
        return self.dec[-1].convs[-1] if self.layout == "release" else self.out

    def _memory_format(self, y: torch.Tensor) -> torch.memory_format:
        # NHWC feeds cuDNN's tensor-core kernels directly; on the CPU oneDNN is as fast with NCHW
        # (benchmarks/speed.py) and its weight gradients at 4x4 are 2.5x faster
        cl = y.is_cuda if self.channels_last is None else self.channels_last
        return torch.channels_last if cl else torch.contiguous_format

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = y.shape
        k = 2**self.downsamplings
        if c != self.channels or h % k or w % k:
            raise ValueError(
                f"UNet expects (B, {self.channels}, H, W) with H, W divisible by {k}, got {tuple(y.shape)}"
            )
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), one noise level per image, got {tuple(t.shape)}")
        emb = self.embed(t.to(y.dtype))
        skips = []
        hid = y.contiguous(memory_format=self._memory_format(y))
        if self.layout == "release":
            for block in self.enc:
                hid = block(hid, emb)
                skips.append(hid)
            hid = self.mid(hid, emb)
            for block in self.dec:
                hid = block(torch.cat([hid, skips.pop()], dim=1), emb)  # (B, 2w, ., .) in
            return hid.contiguous()
        for block, down in zip(self.enc, self.down, strict=True):
            hid = block(hid, emb)
            skips.append(hid)
            hid = down(hid)
        hid = self.mid(hid, emb)
        for up, block in zip(self.up, self.dec, strict=True):
            hid = torch.cat([up(hid), skips.pop()], dim=1)  # (B, 2w, ., .)
            hid = block(hid, emb)
        return self.out(hid).contiguous()
