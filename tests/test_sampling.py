"""Coarse-to-fine sampling driven by the exact (blind) denoisers of a Gaussian field."""

import math

import numpy as np
import pytest
import torch

from _dense_gaussian import field_wavelet_gaussians
from image_density.config import SamplerSpec
from image_density.data.gaussian_field import GaussianField
from image_density.models.cnn import BlindCNN, ConditionalCNN
from image_density.models.gaussian import GaussianEnergy
from image_density.sampling import blind_denoise, ml_noise_level, super_resolve, synthesize
from image_density.wavelets import decompose

N, LEVELS, SAMPLES = 16, 2, 512
T_RANGE = (1e-8, 1e2)
SPEC = SamplerSpec(h0=0.01, beta_lowpass=0.1, beta_details=0.3, sigma_0=1.0, sigma_L=0.002, max_iter=2000)


@pytest.fixture(scope="module")
def field():
    f, low, conds = field_wavelet_gaussians(N, LEVELS)

    def lowpass_denoiser(y):
        return blind_denoise(y, low.denoise, low.dU_dt, *T_RANGE)

    def conditional(c):
        def denoiser(d, x_j):
            g = c.at(x_j)
            return blind_denoise(d, g.denoise, g.dU_dt, *T_RANGE)

        return denoiser

    return (
        f,
        GaussianEnergy(torch.from_numpy(f.eigenvalues), f.spec.mean),
        lowpass_denoiser,
        [conditional(c) for c in conds],
    )


def radial_power_ratio(x: torch.Tensor, f: GaussianField) -> tuple[float, list[float]]:
    """Mean over frequencies of power / lambda, and the ratio of summed powers in radial bins."""
    power = (torch.fft.fft2(x - f.spec.mean, norm="ortho").abs() ** 2).mean(0)[0].numpy()
    lam = f.eigenvalues[0]
    k = np.fft.fftfreq(N) * N
    radius = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    bins = [(0, 2), (2, 4), (4, 6), (6, 12)]
    ratios = [
        power[(radius >= a) & (radius < b)].sum() / lam[(radius >= a) & (radius < b)].sum() for a, b in bins
    ]
    return float((power / lam).mean()), ratios


def test_ml_noise_level_recovers_t(field):
    f, g, _, _ = field
    x = f.sample(64, torch.Generator().manual_seed(0))
    for t in [1e-3, 1e-1]:
        y = x + math.sqrt(t) * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
        t_hat = ml_noise_level(y, g.time_score, *T_RANGE)
        assert t_hat.mean().item() == pytest.approx(t, rel=0.05)  # per image: sd ~30 % at 1e-3, 9 % at 0.1
    assert (t_hat / t).std().item() < 0.15


@pytest.fixture(scope="module")
def samples(field):
    f, _, lowpass_denoiser, conditionals = field
    gen = torch.Generator().manual_seed(2)
    return synthesize(lowpass_denoiser, conditionals, (SAMPLES, 1, N, N), SPEC, gen, dtype=torch.float64)


def test_synthesis_matches_the_field_spectrum(field, samples):
    f = field[0]
    x, iterations = samples
    mean_ratio, bins = radial_power_ratio(x, f)
    # Measured: mean 0.975, bins 1.025 / 0.972 / 0.971 / 0.971; the same statistics of 512 true
    # samples: 0.998, bins 0.997 / 0.979 / 0.992 / 1.002. The ~-2.5 % is the ascent's own bias: its
    # sigma_t (the residual) underestimates the noise where the signal dominates, so it injects too
    # little noise; smaller h0 or beta do not remove it.
    assert mean_ratio == pytest.approx(1.0, abs=0.05)
    assert all(r == pytest.approx(1.0, abs=0.07) for r in bins), bins
    assert x.mean().item() == pytest.approx(f.spec.mean, abs=0.01)
    assert [it.shape for it in iterations] == [(SAMPLES,)] * (LEVELS + 1)
    assert all(1 < it.float().mean() < SPEC.max_iter for it in iterations)


def test_super_resolution_keeps_the_lowpass_and_the_spectrum(field):
    f, _, _, conditionals = field
    x_true = f.sample(SAMPLES, torch.Generator().manual_seed(3))
    x_J = decompose(x_true, LEVELS)[0]
    x, _ = super_resolve(x_J, conditionals, SPEC, torch.Generator().manual_seed(4))
    torch.testing.assert_close(decompose(x, LEVELS)[0], x_J, rtol=0, atol=1e-12)
    mean_ratio, bins = radial_power_ratio(x, f)
    assert mean_ratio == pytest.approx(1.0, abs=0.05)
    assert all(r == pytest.approx(1.0, abs=0.07) for r in bins), bins


def test_flat_synthesis_with_the_blind_wiener_filter(field):
    # Single scale, same ascent: larger bias where the signal dominates the noise, i.e. at low
    # frequencies (measured: mean 0.967, bins 0.950 / 0.924 / 0.956 / 0.982; at beta 0.1 the two lowest
    # bins drop to 0.86 / 0.88), which the multi-scale sampler avoids (test above).
    f, g = field[:2]
    spec = SPEC.model_copy(update={"beta_lowpass": SPEC.beta_details})

    def denoiser(y):
        return blind_denoise(y, g.denoise, g.time_score, *T_RANGE)

    gen = torch.Generator().manual_seed(5)
    x, (iterations,) = synthesize(denoiser, [], (256, 1, N, N), spec, gen, dtype=torch.float64)
    mean_ratio, bins = radial_power_ratio(x, f)
    assert mean_ratio == pytest.approx(1.0, abs=0.05)
    assert all(r == pytest.approx(1.0, abs=0.1) for r in bins), bins
    assert iterations.max() < spec.max_iter


def test_sampling_with_networks_keeps_shapes_and_lowpass():
    torch.manual_seed(0)
    low = BlindCNN(1, layers=3, width=4).eval()
    conds = [ConditionalCNN(1, layers=3, width=4, rf=3).eval() for _ in range(2)]
    spec = SamplerSpec(max_iter=5)
    with torch.no_grad():
        x, iterations = synthesize(
            low.denoise, [c.denoise for c in conds], (2, 1, 16, 16), spec, torch.Generator()
        )
        x_J = torch.rand(2, 1, 4, 4, dtype=torch.float32)
        sr, _ = super_resolve(x_J, [c.denoise for c in conds], spec, torch.Generator())
    assert x.shape == (2, 1, 16, 16) and all((it <= 5).all() for it in iterations)
    torch.testing.assert_close(decompose(sr, 2)[0], x_J, rtol=0, atol=1e-6)
