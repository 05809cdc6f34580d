"""Paper 1's losses: per-image terms by hand, and the exact Gaussian energy at their minimum."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from _gaussian import gaussian_model
from image_density.losses import denoiser_loss, dsm_term, dual_score_loss, tsm_term
from image_density.models import DenoiserModel, EnergyModel, GaussianEnergy, UNet
from image_density.noise import sample_log_uniform_t

F64 = torch.float64


def test_terms_by_hand():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    t = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(dsm_term(x_hat, x, t), torch.tensor([2.0, 0.0]))  # ||.||^2 = 4, d = 4
    y = torch.full((2, 1, 2, 2), 1.0)  # ||y - x||^2 / (d t) = 1 / t
    u_t = torch.tensor([4.0, -1.0])
    # (1/2 (1 - 1/t) - (t/d) u_t)^2: (-1/2 - 1/2)^2 = 1 and (1/4 + 1/2)^2 = 9/16
    torch.testing.assert_close(tsm_term(u_t, y, x, t), torch.tensor([1.0, 9 / 16]))


class _Shifted(nn.Module):
    """A Gaussian energy with a wrong t-dependent level: U + c d log(1 + t); same scores in y."""

    def __init__(self, field: GaussianEnergy, c: float):
        super().__init__()
        self.field, self.c, self.d = field, c, field.eigenvalues.numel()

    def score_and_time_score(self, y, t, create_graph=False):
        s_y, s_t = self.field.score_and_time_score(y, t)
        return s_y, s_t + self.c * self.d / (1 + t)


def _mean_losses(model, x, t, seed=0) -> dict[str, float]:
    out = dual_score_loss(model, x, t, torch.Generator().manual_seed(seed))
    return {k: v.mean().item() for k, v in out.items()}


@pytest.fixture(scope="module")
def data():
    field = gaussian_model(channels=1, size=8)
    g = torch.Generator().manual_seed(100)  # not a seed of the noise below: z would copy x's draws
    x = field.sample(4096, g)
    t = sample_log_uniform_t(4096, 1e-4, 1e2, g).double()
    return field, x, t


def test_exact_energy_minimizes_the_dual_loss(data):
    field, x, t = data
    exact = _mean_losses(field, x, t)
    # common random numbers (same x, t, z): the comparisons are not masked by Monte-Carlo noise
    for scale in (0.7, 1.4):
        wrong = _mean_losses(GaussianEnergy(field.eigenvalues * scale, 0.5), x, t)
        assert wrong["dsm"] > exact["dsm"] + 2e-3 and wrong["loss"] > exact["loss"] + 2e-3
    for c in (-0.05, 0.05):  # right scores, wrong time score: only ell_TSM sees it
        wrong = _mean_losses(_Shifted(field, c), x, t)
        assert wrong["dsm"] == pytest.approx(exact["dsm"], rel=1e-12)
        assert wrong["tsm"] > exact["tsm"] + 1e-4


def test_dual_loss_levels_at_the_minimum(data):
    """In a real eigenbasis, y_k = x_k + sqrt(t) z_k with x_k ~ N(0, lambda_k); a_k = lambda_k/(lambda_k+t).
    E[ell_DSM] = mean_k a_k (the Wiener MSE over t). At the exact time score the TSM residual is
    1/(2d) sum_k [(1 - z_k^2) - (1 - a_k)(1 - w_k^2)], w_k = y_k / sqrt(lambda_k + t), corr(z_k, w_k)^2 =
    1 - a_k, so E[ell_TSM] = 1/(2 d^2) sum_k a_k (2 - a_k): what no time score can remove."""
    field, x, t = data
    out = dual_score_loss(field, x, t, torch.Generator().manual_seed(1))
    lam = field.eigenvalues.flatten()
    d = lam.numel()
    a = lam[None] / (lam[None] + t[:, None])  # (B, d)
    torch.testing.assert_close(out["dsm"].mean(), a.mean(1).mean(), rtol=0.01, atol=0)
    expected_tsm = (a * (2 - a)).sum(1).mean() / (2 * d**2)
    torch.testing.assert_close(out["tsm"].mean(), expected_tsm, rtol=0.05, atol=0)


def test_loss_differentiates_through_the_scores():
    torch.manual_seed(0)
    net = UNet(1, widths=[4], mid_width=4, convs_per_block=1, emb_features=2, emb_dim=4)
    model = EnergyModel(net, "offset")
    x, t = torch.rand(4, 1, 4, 4), torch.tensor([1e-6, 1e-3, 1.0, 1e3])
    out = dual_score_loss(model, x, t, torch.Generator().manual_seed(0))
    assert set(out) == {"dsm", "tsm", "loss"} and all(v.shape == (4,) for v in out.values())
    torch.testing.assert_close(out["loss"], out["dsm"] + out["tsm"])
    # f = 0 at initialization: the identity denoiser, ell_DSM = ||z||^2 / d exactly
    g = torch.Generator().manual_seed(0)
    z = torch.randn(x.shape, generator=g)
    torch.testing.assert_close(out["dsm"], z.flatten(1).square().mean(1), rtol=1e-4, atol=0)
    out["loss"].mean().backward()
    assert net.out.weight.grad.abs().sum() > 0  # reached only through grad_y U (double backprop)
    assert model.offset.g[-1].weight.grad.abs().sum() > 0  # reached only through dU/dt


def test_denoiser_loss_equals_the_dsm_term_of_the_same_field():
    field = gaussian_model(channels=1, size=4)
    x = field.sample(8, torch.Generator().manual_seed(0))
    t = torch.logspace(-3, 1, 8, dtype=F64)

    class WienerNet(nn.Module):  # f = grad_y U, so y - t f is the Wiener filter
        def forward(self, y, t):
            return field.score(y, t)

    den = denoiser_loss(DenoiserModel(WienerNet()), x, t, torch.Generator().manual_seed(5))
    dual = dual_score_loss(field, x, t, torch.Generator().manual_seed(5))
    assert set(den) == {"dsm", "loss"}
    torch.testing.assert_close(den["dsm"], dual["dsm"])
    torch.testing.assert_close(den["loss"], den["dsm"])
    assert math.isfinite(den["loss"].sum().item())
