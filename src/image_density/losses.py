"""Training losses (METHOD.md, paper 1 "Loss"). Every term is per image, shape (B,); callers reduce.

d = pixels x channels, one noise level t per image, y = x + sqrt(t) z:
    ell_DSM = ||x_hat - x||^2 / (d t)                                   x_hat = y - t grad_y U(y, t)
    ell_TSM = ( 1/2 (1 - ||y - x||^2 / (d t)) - (t/d) dU/dt(y, t) )^2
ell_TSM regresses (t/d) dU/dt on its target, whose mean given y is (t/d) d/dt(-log p_t(y)) (heat
equation), so its minimizer is the true time score.
"""

from __future__ import annotations

import torch

from image_density.noise import add_noise, expand_t


def _sq_norm_per_dim(v: torch.Tensor) -> torch.Tensor:
    """||v||^2 / d per image, (B,)."""
    return v.flatten(1).square().mean(1)


def dsm_term(x_hat: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """||x_hat - x||^2 / (d t), (B,)."""
    return _sq_norm_per_dim(x_hat - x) / t.to(x)


def tsm_term(u_t: torch.Tensor, y: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1/2 (1 - ||y - x||^2/(d t)) - (t/d) u_t)^2 with u_t = dU/dt(y, t), (B,)."""
    t = t.to(x)
    d = x[0].numel()
    target = 0.5 * (1 - _sq_norm_per_dim(y - x) / t)
    return (target - t * u_t / d).square()


def dual_score_loss(
    model, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Dual score matching: {"dsm", "tsm", "loss" = dsm + tsm}, each (B,), differentiable through
    grad_y U and dU/dt (double backprop). Single score matching is the "dsm" entry alone."""
    y, _ = add_noise(x, t, generator)
    s_y, u_t = model.score_and_time_score(y, t, create_graph=True)
    x_hat = y - expand_t(t, y) * s_y
    dsm = dsm_term(x_hat, x, t)
    tsm = tsm_term(u_t, y, x, t)
    return {"dsm": dsm, "tsm": tsm, "loss": dsm + tsm}


def denoiser_loss(
    model, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """The plain denoiser baseline: {"dsm", "loss" = dsm}, each (B,)."""
    y, _ = add_noise(x, t, generator)
    dsm = dsm_term(model.denoise(y, t), x, t)
    return {"dsm": dsm, "loss": dsm}


# ------------------------------------------------------------------------ paper 2: blind denoisers
# Paper 2 draws its own noise levels (not the loop's log-uniform t): sigma = sigma_max (k / grid)^2,
# k uniform in {0..grid} (grid 255), so the density of sigma is ~ 1/sqrt(sigma): more small noise.
# The release squared k/255 with k < 255 * max|coefficient|, so its detail range ended at max^2, which
# depends on the units of the coefficients; by default we scale the std range linearly by sigma_max =
# the largest |value| of what is noised (1 for images in [0, 1]; multiscale.band_max for a band):
# unit-free. multiscale.noise_range "release" restores the release's (conditional.noise_sigma_max).


def sample_quadratic_sigma(
    n: int, sigma_max: float, grid: int = 255, generator: torch.Generator | None = None
) -> torch.Tensor:
    """n noise stds sigma_max (k / grid)^2, k uniform on {0, ..., grid}. (n,) float32."""
    k = torch.randint(0, grid + 1, (n,), generator=generator)
    return sigma_max * (k / grid) ** 2


def noise_prediction_loss(
    net, clean: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None, *conditioning
) -> dict[str, torch.Tensor]:
    """Paper 2's objective: noise `clean` (B, K, h, w) with std sigma (B,) and predict the noise with
    net(noisy, *conditioning). "loss" (B,) = mean squared error of the noise per coefficient, i.e. the
    MSE of x_hat = y - noise_hat. Only `clean` is noised (a conditioning low-pass stays clean)."""
    z = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device="cpu").to(clean.device)
    noise = expand_t(sigma, clean) * z
    return {"loss": _sq_norm_per_dim(net(clean + noise, *conditioning) - noise)}


def conditional_denoiser_loss(
    net, d: torch.Tensor, x_j: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """cCNN_j: d (B, 3C, h, w) clean details, x_j (B, C, h, w) their clean low-pass; net(d_noisy, x_j)."""
    return noise_prediction_loss(net, d, sigma, generator, x_j)
