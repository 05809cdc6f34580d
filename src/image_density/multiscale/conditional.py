"""Multi-scale composition of paper 2: coarse-to-fine denoising and the multi-scale log-likelihood,
and the training objectives of its networks (denoisers; normalized energies, beyond both papers).

Both work with any denoisers / log-densities that have the right face, learned or exact:
- low-pass denoiser: y_J (B, C, h, w) -> x_hat_J;
- conditional denoiser j: (noisy details (B, 3C, h, w), clean low-pass x_{j+1} (B, C, h, w)) -> d_hat;
- log-densities: x_J -> (B,) nats, and (d_j, x_{j+1}) -> (B,) nats.
A blind network passes `model.denoise`; an exact one at a known t, e.g. `partial(wiener, t=t)`.
Scale indices follow `wavelets.pyramid`: details[j] (j = 0 finest) is conditioned on lows[j].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from image_density import likelihood
from image_density.losses import (
    conditional_denoiser_loss,
    dual_score_loss,
    noise_prediction_loss,
    sample_quadratic_sigma,
)
from image_density.multiscale.wavelets import (
    Normalization,
    decompose,
    idwt,
    log_det_jacobian,
    pyramid,
    release_scale,
)

Denoiser = Callable[[torch.Tensor], torch.Tensor]
ConditionalDenoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LogDensity = Callable[[torch.Tensor], torch.Tensor]
ConditionalLogDensity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def multiscale_denoise(
    y: torch.Tensor,
    lowpass_denoiser: Denoiser,
    conditional_denoisers: Sequence[ConditionalDenoiser],
    wavelet: str = "haar",
    normalization: Normalization = "orthonormal",
) -> torch.Tensor:
    """Decompose y into J = len(conditional_denoisers) levels, denoise the low-pass, then for
    j = J-1 ... 0 denoise details[j] given the already denoised low-pass and invert one level.
    y (B, C, H, W) -> x_hat (B, C, H, W)."""
    y_J, noisy_details = decompose(y, len(conditional_denoisers), wavelet, normalization)
    x = lowpass_denoiser(y_J)
    for j in reversed(range(len(conditional_denoisers))):
        x = idwt(x, conditional_denoisers[j](noisy_details[j], x), wavelet, normalization)
    return x


def multiscale_log_prob(
    x: torch.Tensor,
    log_p_lowpass: LogDensity,
    log_p_conditionals: Sequence[ConditionalLogDensity],
    wavelet: str = "haar",
    normalization: Normalization = "orthonormal",
) -> dict[str, torch.Tensor]:
    """log p(x) = log p(x_J) + sum_j log p(d_j | x_{j+1}) + log|det W| (paper 2, exact chain rule).

    x (B, C, H, W). Returns per-sample nats: "log_p" (B,), "log_p_lowpass" (B,),
    "log_p_details" (B, J) with column j for details[j], and "log_det" (B,) (0 if orthonormal).
    """
    levels = len(log_p_conditionals)
    lows, details = pyramid(x, levels, wavelet, normalization)
    lowpass = log_p_lowpass(lows[-1])
    conditionals = torch.stack([log_p_conditionals[j](details[j], lows[j]) for j in range(levels)], dim=1)
    log_det = torch.full_like(lowpass, log_det_jacobian(tuple(x.shape[1:]), levels, normalization))
    return {
        "log_p": lowpass + conditionals.sum(dim=1) + log_det,
        "log_p_lowpass": lowpass,
        "log_p_details": conditionals,
        "log_det": log_det,
    }


def band_max(
    images: torch.Tensor,
    levels: int,
    j: int | None,
    wavelet: str = "haar",
    normalization: Normalization = "orthonormal",
) -> float:
    """max |value| of the band a denoiser sees: the image (levels 0), x_J (j None) or details[j].
    Paper 2 scales the range of training noise by it (losses.sample_quadratic_sigma)."""
    if levels == 0:
        return images.abs().max().item()
    lows, details = pyramid(images, levels, wavelet, normalization)
    return (lows[-1] if j is None else details[j]).abs().max().item()


NoiseRange = Literal["band_max", "release"]


def noise_sigma_max(
    images: torch.Tensor,
    levels: int,
    j: int | None,
    rule: NoiseRange = "band_max",
    wavelet: str = "haar",
    normalization: Normalization = "orthonormal",
) -> float:
    """The largest training noise std of a denoiser of paper 2 (levels 0: flat; j None: low-pass; else
    cCNN_j), in the transform's units. "band_max": band_max. "release": the LPM release's training.py,
    whose coefficients are in its averaging units (release_scale converts): flat and low-pass 1 there;
    cCNN_j the square of max|d_j| there (it draws k/255 with k < 255 max|d_j|, then squares it), 0 for
    a band of zero variance as band_max."""
    m = band_max(images, levels, j, wavelet, normalization)
    if rule == "band_max" or m <= 0:
        return m
    level = 0 if levels == 0 else levels if j is None else j + 1
    scale = release_scale(level, normalization)
    return scale if j is None or levels == 0 else scale * (m / scale) ** 2


def denoiser_objective(
    levels: int,
    j: int | None,
    sigma_max: float,
    grid: int = 255,
    wavelet: str = "haar",
    normalization: Normalization = "orthonormal",
    intensity_scaling: bool = False,
):
    """A `train.Objective` for one network of paper 2, from full images x (B, C, H, W):
    levels 0: a flat denoiser of x; j None: the global low-pass denoiser of x_J; else cCNN_j.
    The loop's t is not used: paper 2 draws sigma (losses.sample_quadratic_sigma) from the generator.
    intensity_scaling: the flat and low-pass networks see x u, u ~ U(0, 1) per image (the release)."""

    def objective(model, x, t, generator):
        sigma = sample_quadratic_sigma(x.shape[0], sigma_max, grid, generator)
        if intensity_scaling and (levels == 0 or j is None):
            u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            x = x * u.reshape(-1, *[1] * (x.dim() - 1))
        if levels == 0:
            return noise_prediction_loss(model, x, sigma, generator)
        lows, details = pyramid(x, levels, wavelet, normalization)
        if j is None:
            return noise_prediction_loss(model, lows[-1], sigma, generator)
        return conditional_denoiser_loss(model, details[j], lows[j], sigma, generator)

    return objective


def energy_objective(
    levels: int, j: int | None, wavelet: str = "haar", normalization: Normalization = "orthonormal"
):
    """A `train.Objective` (dual score matching at the loop's t) for one energy of the multi-scale
    model, from full images x (B, C, H, W): j None: the low-pass energy of x_J; else the conditional
    energy of details[j] bound to their clean low-pass lows[j]."""

    def objective(model, x, t, generator):
        lows, details = pyramid(x, levels, wavelet, normalization)
        if j is None:
            return dual_score_loss(model, lows[-1], t, generator)
        with model.bind(lows[j]):
            return dual_score_loss(model, details[j], t, generator)

    return objective


def normalized_lowpass(model, log_z: float, t_eval: float) -> LogDensity:
    """log p(x_J) = -(U(x_J, t_eval) + log Z), (B,) nats, of an energy normalized once (paper 1);
    t_eval stands in for t = 0 (a learned model's training t_min, see likelihood.nll)."""

    def log_p(x_J: torch.Tensor) -> torch.Tensor:
        return -likelihood.nll(model, x_J, log_z, t=t_eval, batch_size=len(x_J))

    return log_p


def normalized_conditional(
    model, t_eval: float, t_max: float, draws: int, generator: torch.Generator | None = None
) -> ConditionalLogDensity:
    """log p(d | x_j) = -(U(d, t_eval | x_j) + log Z(x_j)) of a conditional energy (`bind`), (B,) nats,
    normalized per conditioning image at t_max (likelihood.log_z_per_image): dual score matching fixes
    U up to a constant that may depend on x_j, which one log Z averaged over images would not remove."""

    def log_p(d: torch.Tensor, x_j: torch.Tensor) -> torch.Tensor:
        with model.bind(x_j):
            u = likelihood.nll(model, d, 0.0, t=t_eval, batch_size=len(d))
            return -(u + likelihood.log_z_per_image(model, d, t_max, draws, generator))

    return log_p
