"""Stochastic coarse-to-fine ascent (Kadkhodaie & Simoncelli 2021) and paper 2's multi-scale sampling,
as the LPM release runs it (METHOD.md, "Sampling").

Per band, with a blind denoiser D:
    f(y) = y - D(y),   sigma_t = ||f(y_t)|| / sqrt(N),   h_t = h0 t / (1 + h0 (t - 1))  (or h0),
    gamma_t = sigma_t sqrt((1 - beta h_t)^2 - (1 - h_t)^2),   y_{t+1} = y_t - h_t f(y_t) + gamma_t z,
from zero-mean y_0 ~ N(0, sigma_0^2), until sigma_t <= sigma_L std(y_{t+1}) (relative: an SNR of
-20 log10 sigma_L dB), or sigma_t > sigma_max (diverged), or max_iter (capped); the output is
y - f(y) = D(y). Each step shrinks the effective noise std by (1 - beta h_t): beta = 1 is deterministic.
sigma_0, sigma_max and the low-pass range are the release's values in its averaging normalization;
`wavelets.release_scale` converts them to the band's units, here and nowhere else.
Every stage of every sample leaves a `Trace`: iterations, final sigma and SNR, and how it stopped.

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
from dataclasses import dataclass

import torch

from image_density.config import SamplerSpec
from image_density.multiscale.conditional import ConditionalDenoiser, Denoiser
from image_density.multiscale.wavelets import Normalization, idwt, release_scale


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


STATUSES = ("converged", "diverged", "capped")


@dataclass
class Trace:
    """How one stage (a band of every sample) ended; tensors (B,). status indexes STATUSES."""

    stage: str  # "lowpass", "flat" or "scale<j>"
    iterations: torch.Tensor  # ascent steps taken
    sigma: torch.Tensor  # sigma_t of the last step, in the release's units
    snr_db: torch.Tensor  # 20 log10(std(y) / sigma_t) at the stop
    status: torch.Tensor

    def rows(self) -> list[dict]:
        """One dict per sample: sample, stage, iterations, final_sigma, final_snr_db, status."""
        return [
            {"sample": i, "stage": self.stage, "iterations": int(it), "final_sigma": float(sg),
             "final_snr_db": float(snr), "status": STATUSES[int(st)]}
            for i, (it, sg, snr, st) in enumerate(
                zip(self.iterations.tolist(), self.sigma.tolist(), self.snr_db.tolist(),
                    self.status.tolist(), strict=True))
        ]  # fmt: skip


def trace_rows(traces: Sequence[Trace]) -> list[dict]:
    """Every stage's rows, coarse to fine as sampled."""
    return [row for trace in traces for row in trace.rows()]


def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=like.dtype, device="cpu").to(like.device)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _std(y: torch.Tensor) -> torch.Tensor:
    return y.flatten(1).std(dim=1)  # (B,), as the release's y.std() of one image


def ascent(
    denoiser: Denoiser,
    y: torch.Tensor,
    beta: float,
    spec: SamplerSpec,
    *,
    fixed_h: bool = False,
    scale: float = 1.0,
    stage: str = "flat",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, Trace]:
    """Run the ascent from y (B, ...) with one denoiser for the batch; each sample stops on its own.
    scale = wavelets.release_scale of the band (spec.sigma_max is in the release's units).
    Networks: call in eval mode under torch.no_grad() (energy models enable the grad they need).

    Returns (x (B, ...) = y - f(y) after each sample's last step, its Trace)."""
    b = y.shape[0]
    n = y[0].numel()
    active = torch.ones(b, dtype=torch.bool, device=y.device)
    iterations = torch.zeros(b, dtype=torch.long, device=y.device)
    sigma = torch.full((b,), spec.sigma_0 * scale, dtype=y.dtype, device=y.device)
    status = torch.full((b,), STATUSES.index("capped"), dtype=torch.long, device=y.device)
    for t in range(1, spec.max_iter + 1):
        f = y - denoiser(y)
        sigma_t = f.flatten(1).norm(dim=1) / math.sqrt(n)  # (B,)
        h = spec.h0 if fixed_h else spec.h0 * t / (1 + spec.h0 * (t - 1))
        gamma = sigma_t * math.sqrt((1 - beta * h) ** 2 - (1 - h) ** 2)
        step = -h * f + _bcast(gamma, y) * _randn(y.shape, generator, y)
        y = torch.where(_bcast(active, y), y + step, y)
        sigma = torch.where(active, sigma_t, sigma)
        iterations += active.long()
        converged = active & (sigma <= spec.sigma_L * _std(y))
        diverged = active & ~converged & (sigma > spec.sigma_max * scale)
        status[converged] = STATUSES.index("converged")
        status[diverged] = STATUSES.index("diverged")
        active = active & ~converged & ~diverged
        if not active.any():
            break
    x = denoiser(y)
    snr_db = 20 * torch.log10(_std(y) / sigma)
    return x, Trace(stage, iterations.cpu(), (sigma / scale).cpu(), snr_db.cpu(), status.cpu())


def start(shape, spec: SamplerSpec, scale: float, generator: torch.Generator | None, like: torch.Tensor):
    """y_0 ~ N(0, (sigma_0 scale)^2) of `shape`: the release's zero-mean start in the band's units."""
    return spec.sigma_0 * scale * _randn(shape, generator, like)


def rescale_range(x: torch.Tensor, top: float) -> torch.Tensor:
    """Each image of x (B, ...) mapped affinely onto [0, top] (the release's rescale_image_range)."""
    lo = x.flatten(1).min(dim=1).values
    hi = x.flatten(1).max(dim=1).values
    return (x - _bcast(lo, x)) * _bcast(top / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny), x)


def super_resolve(
    x_J: torch.Tensor,
    conditional_denoisers: Sequence[ConditionalDenoiser],
    spec: SamplerSpec,
    generator: torch.Generator | None = None,
    wavelet: str = "haar",
    normalization: Normalization = "orthonormal",
) -> tuple[torch.Tensor, list[Trace]]:
    """Sample details[j] | x_{j+1} for j = J-1 ... 0, inverting one level each.

    x_J (B, C, h, w) is kept: decomposing the output gives it back up to rounding. Returns the image
    (B, C, 2^J h, 2^J w) and the traces of scales J-1 ... 0."""
    x = x_J
    traces = []
    for j in reversed(range(len(conditional_denoisers))):
        b, c, h, w = x.shape
        scale = release_scale(j + 1, normalization)
        d0 = start((b, 3 * c, h, w), spec, scale, generator, x)
        d, trace = ascent(
            lambda d, x_j=x, j=j: conditional_denoisers[j](d, x_j),
            d0,
            spec.beta_details,
            spec,
            fixed_h=spec.fixed_h_details,
            scale=scale,
            stage=f"scale{j}",
            generator=generator,
        )
        traces.append(trace)
        x = idwt(x, d, wavelet, normalization)
    return x, traces


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
) -> tuple[torch.Tensor, list[Trace]]:
    """Sample from scratch: the low-pass x_J with the global denoiser (rescaled to [0, lowpass_range]
    with spec.rescale_lowpass), then `super_resolve`. shape = (B, C, H, W) of the final images.
    Returns images and the traces, low-pass first. With no conditional denoisers this is the flat
    (single-scale) sampler, whose stage is "flat" and never rescaled (as the release)."""
    levels = len(conditional_denoisers)
    b, c, hh, ww = shape
    scale = release_scale(levels, normalization)
    like = torch.empty(0, dtype=dtype, device=device)
    y0 = start((b, c, hh >> levels, ww >> levels), spec, scale, generator, like)
    x_J, low = ascent(
        lowpass_denoiser,
        y0,
        spec.beta_lowpass,
        spec,
        fixed_h=spec.fixed_h_lowpass,
        scale=scale,
        stage="lowpass" if levels else "flat",
        generator=generator,
    )
    if not levels:
        return x_J, [low]
    if spec.rescale_lowpass:
        x_J = rescale_range(x_J, spec.lowpass_range * scale)
    x, traces = super_resolve(x_J, conditional_denoisers, spec, generator, wavelet, normalization)
    return x, [low, *traces]
