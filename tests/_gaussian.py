"""Test helpers: ground-truth Gaussian fields (spectrum of data/gaussian_field.py), one torch thread."""

from __future__ import annotations

import torch

from image_density.data.gaussian_field import spectrum
from image_density.models import GaussianEnergy


def field_eigenvalues(channels: int, size: int, std: float = 0.1) -> torch.Tensor:
    """(C, H, W) float64 DFT eigenvalues of the METHOD.md field (gamma 2, k0 2, pixel std `std`);
    channel c scaled by 1 + c / C so the channels are not interchangeable."""
    s = torch.from_numpy(spectrum(size, gamma=2.0, k0=2.0, std=std))
    return torch.stack([s * (1 + c / channels) for c in range(channels)])


def gaussian_model(channels: int = 1, size: int = 8, mean: float = 0.5) -> GaussianEnergy:
    return GaussianEnergy(field_eigenvalues(channels, size), mean)
