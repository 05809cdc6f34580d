"""Fig. 1 toy: single score matching gets each mode's shape, dual score matching also their levels."""

from __future__ import annotations

import math

import pytest
import torch

from image_density.studies.toy import mixture_energy, mode_levels, toy_study


def test_mixture_energy_is_the_closed_form():
    y = torch.randn(3, 10, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    p = 0.3 * torch.distributions.Normal(0, (1 + t[:, None]).sqrt()).log_prob(y).sum(1).exp()
    p = p + 0.7 * torch.distributions.Normal(0, (4 + t[:, None]).sqrt()).log_prob(y).sum(1).exp()
    torch.testing.assert_close(mixture_energy(y, t, (1.0, 2.0), (0.3, 0.7)), -p.log())


@pytest.fixture(scope="module")
def table():
    return toy_study(steps=600, n_test=200, logz_images=500, seed=0)


def test_table_is_tidy(table):
    assert list(table.columns) == ["method", "sigma", "r", "nll", "nll_bits_per_dim"]
    assert set(table.method) == {"closed_form", "single", "dual"}
    assert len(table) == 3 * 200 and table.notna().all().all()


def test_single_gets_the_shape_dual_also_the_levels(table):
    levels = mode_levels(table).set_index(["method", "sigma"])
    # closed form: -log p at the shell of mode sigma is (1/2) log2(2 pi e sigma^2) + 1/d bits/dim
    for sigma in (1.0, 4.0):
        expected = 0.5 * math.log2(2 * math.pi * math.e * sigma**2) + 1 / 1000
        assert levels.loc[("closed_form", sigma), "level"] == pytest.approx(expected, abs=0.01)
    # shape: within each mode, -log p follows the closed form sample by sample, for both
    assert (levels.loc[["single", "dual"], "shape_corr"] > 0.99).all()
    # levels: the gap between the modes (2 bits/dim) is right only with the time-score term
    single = levels.loc[("single", 4.0), "relative_level_error"]
    dual = levels.loc[("dual", 4.0), "relative_level_error"]
    assert abs(dual) < 0.15
    assert abs(single) > 1.0
