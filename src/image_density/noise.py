"""Noise levels t (variance per pixel): training samplers and evaluation grids (METHOD.md)."""

from __future__ import annotations

import math

import torch

from image_density.units import psnr_to_t


def sample_log_uniform_t(
    n: int, t_min: float, t_max: float, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """n noise levels, log-uniform on [t_min, t_max] (one per image). Shape (n,)."""
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    log_t = math.log(t_min) + u * (math.log(t_max) - math.log(t_min))
    return log_t.exp().to(dtype=torch.float32, device=device)


def t_grid(t_min: float, t_max: float, n: int) -> torch.Tensor:
    """n log-spaced noise levels from t_min to t_max inclusive (evaluation grid). Shape (n,)."""
    if not 0 < t_min < t_max or n < 2:
        raise ValueError(f"need 0 < t_min < t_max and n >= 2, got {t_min}, {t_max}, {n}")
    return torch.logspace(math.log10(t_min), math.log10(t_max), n, dtype=torch.float64)


def t_grid_from_psnr(psnrs: list[float]) -> torch.Tensor:
    """Noise levels of a list of input PSNRs (dB), e.g. Table 1's 90 ... -15. Shape (len(psnrs),)."""
    return torch.tensor([psnr_to_t(float(p)) for p in psnrs], dtype=torch.float64)


def add_noise(
    x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x + sqrt(t) z with one t per image. x: (B, ...), t: (B,). Returns (y, z)."""
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return x + expand_t(t, x).sqrt() * z, z


def expand_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return t.to(x).reshape(-1, *([1] * (x.dim() - 1)))
