"""Stochastic coarse-to-fine ascent (Kadkhodaie & Simoncelli 2021) and paper 2's multi-scale sampling.

Per scale, with a blind denoiser D (METHOD.md, "Sampling"):
    f(y) = y - D(y),   sigma_t = ||f(y_t)|| / sqrt(N),   h_t = h0 t / (1 + h0 (t - 1)),
    gamma_t = sigma_t sqrt((1 - beta h_t)^2 - (1 - h_t)^2),   y_{t+1} = y_t - h_t f(y_t) + gamma_t z,
from y_0 = mean + sigma_0 z, until sigma_t <= sigma_L (or max_iter); the output is y - f(y) = D(y).
Each step shrinks the effective noise std by (1 - beta h_t): beta = 1 is deterministic ascent.

The sampler only calls D(y): the blind networks of paper 2 infer the noise level from y. A non-blind
denoiser D(y, t) (the exact Wiener filter, an energy model) becomes blind with `blind_denoise`, which
takes the maximum-likelihood noise level t_hat(y) = argmax_t log p_t(y), the root of dU/dt. We do not
use t = sigma_t^2: the residual of an exact denoiser underestimates the noise variance wherever the
signal dominates (||y - D(y, t)||^2 / N = mean_k t^2 / (lambda_k + t) for a Gaussian), while the ML
root is consistent (E[dU/dt] = 0 at the true t).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from image_density.config import SamplerSpec
from image_density.multiscale import ConditionalDenoiser, Denoiser
from image_density.wavelets import Normalization, decompose, idwt


def ml_noise_level(
    y: torch.Tensor,
    dU_dt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    t_min: float,
    t_max: float,
    steps: int = 60,
) -> torch.Tensor:
    """Per-sample argmax_t log p_t(y) on [t_min, t_max] by bisection in log t.

    dU_dt(y, t) -> (B,) is the time derivative of an energy U = -log p_t + const (t-independent const).
    log p_t(y) increases while dU/dt < 0; a root outside the interval is clipped to its end. (B,)"""
    lo = torch.full((y.shape[0],), math.log(t_min), dtype=torch.float64, device=y.device)
    hi = torch.full_like(lo, math.log(t_max))
    for _ in range(steps):
        mid = (lo + hi) / 2
        rising = dU_dt(y, mid.exp().to(y.dtype)) < 0
        lo, hi = torch.where(rising, mid, lo), torch.where(rising, hi, mid)
    return ((lo + hi) / 2).exp().to(y.dtype)


def blind_denoise(
    y: torch.Tensor,
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dU_dt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    t_min: float,
    t_max: float,
) -> torch.Tensor:
    """D(y) = denoise(y, t_hat(y)) with the ML noise level `ml_noise_level`."""
    return denoise(y, ml_noise_level(y, dU_dt, t_min, t_max))


def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=like.dtype, device="cpu").to(like.device)


def ascent(
    denoiser: Denoiser,
    y: torch.Tensor,
    beta: float,
    spec: SamplerSpec,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the ascent from y (B, ...) with one denoiser for the batch; each sample stops on its own.
    Networks: call in eval mode under torch.no_grad() (energy models enable the grad they need).

    Returns (x (B, ...) = D(y) at each sample's last step, iterations (B,) long)."""
    b = y.shape[0]
    n = y[0].numel()
    active = torch.ones(b, dtype=torch.bool, device=y.device)
    iterations = torch.zeros(b, dtype=torch.long, device=y.device)
    x = torch.empty_like(y)
    for it in range(1, spec.max_iter + 1):
        x_hat = denoiser(y)
        f = y - x_hat
        sigma = f.flatten(1).norm(dim=1) / math.sqrt(n)  # (B,)
        x = torch.where(_bcast(active, y), x_hat, x)
        iterations += active.long()
        active = active & (sigma > spec.sigma_L)
        if not active.any():
            break
        h = spec.h0 * it / (1 + spec.h0 * (it - 1))
        gamma = sigma * math.sqrt((1 - beta * h) ** 2 - (1 - h) ** 2)
        step = -h * f + _bcast(gamma, y) * _randn(y.shape, generator, y)
        y = torch.where(_bcast(active, y), y + step, y)
    return x, iterations


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def super_resolve(
    x_J: torch.Tensor,
    conditional_denoisers: Sequence[ConditionalDenoiser],
    spec: SamplerSpec,
    generator: torch.Generator | None = None,
    wavelet: str = "haar",
    normalization: Normalization = "orthonormal",
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sample details[j] | x_{j+1} for j = J-1 ... 0 (start: N(0, sigma_0^2)), inverting one level each.

    x_J (B, C, h, w) is kept: decomposing the output gives it back up to rounding. Returns the image
    (B, C, 2^J h, 2^J w) and the iterations per scale, [(B,) for j = 0 ... J-1]."""
    x = x_J
    iterations = [torch.empty(0)] * len(conditional_denoisers)
    for j in reversed(range(len(conditional_denoisers))):
        b, c, h, w = x.shape
        d0 = spec.sigma_0 * _randn((b, 3 * c, h, w), generator, x)
        x_j = x
        d, iterations[j] = ascent(
            lambda d, x_j=x_j, j=j: conditional_denoisers[j](d, x_j), d0, spec.beta_details, spec, generator
        )
        x = idwt(x_j, d, wavelet, normalization)
    return x, iterations


def synthesize(
    lowpass_denoiser: Denoiser,
    conditional_denoisers: Sequence[ConditionalDenoiser],
    shape: tuple[int, int, int, int],
    spec: SamplerSpec,
    generator: torch.Generator | None = None,
    wavelet: str = "haar",
    normalization: Normalization = "orthonormal",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sample from scratch: the low-pass x_J from N(m_J, sigma_0^2) with the global denoiser, then
    `super_resolve`. shape = (B, C, H, W) of the final images; m_J is the low-pass of a constant image
    at spec.mean (so the start is right for any normalization). Returns images and iterations per
    stage, [(B,) for j = 0 ... J-1, then the low-pass]. With no conditional denoisers this is the flat
    (single-scale) sampler."""
    levels = len(conditional_denoisers)
    constant = torch.full((1, *shape[1:]), spec.mean, dtype=dtype, device=device)
    m_J = decompose(constant, levels, wavelet, normalization)[0] if levels else constant
    y0 = m_J + spec.sigma_0 * _randn((shape[0], *m_J.shape[1:]), generator, m_J)
    x_J, low_iterations = ascent(lowpass_denoiser, y0, spec.beta_lowpass, spec, generator)
    x, iterations = super_resolve(x_J, conditional_denoisers, spec, generator, wavelet, normalization)
    return x, [*iterations, low_iterations]
