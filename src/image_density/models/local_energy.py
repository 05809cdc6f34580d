"""RF-limited energies of the multi-scale model (METHOD.md, "Beyond both papers").

U(d, t | x_j) = 1/2 <d, f(d, t | x_j)> (+ b(t)), an EnergyModel whose network is
    f = c(t) g([x_j / s_x, c(t) d], t),   c(t) = 1 / sqrt(v + t),
with g a bias-free CNN of receptive field rf (the 3x3 / 1x1 layout of models/cnn.py, `kernel_sizes`),
conditioned on t multiplicatively (unet.TimeEmbedding, a unet.TimeGain after every hidden conv), GELU.

No normalization layer: the UNet's ScaleNorm (instance norm) and batch norm pool statistics over the
whole image or batch, which would give every output a global view and blur the receptive-field
ablation (and batch statistics would couple the energies of different images). The analytic
preconditioning c(t) does their job: v is the band's variance per coefficient in the training data
and s_x the RMS of the conditioning low-pass (both fixed at training start, stored in the model spec),
so the CNN's inputs are of unit scale at every t. For a Gaussian band of variance lambda the ideal
g = c d (v + t) / (lambda + t) is of order 1 over the whole t range.

Conditioning: inside `with model.bind(x_j):` (x_j the clean low-pass (B, C, h, w) of the batch) the
model is an ordinary EnergyModel of the details (B, 3C, h, w): energy, score, denoise, and with them
losses.dual_score_loss, likelihood.log_z and likelihood.nll, work unchanged. cond_channels = 0 gives an
unconditional energy (the low-pass energy of multiscale.energy.lowpass = "cnn").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from image_density.models import register
from image_density.models.cnn import kernel_sizes
from image_density.models.energy import EnergyForm, EnergyModel
from image_density.models.unet import TimeEmbedding, TimeGain
from image_density.noise import expand_t


class LocalEnergyCNN(nn.Module):
    """f(y, t | bound x_j): (B, K, h, w), (B,) -> (B, K, h, w); K = `channels` (3C for details)."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        layers: int,
        width: int = 64,
        rf: int | None = None,
        emb_features: int = 32,
        emb_dim: int = 256,
        band_var: float = 1.0,
        cond_scale: float = 1.0,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        sizes = kernel_sizes(layers, rf)
        self.rf = 1 + sum(k - 1 for k in sizes)
        self.channels, self.cond_channels = channels, cond_channels
        self.band_var, self.cond_scale = float(band_var), float(cond_scale)
        chans = [cond_channels + channels] + [width] * (layers - 1) + [channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], k, padding=k // 2, bias=False, padding_mode=padding_mode)
            for i, k in enumerate(sizes)
        )
        self.gains = nn.ModuleList(TimeGain(width, emb_dim) for _ in range(layers - 1))
        self.embed = TimeEmbedding(emb_features, emb_dim)
        nn.init.zeros_(self.convs[-1].weight)  # f = 0 at initialization, as the UNet
        self._x_j: torch.Tensor | None = None

    @contextlib.contextmanager
    def bind(self, x_j: torch.Tensor) -> Iterator[None]:
        """Condition every call inside the block on x_j (B, cond_channels, h, w)."""
        if self.cond_channels == 0:
            raise ValueError("an unconditional energy (cond_channels = 0) takes no conditioning image")
        if x_j.dim() != 4 or x_j.shape[1] != self.cond_channels:
            raise ValueError(
                f"conditioning image must be (B, {self.cond_channels}, h, w), got {tuple(x_j.shape)}"
            )
        previous, self._x_j = self._x_j, x_j
        try:
            yield
        finally:
            self._x_j = previous

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = torch.rsqrt(self.band_var + expand_t(t, y))  # (B, 1, 1, 1)
        inp = c * y
        if self.cond_channels:
            x_j = self._x_j
            if x_j is None:
                raise RuntimeError(
                    "a conditional energy was called without its low-pass: use `with model.bind(x_j):`"
                )
            if x_j.shape[0] != y.shape[0] or x_j.shape[2:] != y.shape[2:]:
                raise ValueError(
                    f"bound low-pass {tuple(x_j.shape)} does not match the details {tuple(y.shape)}"
                )
            inp = torch.cat([x_j.to(y) / self.cond_scale, inp], dim=1)
        emb = self.embed(t.to(y.dtype))
        h = inp
        for conv, gain in zip(self.convs[:-1], self.gains, strict=True):
            h = F.gelu(gain(conv(h), emb))
        return c * self.convs[-1](h)


class LocalEnergyModel(EnergyModel):
    """EnergyModel of a LocalEnergyCNN, with its `bind`."""

    def bind(self, x_j: torch.Tensor) -> contextlib.AbstractContextManager[None]:
        return self.net.bind(x_j)


@register("local_energy_cnn")
def _local_energy_cnn(
    energy_form: EnergyForm = "offset", data_mean=None, data_var=None, **cnn_kwargs
) -> LocalEnergyModel:
    """U(d, t | x_j) = 1/2 <d, LocalEnergyCNN(d, t | x_j)> (+ b(t)) (+ U_G(d, t), energy.GaussianPart)."""
    return LocalEnergyModel(LocalEnergyCNN(**cnn_kwargs), energy_form, data_mean, data_var)
