"""The bias-free UNet f(y, t) of paper 1 (METHOD.md, "Model").

3x3 bias-free convs, GELU, down = 2x2 stride-2 conv, up = 2x2 stride-2 transposed conv, skips by
concatenation, a last conv to C channels. Every conv of a block is followed by a scale-preserving
instance norm conditioned multiplicatively on t. No parameter anywhere is a bias.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from image_density.models import fastgrad

# t = 0 (the clean image of -log p(x) = U(x, 0) + log Z) has no log; below T_FLOOR the embedding is
# frozen. 1e-9 is the release's smallest training t, so U(x, 0) = U(x, 1e-9) there; a model trained
# from a larger t_min should be evaluated at its own t_min (likelihood.nll's `t`).
T_FLOOR = 1e-9

# Sinusoidal features of u = log t - LOG_T_CENTRE. log t, not t: t spans 12 decades, and the densities
# p_t change on a log scale (-log p_t grows like (d/2) log t), so equal steps in log t matter equally.
# Frequencies are log-spaced from OMEGA_MIN (half a period over ~60 nats of log t) to OMEGA_MAX (period
# ~25 in log t): every feature is smooth in log t. Below the data's smallest variance the loss has
# almost no signal and U(x, t) must stay what it was at larger t; smooth features carry it there.
# Measured (16x16 Gaussian field, 400 steps, t_min 1e-5): OMEGA_MAX 5 left U(x, t_min) nearly
# constant in x (per-image NLL std 4e-4 vs exact 0.066 bits/dim, mean error 0.10); 1.0: 0.005, 0.011;
# 0.25: 0.048, 0.019 (per-image MAE 0.024); 0.1 is too smooth to follow -log p_t (error 0.47).
# Denoising is within 0.05 dB of 0.25 and 5 at t <= 0.1.
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
    """t (B,) -> (B, emb_dim): [cos, sin](omega_k u) -> Linear -> SiLU -> Linear -> SiLU."""

    def __init__(self, emb_features: int, emb_dim: int, t_floor: float = T_FLOOR):
        super().__init__()
        omega = torch.logspace(math.log10(OMEGA_MIN), math.log10(OMEGA_MAX), emb_features)
        self.register_buffer("omega", omega, persistent=False)
        self.t_floor = t_floor
        self.mlp = nn.Sequential(
            nn.Linear(2 * emb_features, emb_dim, bias=False),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim, bias=False),
            nn.SiLU(),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        u = t.clamp_min(self.t_floor).log() - LOG_T_CENTRE
        arg = u[:, None] * self.omega.to(u)  # (B, F)
        return self.mlp(torch.cat([arg.cos(), arg.sin()], dim=1))


class TimeGain(nn.Module):
    """h x learnable per-channel weight x (1 + Linear(emb)): multiplicative conditioning on t only
    (no additive shift, so a bias-free network stays bias-free)."""

    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.cond = nn.Linear(emb_dim, channels, bias=False)
        nn.init.zeros_(self.cond.weight)  # start t-independent

    def gain(self, emb: torch.Tensor) -> torch.Tensor:
        """The factor, (B, C, 1, 1)."""
        return (self.weight * (1 + self.cond(emb)))[:, :, None, None]

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h * self.gain(emb)


class ScaleNorm(TimeGain):
    """Per-sample, per-channel centring; each channel rescaled to the *average* channel variance
    (not to 1), so the layer is homogeneous of degree 1 in its input: norm(a h) = a norm(h).
    Then the TimeGain: x learnable per-channel weight x (1 + Linear(emb))."""

    def __init__(self, channels: int, emb_dim: int, eps: float = 1e-5):
        super().__init__(channels, emb_dim)
        self.eps = eps

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # (h - mean h) (var / avg + eps)^(-1/2) x gain per image and channel, avg the average channel
        # variance; eps relative to avg keeps the homogeneity exact. Keepdim reductions only (no
        # reshapes): gradients stay contiguous. fastgrad: the same math with a cheap double backward.
        return fastgrad.scale_norm(h, self.gain(emb), self.eps)


class ConvBlock(nn.Module):
    """n x (3x3 bias-free conv -> ScaleNorm(t) -> GELU)."""

    def __init__(self, c_in: int, c_out: int, n: int, emb_dim: int, padding_mode: str):
        super().__init__()
        self.convs = nn.ModuleList(
            Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False, padding_mode=padding_mode)
            for i in range(n)
        )
        self.norms = nn.ModuleList(ScaleNorm(c_out, emb_dim) for _ in range(n))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = fastgrad.gelu(norm(conv(h), emb))
        return h


class UNet(nn.Module):
    """f(y, t): (B, C, H, W), (B,) -> (B, C, H, W); H, W divisible by 2^len(widths).

    Encoder block j at width widths[j] then a 2x2 stride-2 conv (same width); a middle block at
    mid_width; decoder: 2x2 stride-2 transposed conv to widths[j], concat the skip (2 widths[j]),
    block back to widths[j]; a last 3x3 conv to C. Every block has convs_per_block convs.
    padding_mode "circular" (periodic images, e.g. the Gaussian fields) makes f exactly equivariant to
    shifts by multiples of 2^len(widths); "zeros" is the release's.
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
    ):
        super().__init__()
        widths = list(widths)
        if not widths:
            raise ValueError("UNet needs at least one width (one downsampling)")
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")
        self.channels, self.downsamplings = channels, len(widths)
        self.embed = TimeEmbedding(emb_features, emb_dim, t_floor)
        n, e, pad = convs_per_block, emb_dim, padding_mode
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        c = channels
        for w in widths:
            self.enc.append(ConvBlock(c, w, n, e, pad))
            self.down.append(Conv2d(w, w, 2, stride=2, bias=False))
            c = w
        self.mid = ConvBlock(c, mid_width, n, e, pad)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        c = mid_width
        for w in reversed(widths):
            self.up.append(ConvTranspose2d(c, w, 2, stride=2, bias=False))
            self.dec.append(ConvBlock(2 * w, w, n, e, pad))
            c = w
        self.out = Conv2d(c, channels, 3, padding=1, bias=False, padding_mode=padding_mode)
        # f = 0 at initialization: the denoiser starts as the identity, ell_DSM = 1 at every t
        nn.init.zeros_(self.out.weight)
        self.channels_last: bool | None = None  # activations' layout; None: NHWC on CUDA, NCHW else

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
        for block, down in zip(self.enc, self.down, strict=True):
            hid = block(hid, emb)
            skips.append(hid)
            hid = down(hid)
        hid = self.mid(hid, emb)
        for up, block in zip(self.up, self.dec, strict=True):
            hid = torch.cat([up(hid), skips.pop()], dim=1)  # (B, 2w, ., .)
            hid = block(hid, emb)
        return self.out(hid).contiguous()
