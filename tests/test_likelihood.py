"""log Z, NLL and the probability-flow ODE NLL, against the exact Gaussian field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from _gaussian import gaussian_model
from image_density.likelihood import (
    data_covariance_eigenvalues,
    gaussian_entropy_nats,
    log_z,
    nll,
    ode_nll,
    transport_integrand,
)
from image_density.models import EnergyModel, UNet
from image_density.units import nll_bits_per_dim

F64 = torch.float64


def _bits(nats: torch.Tensor, d: int) -> torch.Tensor:
    return nll_bits_per_dim(nats, d, quantized=False)


def test_gaussian_entropy():
    lam = torch.tensor([0.5, 2.0, 1e-3], dtype=F64)
    ref = stats.multivariate_normal(np.zeros(3), np.diag(lam.numpy())).entropy()
    assert gaussian_entropy_nats(lam) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("n", [5, 40])  # N <= d (singular values) and N > d (covariance)
def test_data_covariance_eigenvalues(n):
    x = torch.randn(n, 2, 3, 3, generator=torch.Generator().manual_seed(n)) * torch.linspace(0.1, 2, 18).view(
        2, 3, 3
    )
    lam = data_covariance_eigenvalues(x)
    ref = np.sort(np.linalg.eigvalsh(np.cov(x.flatten(1).double().numpy(), rowvar=False)))[::-1]
    assert lam.shape == (18,) and lam.dtype == F64
    np.testing.assert_allclose(lam.numpy(), ref.clip(0), atol=1e-12, rtol=1e-9)


@pytest.fixture(scope="module")
def field_data():
    field = gaussian_model(channels=3, size=8)  # d = 192
    g = torch.Generator().manual_seed(100)
    return field, field.sample(1024, g), field.sample(64, g)


@pytest.mark.parametrize("refine", [True, False])
def test_log_z_and_nll_reproduce_the_exact_gaussian_nll(field_data, refine):
    """The likelihood code alone: U exact, so any error is log Z's (the t_max Gaussian approximation,
    Monte-Carlo). Compared per image with the exact -log p(x), to 1e-4 bits/dim."""
    field, x_train, x_test = field_data
    d = x_test[0].numel()
    lam = data_covariance_eigenvalues(x_train) if refine else None
    lz = log_z(
        field, x_train, t_max=1e3, draws=2, generator=torch.Generator().manual_seed(1), eigenvalues=lam
    )
    err = _bits(nll(field, x_test, lz) - field.nll_exact(x_test), d)
    assert err.abs().max() < 1e-4
    assert abs(lz - field.log_z()) / (d * math.log(2)) < 1e-4
    # the mean test NLL is the exact entropy (up to sampling of the 64 test images)
    entropy_bits = gaussian_entropy_nats(field.eigenvalues) / (d * math.log(2))
    assert _bits(nll(field, x_test, lz), d).mean().item() == pytest.approx(entropy_bits, abs=0.02)


def test_log_z_accepts_batches_and_is_reproducible(field_data):
    field, x_train, _ = field_data
    kw = dict(t_max=1e3, draws=1)
    a = log_z(field, x_train[:256], generator=torch.Generator().manual_seed(3), batch_size=100, **kw)
    b = log_z(field, list(x_train[:256].split(100)), generator=torch.Generator().manual_seed(3), **kw)
    assert a == pytest.approx(b, rel=1e-12)
    with pytest.raises(ValueError, match="192"):
        log_z(field, x_train[:8], eigenvalues=torch.ones(10), generator=None, **kw)


def test_nll_is_batched_and_uses_t(field_data):
    field, _, x = field_data
    out = nll(field, x[:10], log_z=1.5, batch_size=3)
    assert out.shape == (10,) and out.dtype == F64
    torch.testing.assert_close(out, field.energy(x[:10], torch.zeros(10, dtype=F64)) + 1.5)
    torch.testing.assert_close(nll(field, x[:4], 0.0, t=0.1), field.nll_exact(x[:4], 0.1) - field.log_z())


def test_ode_nll_matches_the_exact_nll_exact_trace():
    field = gaussian_model(channels=1, size=4, mean=0.5)  # d = 16
    x = field.sample(6, torch.Generator().manual_seed(5))
    t_min = 1e-6
    out = ode_nll(
        field, x, t_min, 1e3, rtol=1e-7, atol=1e-7, prior_mean=0.5, prior_var=field.eigenvalues.mean().item()
    )
    assert out.shape == (6,) and out.dtype == F64
    err = _bits(out - field.nll_exact(x, t_min), 16)
    assert err.abs().max() < 1e-3


def test_ode_nll_hutchinson_is_unbiased():
    field = gaussian_model(channels=1, size=4, mean=0.5)
    x = field.sample(4, torch.Generator().manual_seed(6))
    kw = dict(rtol=1e-5, atol=1e-5, prior_mean=0.5, prior_var=field.eigenvalues.mean().item())
    out = ode_nll(
        field, x, 1e-5, 1e3, trace="hutchinson", probes=64, generator=torch.Generator().manual_seed(0), **kw
    )
    err = _bits(out - field.nll_exact(x, 1e-5), 16)
    assert err.abs().max() < 0.1 and err.mean().abs() < 0.05


def test_ode_nll_runs_on_a_learned_energy_and_converges_in_tolerance():
    torch.manual_seed(0)
    net = UNet(1, widths=[4], mid_width=4, convs_per_block=1, emb_features=2, emb_dim=4)
    torch.nn.init.normal_(net.out.weight, std=0.3)
    model = EnergyModel(net, "offset").double()
    x = torch.rand(1, 1, 4, 4, dtype=F64)
    a = ode_nll(model, x, 1e-2, 10.0, rtol=1e-4, atol=1e-4)
    b = ode_nll(model, x, 1e-2, 10.0, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(a).all()
    assert _bits(a - b, 16).abs().max() < 1e-3


def test_transport_integrand_against_the_exact_field():
    """On samples of the field: (t/d) E[dU/dt] = 0 (the mean time score of p_t vanishes), (t/2d) E[Lap U]
    = (t/2d) sum_k 1/(lambda_k + t); and the integral over log t of their sum is the mean path
    (E_z U(x + sqrt(t_max) z, t_max) - U(x, t_min)) / d, measured directly."""
    field = gaussian_model(channels=1, size=4, mean=0.5)  # d = 16
    d = 16
    x = field.sample(256, torch.Generator().manual_seed(7))
    t_grid = torch.logspace(-4, 3, 57, dtype=F64)
    a, b = transport_integrand(field, x, t_grid, probes=4, generator=torch.Generator().manual_seed(8))
    assert a.shape == b.shape == (57,) and a.dtype == F64
    assert a.abs().max() < 0.05
    lap = torch.stack([(1 / (field.eigenvalues + t)).sum() for t in t_grid])
    torch.testing.assert_close(b, t_grid / (2 * d) * lap, rtol=0.02, atol=1e-4)
    path = torch.trapezoid(a + b, t_grid.log()).item()
    t_max = torch.full((256,), 1e3, dtype=F64)
    g = torch.Generator().manual_seed(9)
    u_max = torch.stack([field.energy(x + 1e3**0.5 * torch.randn(x.shape, generator=g, dtype=F64), t_max)
                         for _ in range(8)]).mean(0)  # fmt: skip
    direct = ((u_max - field.energy(x, torch.full((256,), 1e-4, dtype=F64))) / d).mean().item()
    assert path == pytest.approx(direct, abs=0.05)
    assert direct > 2  # the path is long: ~ (1/2) log(t_max / lambda)


def test_ode_nll_rejects_bad_arguments():
    field = gaussian_model(channels=1, size=4)
    x = field.sample(1)
    with pytest.raises(ValueError, match="trace"):
        ode_nll(field, x, 1e-3, 1.0, trace="approx")
    with pytest.raises(ValueError, match="t_min < t_max"):
        ode_nll(field, x, 1.0, 1e-3)


@pytest.mark.slow  # torch.compile: about 40 CPU seconds
def test_compiled_nll_equals_the_eager_nll_and_follows_the_weights():
    """nll(compile=True) is the fast path of benchmarks/speed.py: the same NLL to 1e-4 bits/dim (the
    issue-18 tolerance), on the release's layout and norm, a partial last batch included, and after
    the weights change (they are inputs of the compiled graph, not constants)."""
    torch.manual_seed(0)
    net = UNet(1, widths=[4], mid_width=8, convs_per_block=2, emb_features=4, emb_dim=8,
               layout="release", embedding="t", norm="release", init="release")  # fmt: skip
    model = EnergyModel(net, "offset").eval()
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(1))  # batches 4, 4, 2
    for _ in range(2):
        eager = nll(model, x, 3.0, t=1e-3, batch_size=4)
        fast = nll(model, x, 3.0, t=1e-3, batch_size=4, compile=True)
        assert eager.abs().min() > 1e-2  # a U that is not ~0 everywhere
        assert _bits(fast - eager, 16).abs().max() < 1e-4
        with torch.no_grad():
            net.last_conv.weight.mul_(-2.0)
