"""Multi-scale composition against the exact Gaussian field (tests/_dense_gaussian.py)."""

import math
from functools import partial

import pytest
import torch

from _dense_gaussian import DenseGaussian, field_covariance, wavelet_gaussians
from image_density.config import GaussianFieldData
from image_density.data.gaussian_field import GaussianField
from image_density.losses import conditional_denoiser_loss, noise_prediction_loss, sample_quadratic_sigma
from image_density.models.cnn import BlindCNN, ConditionalCNN
from image_density.models.gaussian import GaussianEnergy
from image_density.multiscale.conditional import (
    band_max,
    denoiser_objective,
    multiscale_denoise,
    multiscale_log_prob,
    noise_sigma_max,
)
from image_density.multiscale.wavelets import decompose, pyramid

N = 16


@pytest.fixture(scope="module")
def field():
    f = GaussianField(GaussianFieldData(kind="gaussian_field", size=N, n_train=1, n_test=1))
    cov = field_covariance(f.eigenvalues)
    mean = torch.full((cov.shape[0],), f.spec.mean, dtype=torch.float64)
    return f, GaussianEnergy(torch.from_numpy(f.eigenvalues), f.spec.mean), cov, mean


def test_dense_ground_truth_matches_the_spectral_one(field):
    f, g, cov, mean = field
    x = f.sample(4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(DenseGaussian(cov, mean).log_prob(x), -g.nll_exact(x), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("normalization", ["orthonormal", "average"])
@pytest.mark.parametrize("levels", [1, 3])
def test_multiscale_nll_equals_single_scale_nll(field, normalization, levels):
    f, g, cov, mean = field
    x = f.sample(8, torch.Generator().manual_seed(1))
    low, conds = wavelet_gaussians(cov, mean, (1, N, N), levels, normalization=normalization)
    out = multiscale_log_prob(x, low.log_prob, [c.log_prob for c in conds], normalization=normalization)
    bits_per_dim = (out["log_p"] + g.nll_exact(x)).abs().max().item() / (N * N * math.log(2))
    assert bits_per_dim < 1e-10  # measured ~1e-15; the brief asks for 1e-4
    assert out["log_p_details"].shape == (8, levels)
    assert (out["log_det"].abs().max().item() == 0.0) == (normalization == "orthonormal")


def test_finest_conditional_with_oracle_lowpass_is_the_wiener_filter(field):
    # With x_1 estimated as well as possible (the low-pass of the global Wiener estimate), the
    # exact conditional Wiener filter of the details completes it to the global Wiener filter.
    f, g, cov, mean = field
    t = 0.01
    x = f.sample(8, torch.Generator().manual_seed(2))
    y = x + math.sqrt(t) * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    wiener = g.denoise(y, torch.full((8,), t, dtype=y.dtype))
    _, conds = wavelet_gaussians(cov, mean, (1, N, N), 1)
    x_hat = multiscale_denoise(y, lambda _: decompose(wiener, 1)[0], [partial(conds[0].denoise, t=t)])
    torch.testing.assert_close(x_hat, wiener, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t", [1e-3, 1e-2, 1e-1])
def test_multiscale_denoiser_with_exact_pieces_is_near_wiener(field, t):
    # The low-pass is denoised without the details' evidence, so the composition is not the global
    # Wiener filter; with exact pieces its exact MSE is within ~1.5 % of it here (measured
    # 1.0029 / 1.0139 / 1.0101 at J = 2).
    f, g, cov, mean = field
    d = cov.shape[0]
    low, conds = wavelet_gaussians(cov, mean, (1, N, N), 2)

    def denoise(y):
        return multiscale_denoise(y, partial(low.denoise, t=t), [partial(c.denoise, t=t) for c in conds])

    # the composition is affine with denoise(mean) = mean: M e_i = denoise(mean + e_i) - mean
    eye = torch.eye(d, dtype=torch.float64)
    m = (denoise((mean + eye).reshape(d, 1, N, N)).reshape(d, d) - mean).T
    torch.testing.assert_close(denoise(mean.reshape(1, 1, N, N)).flatten(), mean)
    mse = (torch.trace((m - eye) @ cov @ (m - eye).T) + t * torch.trace(m @ m.T)).item() / d
    mse_wiener = (g.eigenvalues * t / (g.eigenvalues + t)).sum().item() / d
    assert 1.0 <= mse / mse_wiener < 1.02


def test_multiscale_denoise_runs_with_networks():
    torch.manual_seed(0)
    low = BlindCNN(2, layers=3, width=4).eval()
    conds = [ConditionalCNN(2, layers=3, width=4, rf=5).eval() for _ in range(2)]
    y = torch.rand(3, 2, 16, 16)
    with torch.no_grad():
        x_hat = multiscale_denoise(y, low.denoise, [c.denoise for c in conds])
    assert x_hat.shape == y.shape and torch.isfinite(x_hat).all()


def test_quadratic_sigma_distribution():
    sigma = sample_quadratic_sigma(20000, 0.5, 255, torch.Generator().manual_seed(0))
    k = (sigma / 0.5).sqrt() * 255
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-3)  # on the (k / 255)^2 grid
    assert sigma.min() == 0.0 and sigma.max() <= 0.5
    assert sigma.mean().item() == pytest.approx(0.5 * (256 * 511) / (6 * 255**2), rel=0.02)  # E k^2


def test_noise_prediction_loss_noises_only_the_target():
    seen = {}

    def zero_net(noisy, x_j):
        seen["noisy"], seen["x_j"] = noisy, x_j
        return torch.zeros_like(noisy)

    d = torch.zeros(4, 3, 32, 32)
    x_j = torch.rand(4, 1, 32, 32)
    sigma = torch.tensor([0.0, 0.1, 0.2, 0.4])
    out = conditional_denoiser_loss(zero_net, d, x_j, sigma, torch.Generator().manual_seed(0))
    assert seen["x_j"] is x_j
    torch.testing.assert_close(seen["noisy"].std(dim=(1, 2, 3)), sigma, rtol=0.05, atol=1e-6)
    torch.testing.assert_close(out["loss"], sigma**2, rtol=0.1, atol=1e-6)  # predicting 0 noise


def test_objectives_pick_the_right_band_and_train(field):
    f, _, _, _ = field
    x = f.sample(64, torch.Generator().manual_seed(4)).float()
    lows, details = pyramid(x, 2)
    assert band_max(x, 2, 0) == details[0].abs().max().item()
    assert band_max(x, 2, None) == lows[-1].abs().max().item() and band_max(x, 0, None) == x.max().item()
    torch.manual_seed(0)
    net = ConditionalCNN(1, layers=3, width=16, rf=5)
    objective = denoiser_objective(levels=2, j=0, sigma_max=band_max(x, 2, 0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(40):
        loss = objective(net, x, None, torch.Generator().manual_seed(step))["loss"]
        assert loss.shape == (64,)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    # fixed evaluation noise: the trained net beats predicting no noise (the identity denoiser)
    sigma = torch.full((64,), 0.15)  # about twice the detail std
    with torch.no_grad():
        trained = noise_prediction_loss(
            net.eval(), details[0], sigma, torch.Generator().manual_seed(99), lows[0]
        )
    assert trained["loss"].mean() < 0.5 * sigma[0] ** 2  # measured 0.32
    for levels, j in [(0, None), (2, None)]:
        flat = BlindCNN(1, layers=3, width=4)
        assert denoiser_objective(levels, j, 1.0)(flat, x, None, torch.Generator())["loss"].shape == (64,)


def test_release_noise_range_is_the_square_of_the_band_max_in_averaging_units(field):
    """The LPM release's training.py: cCNN_j's std range ends at max|d_j|^2 with d_j in its averaging
    units; the flat and low-pass networks' at 1 there. The same physical range in orthonormal units."""
    f, _, _, _ = field
    x = f.sample(16, torch.Generator().manual_seed(5)).float()
    lows_avg, details_avg = pyramid(x, 2, normalization="average")
    for j in range(2):
        release = noise_sigma_max(x, 2, j, "release", normalization="average")
        assert release == pytest.approx(details_avg[j].abs().max().item() ** 2, rel=1e-6)
        assert release < band_max(x, 2, j, normalization="average")  # narrower than band_max here
        # orthonormal coefficients of level j + 1 are 2^(j+1) times the averaging ones: so is the range
        ortho = noise_sigma_max(x, 2, j, "release", normalization="orthonormal")
        assert ortho == pytest.approx(2 ** (j + 1) * release, rel=1e-5)
        assert noise_sigma_max(x, 2, j, "band_max") == band_max(x, 2, j)
    assert noise_sigma_max(x, 2, None, "release", normalization="average") == 1.0
    assert noise_sigma_max(x, 2, None, "release") == pytest.approx(4.0)
    assert noise_sigma_max(x, 0, None, "release") == 1.0
    assert noise_sigma_max(torch.zeros(2, 1, 8, 8), 2, 0, "release") == 0.0  # a zero band stays refused


def test_intensity_scaling_scales_the_flat_and_lowpass_inputs_only():
    x = 0.2 + torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []

    def net(noisy, *cond):
        seen.append((noisy, *cond))
        return torch.zeros_like(noisy)

    def inputs(levels, j, scaling):
        seen.clear()
        objective = denoiser_objective(levels, j, 0.0, intensity_scaling=scaling)  # sigma 0: no noise
        objective(net, x, None, torch.Generator().manual_seed(1))
        return seen[0]

    lows, details = pyramid(x, 2)
    for levels, j, target in [(0, None, x), (2, None, lows[-1])]:
        (got,) = inputs(levels, j, True)
        u = (got / target).flatten(1)  # one factor per image, U(0, 1)
        torch.testing.assert_close(u, u[:, :1].expand_as(u))
        assert 0 < u.min() and u.max() < 1 and u[:, 0].std() > 0.2  # U(0, 1): std 0.29
        torch.testing.assert_close(inputs(levels, j, False)[0], target)
    # a conditional network sees the data's own details and low-pass (the release: no rescale)
    got_d, got_x = inputs(2, 0, True)
    torch.testing.assert_close(got_d, details[0])
    torch.testing.assert_close(got_x, lows[0])
