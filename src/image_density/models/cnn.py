"""Bias-free CNN denoisers of paper 2 with a chosen receptive field (METHOD.md, "Networks").

Bias-free (Mohan et al. 2020, and the LPM release): no additive constant anywhere — convolutions
without bias, zero padding (circular for periodic images), ReLU, and `BFBatchNorm`, which only
rescales each channel. In eval mode every layer is then positively homogeneous of degree 1, so
f(a y) = a f(y) for a > 0 (tested): the denoiser's behaviour does not depend on the units of the
input. In train mode the batch statistic makes it scale-invariant across the batch instead, as in any
batch norm.

Layout (the release's BF_CNN_RF): conv (linear) -> [conv, BFBatchNorm, ReLU] x (layers - 2) -> conv.
RF = 1 + 2 * (number of 3x3 layers); the other layers are 1x1. The 3x3 layers are spread evenly over
the depth, first and last included (the release also keeps them 3x3).

All networks predict the noise; `denoise` returns y - noise_hat. They are blind: they take no t,
and `denoise` accepts and ignores one, so the project's `denoise(y, t)` face works unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from image_density.config import CNNSpec
from image_density.models import register


def kernel_sizes(layers: int, rf: int | None) -> list[int]:
    """Per-layer kernel sizes (3 or 1) giving receptive field `rf` (None: all 3x3, rf = 2 layers + 1)."""
    if layers < 2:
        raise ValueError(f"a CNN needs at least 2 layers, got {layers}")
    if rf is None:
        return [3] * layers
    if rf % 2 == 0 or not 1 <= rf <= 2 * layers + 1:
        raise ValueError(f"rf must be odd and in [1, {2 * layers + 1}] for {layers} layers, got {rf}")
    n3 = (rf - 1) // 2
    if n3 == 0:
        return [1] * layers
    chosen = {0} if n3 == 1 else {round(i * (layers - 1) / (n3 - 1)) for i in range(n3)}
    return [3 if layer in chosen else 1 for layer in range(layers)]


class BFBatchNorm(nn.Module):
    """Per-channel x / sd * gamma; no centring of x and no shift (the release's BF_batchNorm).

    Train: sd = sqrt(batch variance + eps), running sd updated with momentum 0.1. Eval: the running sd.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_sd", torch.ones(1, channels, 1, 1))
        # The release's init: small gammas, so the untrained network outputs ~0 noise (D ~ identity).
        self.gamma = nn.Parameter((torch.randn(1, channels, 1, 1) * (2.0 / 9.0 / 64.0)).clamp(-0.025, 0.025))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            sd = torch.sqrt(x.var(dim=(0, 2, 3), keepdim=True, unbiased=False) + self.eps)
            with torch.no_grad():
                self.running_sd.lerp_(sd, self.momentum)
        else:
            sd = self.running_sd
        return x / sd * self.gamma


class BFCNN(nn.Module):
    """Bias-free CNN, c_in -> c_out channels at full resolution."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        layers: int,
        width: int = 64,
        rf: int | None = None,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        sizes = kernel_sizes(layers, rf)
        self.rf = 1 + sum(k - 1 for k in sizes)
        chans = [c_in] + [width] * (layers - 1) + [c_out]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], k, padding=k // 2, bias=False, padding_mode=padding_mode)
            for i, k in enumerate(sizes)
        )
        self.norms = nn.ModuleList(BFBatchNorm(width) for _ in range(layers - 2))
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs[0](x)  # linear first layer, as the release
        for conv, norm in zip(self.convs[1:-1], self.norms, strict=True):
            x = torch.relu(norm(conv(x)))
        return self.convs[-1](x)


@register("blind_cnn")
class BlindCNN(nn.Module):
    """C -> C blind denoiser: the global low-pass denoiser (rf=None: all 3x3) and the flat baselines."""

    def __init__(
        self, channels: int, layers: int, width: int = 64, rf: int | None = None, padding_mode: str = "zeros"
    ):
        super().__init__()
        self.net = BFCNN(channels, channels, layers, width, rf, padding_mode)
        self.rf = self.net.rf

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Predicted noise, (B, C, H, W)."""
        return self.net(y)

    def denoise(self, y: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """x_hat = y - noise_hat; t is ignored (blind)."""
        return y - self.net(y)


@register("conditional_cnn")
class ConditionalCNN(nn.Module):
    """cCNN_j: [clean low-pass x_j (C), noisy details (3C)] -> noise in the details (3C)."""

    def __init__(
        self, channels: int, layers: int, width: int = 64, rf: int | None = None, padding_mode: str = "zeros"
    ):
        super().__init__()
        self.net = BFCNN(4 * channels, 3 * channels, layers, width, rf, padding_mode)
        self.rf = self.net.rf

    def forward(self, d: torch.Tensor, x_j: torch.Tensor) -> torch.Tensor:
        """d (B, 3C, h, w) noisy details, x_j (B, C, h, w) their low-pass -> predicted noise (B, 3C, h, w)."""
        return self.net(torch.cat([x_j, d], dim=1))

    def denoise(self, d: torch.Tensor, x_j: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """d_hat = d - noise_hat; t is ignored (blind)."""
        return d - self.forward(d, x_j)


def cnn_model_spec(
    kind: Literal["lowpass", "conditional", "flat"], channels: int, cnn: CNNSpec, rf: int | None = None
) -> dict[str, Any]:
    """The registry spec of one of paper 2's networks (plain JSON types, stored in checkpoints):
    the global low-pass denoiser (all 3x3), a cCNN_j or a flat baseline with receptive field rf."""
    if kind == "lowpass":
        return {
            "arch": "blind_cnn",
            "channels": channels,
            "layers": cnn.layers_lowpass,
            "width": cnn.channels,
            "padding_mode": cnn.padding_mode,
        }
    if rf is None:
        raise ValueError(f"a {kind} CNN needs a receptive field rf")
    arch = "conditional_cnn" if kind == "conditional" else "blind_cnn"
    return {
        "arch": arch,
        "channels": channels,
        "layers": cnn.layers_conditional,
        "width": cnn.channels,
        "rf": rf,
        "padding_mode": cnn.padding_mode,
    }
