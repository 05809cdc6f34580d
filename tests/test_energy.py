"""The model face: EnergyModel / DenoiserModel gradients, GaussianEnergy as exact ground truth, registry."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from _gaussian import field_eigenvalues, gaussian_model
from image_density.config import UNetSpec
from image_density.models import (
    ARCHS,
    DenoiserModel,
    EnergyModel,
    GaussianEnergy,
    UNet,
    build_model,
    register,
    unet_model_spec,
)
from image_density.models.unet import ScaleNorm

F64 = torch.float64


def _energy_model(form: str, channels: int = 1) -> EnergyModel:
    torch.manual_seed(0)
    net = UNet(channels, widths=[4, 8], mid_width=8, convs_per_block=2, emb_features=4, emb_dim=8)
    nn.init.normal_(net.out.weight, std=0.3)
    for m in net.modules():
        if isinstance(m, ScaleNorm):
            nn.init.normal_(m.cond.weight, std=0.3)
    model = EnergyModel(net, form).double()
    if model.offset is not None:
        nn.init.normal_(model.offset.g[-1].weight, std=0.3)
    return model


def _fd_score(energy, y, t, h=1e-6):
    """<grad_y U, v> by central differences along a random direction v, (B,)."""
    v = torch.randn_like(y)
    return (energy(y + h * v, t) - energy(y - h * v, t)) / (2 * h), v


# --------------------------------------------------------------------------------- EnergyModel


@pytest.mark.parametrize("form", ["pure", "offset"])
def test_energy_model_gradients_match_finite_differences(form):
    model = _energy_model(form)
    y = torch.rand(3, 1, 8, 8, dtype=F64)
    t = torch.tensor([1e-4, 0.05, 20.0], dtype=F64)
    s_y, s_t = model.score_and_time_score(y, t)
    fd, v = _fd_score(model.energy, y, t)
    torch.testing.assert_close((s_y * v).flatten(1).sum(1), fd, rtol=1e-6, atol=1e-8)
    h = 1e-6 * t
    fd_t = (model.energy(y, t + h) - model.energy(y, t - h)) / (2 * h)
    torch.testing.assert_close(s_t, fd_t, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(model.score(y, t), s_y)
    torch.testing.assert_close(model.time_score(y, t), s_t)
    torch.testing.assert_close(model.denoise(y, t), y - t.view(-1, 1, 1, 1) * s_y)
    assert s_t.abs().min() > 0 and s_y.abs().max() > 0


def test_energy_is_half_inner_product_plus_offset():
    model = _energy_model("offset")
    y, t = torch.rand(2, 1, 8, 8, dtype=F64), torch.tensor([1e-3, 1.0], dtype=F64)
    pure = 0.5 * (y * model.net(y, t)).flatten(1).sum(1)
    torch.testing.assert_close(model.energy(y, t), pure + 64 * model.offset.g(t.log()[:, None] / 10)[:, 0])
    # the pure form: U(0, t) = 0 for every t (no learned constant)
    assert _energy_model("pure").energy(torch.zeros(2, 1, 8, 8, dtype=F64), t).abs().max() == 0


def test_gradients_work_under_no_grad_and_detach_without_create_graph():
    model = _energy_model("offset")
    y, t = torch.rand(2, 1, 8, 8, dtype=F64), torch.tensor([0.01, 1.0], dtype=F64)
    with torch.no_grad():
        s_y, s_t = model.score_and_time_score(y, t)
        x_hat = model.denoise(y, t)
    assert not s_y.requires_grad and not s_t.requires_grad and not x_hat.requires_grad
    torch.testing.assert_close(s_y, model.score(y, t))


def test_create_graph_gives_parameter_gradients_through_the_scores():
    model = _energy_model("offset")
    y, t = torch.rand(2, 1, 8, 8, dtype=F64), torch.tensor([0.01, 1.0], dtype=F64)
    s_y, s_t = model.score_and_time_score(y, t, create_graph=True)
    (s_y.square().sum() + s_t.square().sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_score_is_differentiable_in_a_y_that_requires_grad():
    """ode_nll differentiates the score w.r.t. y: the Hessian-vector product must match differences."""
    model = _energy_model("pure")
    y0, t = torch.rand(1, 1, 8, 8, dtype=F64), torch.tensor([0.1], dtype=F64)
    v = torch.randn_like(y0)
    y = y0.clone().requires_grad_(True)
    (hv,) = torch.autograd.grad(model.score(y, t, create_graph=True), y, grad_outputs=v)
    fd = (model.score(y0 + 1e-6 * v, t) - model.score(y0 - 1e-6 * v, t)) / 2e-6
    torch.testing.assert_close(hv, fd, rtol=1e-5, atol=1e-7)


def test_denoiser_model():
    net = UNet(1, widths=[4], mid_width=4, convs_per_block=1, emb_features=2, emb_dim=4)
    nn.init.normal_(net.out.weight)
    model = DenoiserModel(net)
    y, t = torch.rand(2, 1, 4, 4), torch.tensor([0.5, 2.0])
    torch.testing.assert_close(model.denoise(y, t), y - t.view(-1, 1, 1, 1) * net(y, t))


def test_energy_form_is_checked():
    with pytest.raises(ValueError, match="energy_form"):
        EnergyModel(nn.Identity(), "linear")
    with pytest.raises(ValueError, match="data_mean"):
        EnergyModel(nn.Identity(), "gaussian")


class _Zero(nn.Module):
    def forward(self, y, t):
        return 0 * y


def test_gaussian_form_with_zero_network_is_the_isotropic_gaussian():
    """energy_form 'gaussian' with f = 0 and b = 0 is exactly -log p_t of N(mu_c, s_c I) per channel,
    up to a constant: its score, time score and denoiser are GaussianEnergy's with flat eigenvalues."""
    mu, s = [0.25, 0.625], [2.0**-6, 2.0**-4]  # exact in the float32 buffers
    model = EnergyModel(_Zero(), "gaussian", mu, s).double()
    lam = torch.tensor(s, dtype=F64).view(2, 1, 1).expand(2, 4, 4).clone()
    exact = GaussianEnergy(lam, torch.tensor(mu, dtype=F64).view(2, 1, 1))
    y = torch.rand(3, 2, 4, 4, dtype=F64)
    t = torch.tensor([1e-4, 0.1, 100.0], dtype=F64)
    s_y, s_t = model.score_and_time_score(y, t)
    torch.testing.assert_close(s_y, exact.score(y, t))
    torch.testing.assert_close(s_t, exact.time_score(y, t))
    torch.testing.assert_close(model.energy(y, t), exact.energy(y, t))
    torch.testing.assert_close(model.denoise(y, t), exact.denoise(y, t))


# ------------------------------------------------------------------------------ GaussianEnergy


def _dense_covariance(lam: torch.Tensor) -> torch.Tensor:
    """(C, n, n) eigenvalues -> the dense (d, d) covariance F^H diag(lambda) F, channels independent."""
    c, n, _ = lam.shape
    eye = torch.eye(n * n, dtype=F64).reshape(n * n, 1, n, n)
    blocks = [
        torch.fft.ifft2(lam[i] * torch.fft.fft2(eye, norm="ortho"), norm="ortho").real.reshape(n * n, n * n)
        for i in range(c)
    ]
    return torch.block_diag(*blocks)


def _modulation(c: int, n: int) -> torch.Tensor:
    """A positive, rough (not smooth, not periodic), channel-dependent std map s (C, n, n)."""
    return torch.exp(0.4 * torch.randn(c, n, n, generator=torch.Generator().manual_seed(7), dtype=F64))


@pytest.fixture(params=["periodic", "modulated"])
def field_and_cov(request):
    """(GaussianEnergy, its dense covariance (d, d), built apart): the periodic field, or the same
    field modulated (x = m + s z, Cov = D C D with D = diag(s), a dense eigenbasis in GaussianEnergy)."""
    periodic = gaussian_model(channels=2, size=4, mean=0.3)
    cov = _dense_covariance(periodic.eigenvalues)
    if request.param == "periodic":
        return periodic, cov
    s = _modulation(2, 4)
    d_s = torch.diag(s.flatten())
    return GaussianEnergy.field(periodic.eigenvalues, 0.3, s), d_s @ cov @ d_s


@pytest.fixture
def field(field_and_cov):
    return field_and_cov[0]


def test_gaussian_energy_matches_a_dense_multivariate_normal(field_and_cov):
    field, cov = field_and_cov
    d = cov.shape[0]
    y = field.sample(5, torch.Generator().manual_seed(0))
    for t in (0.0, 1e-3, 10.0):
        ref = torch.distributions.MultivariateNormal(
            torch.full((d,), 0.3, dtype=F64), cov + t * torch.eye(d, dtype=F64)
        )
        torch.testing.assert_close(field.nll_exact(y, t), -ref.log_prob(y.flatten(1)))
    # energy = -log p_t up to the t-independent log Z
    t = torch.full((5,), 0.7, dtype=F64)
    torch.testing.assert_close(field.energy(y, t) + field.log_z(), field.nll_exact(y, 0.7))


def test_gaussian_denoise_is_the_wiener_filter(field_and_cov):
    field, cov = field_and_cov
    d = cov.shape[0]
    y = field.sample(3, torch.Generator().manual_seed(1)) + 0.2 * torch.randn(3, 2, 4, 4, dtype=F64)
    t = torch.tensor([1e-3, 0.04, 5.0], dtype=F64)
    for i in range(3):
        wiener = 0.3 + cov @ torch.linalg.solve(cov + t[i] * torch.eye(d, dtype=F64), y[i].flatten() - 0.3)
        torch.testing.assert_close(field.denoise(y, t)[i].flatten(), wiener)
    torch.testing.assert_close(field.denoise(y, t), y - t.view(-1, 1, 1, 1) * field.score(y, t))


def test_gaussian_scores_match_finite_differences(field):
    y = field.sample(3, torch.Generator().manual_seed(2))
    t = torch.tensor([1e-3, 0.04, 5.0], dtype=F64)
    fd, v = _fd_score(field.energy, y, t)
    s_y, s_t = field.score_and_time_score(y, t)
    torch.testing.assert_close((s_y * v).flatten(1).sum(1), fd, rtol=1e-6, atol=1e-6)
    h = 1e-6 * t
    torch.testing.assert_close(
        s_t, (field.energy(y, t + h) - field.energy(y, t - h)) / (2 * h), rtol=1e-5, atol=1e-6
    )


def test_gaussian_samples_have_the_spectrum():
    field = gaussian_model(channels=1, size=8)
    x = field.sample(20_000, torch.Generator().manual_seed(3))
    power = torch.fft.fft2(x - 0.5, norm="ortho").abs().square().mean(0)
    torch.testing.assert_close(power, field.eigenvalues, rtol=0.06, atol=0)
    assert x.dtype == F64 and torch.allclose(x.mean(), torch.tensor(0.5, dtype=F64), atol=2e-3)


def test_modulated_samples_have_the_modulated_covariance():
    """x = m + s z: the sample covariance of GaussianEnergy.field's samples is D C D (not C, not
    D^2 C D^2), and its exact log Z is that of the periodic field + sum log s (log det D C D)."""
    periodic = gaussian_model(channels=1, size=4, mean=0.5)
    s = _modulation(1, 4)
    field = GaussianEnergy.field(periodic.eigenvalues, 0.5, s)
    x = field.sample(40_000, torch.Generator().manual_seed(4)).flatten(1)  # (m, 16)
    d_s = torch.diag(s.flatten())
    true = d_s @ _dense_covariance(periodic.eigenvalues) @ d_s
    se = true.diagonal().max() * (2 / len(x)) ** 0.5  # standard error of a covariance entry (at most)
    assert (torch.cov(x.T) - true).abs().max() < 6 * se
    assert field.log_z() == pytest.approx(periodic.log_z() + s.log().sum().item(), rel=1e-12)


def test_stationary_projection_is_the_dft_diagonal_of_the_covariance(field_and_cov):
    """GaussianEnergy.stationary: spectrum diag(F Sigma F^H) (F the unitary 2-D DFT, built densely),
    same mean; the periodic field is its own projection; a modulated one loses NLL (KL > 0)."""
    field, cov = field_and_cov
    proj = field.stationary()
    dft = torch.fft.fft2(torch.eye(16, dtype=F64).reshape(16, 4, 4), norm="ortho").reshape(16, 16).T
    for ch in range(2):
        block = cov[16 * ch : 16 * (ch + 1), 16 * ch : 16 * (ch + 1)].to(dft.dtype)
        want = (dft @ block @ dft.conj().T).diagonal().real.reshape(4, 4)
        torch.testing.assert_close(proj.eigenvalues[ch], want)
    x = field.sample(2000, torch.Generator().manual_seed(5))
    excess = (proj.nll_exact(x) - field.nll_exact(x)).mean().item()
    if field.eigenvectors is None:
        assert proj is field
    else:
        kl = 0.5 * (torch.log(proj.eigenvalues).sum() - torch.log(field.eigenvalues).sum()).item()
        assert kl > 0.5 and excess == pytest.approx(kl, rel=0.1)


def test_gaussian_energy_of_any_covariance_from_its_eigh():
    """README, "Your own Gaussian data": GaussianEnergy(lam, mu, vec) from eigh(cov) of a covariance
    that no field generates is N(mu, cov): its NLL at t and its Wiener filter."""
    a = torch.randn(16, 16, generator=torch.Generator().manual_seed(8), dtype=F64)
    cov = a @ a.T / 16 + 0.01 * torch.eye(16, dtype=F64)
    lam, vec = torch.linalg.eigh(cov)
    g = GaussianEnergy(lam.reshape(1, 4, 4), 0.5, vec[None])
    y = g.sample(4, torch.Generator().manual_seed(9))
    for t in (0.0, 0.3):
        ref = torch.distributions.MultivariateNormal(
            torch.full((16,), 0.5, dtype=F64), cov + t * torch.eye(16)
        )
        torch.testing.assert_close(g.nll_exact(y, t), -ref.log_prob(y.flatten(1)))
    t = torch.full((4,), 0.3, dtype=F64)
    wiener = 0.5 + (y.flatten(1) - 0.5) @ torch.linalg.solve(cov + 0.3 * torch.eye(16, dtype=F64), cov)
    torch.testing.assert_close(g.denoise(y, t).flatten(1), wiener)


def test_gaussian_energy_rejects_bad_spectra():
    lam = field_eigenvalues(1, 4)
    with pytest.raises(ValueError, match="real field"):
        GaussianEnergy(lam * torch.linspace(1, 2, 4, dtype=F64)[None, None, :])
    with pytest.raises(ValueError, match="positive"):
        GaussianEnergy(-lam)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        GaussianEnergy(lam[0])
    with pytest.raises(ValueError, match="shape"):
        GaussianEnergy(lam).energy(torch.zeros(1, 1, 8, 8, dtype=F64), torch.ones(1, dtype=F64))
    with pytest.raises(ValueError, match="modulation must be positive"):
        GaussianEnergy.field(lam, 0.5, -torch.ones_like(lam))
    with pytest.raises(ValueError, match="eigenvectors must have shape"):
        GaussianEnergy(lam, 0.5, torch.eye(4, dtype=F64)[None])


# ------------------------------------------------------------------------------------ registry


def test_build_model_from_a_json_spec():
    spec = unet_model_spec(
        "energy_unet", 3, UNetSpec(widths=[4, 8], mid_width=8, convs_per_block=1, layout="separate")
    )
    spec = json.loads(json.dumps(spec))  # what a checkpoint stores
    model = build_model(spec)
    assert isinstance(model, EnergyModel) and model.energy_form == spec["energy_form"]
    assert model.energy(torch.rand(2, 3, 8, 8), torch.ones(2)).shape == (2,)
    den = build_model(unet_model_spec("denoiser_unet", 1, UNetSpec(widths=[4], mid_width=4)))
    assert isinstance(den, DenoiserModel)


def test_build_model_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown model arch 'nope'"):
        build_model({"arch": "nope"})
    with pytest.raises(ValueError, match="'arch' key"):
        build_model({"channels": 1})
    with pytest.raises(ValueError, match="does not fit arch 'energy_unet'"):
        build_model({"arch": "energy_unet", "channels": 1, "depth": 3})


def test_register_adds_an_arch_once():
    @register("test_identity_arch")
    def _identity() -> nn.Module:
        return nn.Identity()

    try:
        assert isinstance(build_model({"arch": "test_identity_arch"}), nn.Identity)
        with pytest.raises(ValueError, match="registered twice"):
            register("test_identity_arch")(_identity)
    finally:
        del ARCHS["test_identity_arch"]
