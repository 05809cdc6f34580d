"""Paper 1, Fig. 1: single vs dual score matching on a d = 1000 Gaussian scale mixture.

x = sigma z, sigma in `sigmas` with `weights`, z ~ N(0, I_d). The noisy density is the closed form
p_t(y) = sum_k w_k N(y; 0, (sigma_k^2 + t) I), which depends on y only through r = ||y||^2 / d.

Both learned energies use the same radial network, in the paper's form U = 1/2 <y, f(y, t)>:
f(y, t) = (2 g / r) y, so U = d g with g(rho, log t) an MLP of the per-dimension energy, and
rho = r / (v + t) the noisy radius whitened by the data variance v = sum_k w_k sigma_k^2 (EDM-style input
scaling; it knows the overall scale, not the modes). The features are deliberately plain (rho, not
log r: with log r a smooth interpolation between the modes happens to give their true relative level,
since -log p at the shell of N(0, sigma^2 I) is (d/2)(1 + log 2 pi sigma^2)). Single score matching
(ell_DSM only) constrains grad_y U where the data are, so it learns each mode's shape but nothing ties
the level at r ~ 1 to the level at r ~ 16 at small t; the time-score term ties them through t. Both are
normalized at t_max by the same log Z code as the image models.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn

from image_density.likelihood import log_z, nll
from image_density.losses import dual_score_loss
from image_density.models.energy import EnergyModel
from image_density.noise import sample_log_uniform_t
from image_density.units import nll_bits_per_dim

# log t / LOG_T_SCALE is of order 1 over t in [1e-3, 1e3]
LOG_T_SCALE = 7.0


class RadialNet(nn.Module):
    """f(y, t) = (2 g / r) y, g an MLP of (r / (data_var + t), log t); y: (B, d). U = 1/2 <y, f> = d g."""

    def __init__(self, data_var: float, hidden: int = 64):
        super().__init__()
        self.data_var = data_var
        # no bias at the end: a constant in U changes no score and is absorbed by log Z
        self.g = nn.Sequential(
            nn.Linear(2, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1, bias=False),
        )

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r = y.square().mean(1)
        feats = torch.stack([r / (self.data_var + t), t.log() / LOG_T_SCALE], dim=1)  # (B, 2)
        return (2 * self.g(feats)[:, 0] / r)[:, None] * y


def mixture_energy(
    y: torch.Tensor, t: torch.Tensor, sigmas: tuple[float, ...], weights: tuple[float, ...]
) -> torch.Tensor:
    """Exact -log p_t(y), (B,), for y (B, d)."""
    d = y.shape[1]
    sq = y.square().sum(1)[:, None]  # (B, 1)
    var = torch.tensor(sigmas, dtype=y.dtype).square()[None] + t[:, None]  # (B, K)
    log_w = torch.tensor(weights, dtype=y.dtype).log()[None]
    log_p = log_w - 0.5 * d * torch.log(2 * math.pi * var) - 0.5 * sq / var
    return -torch.logsumexp(log_p, dim=1)


def sample_mixture(
    n: int, d: int, sigmas: tuple[float, ...], weights: tuple[float, ...], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (n, d), sigma of each sample (n,))."""
    k = torch.multinomial(torch.tensor(weights), n, replacement=True, generator=generator)
    sigma = torch.tensor(sigmas)[k]
    return sigma[:, None] * torch.randn(n, d, generator=generator), sigma


def _train(
    model: EnergyModel, dual: bool, d: int, sigmas, weights, steps, batch, lr, t_min, t_max, seed
) -> EnergyModel:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        x, _ = sample_mixture(batch, d, sigmas, weights, g)
        t = sample_log_uniform_t(batch, t_min, t_max, g)
        out = dual_score_loss(model, x, t, g)
        loss = (out["loss"] if dual else out["dsm"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def toy_study(
    d: int = 1000,
    sigmas: tuple[float, ...] = (1.0, 4.0),
    weights: tuple[float, ...] = (0.5, 0.5),
    steps: int = 600,
    batch: int = 128,
    lr: float = 1e-2,
    t_min: float = 1e-3,
    t_max: float = 1e3,
    hidden: int = 64,
    energy_form: str = "pure",
    n_test: int = 400,
    logz_images: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Train a single-SM and a dual-SM energy on the mixture (same initialization, data and noise),
    normalize both at t_max, and return one row per method x test sample: method (closed_form |
    single | dual), sigma (the sample's mode), r = ||x||^2 / d, nll (nats) and nll_bits_per_dim.
    All are -log p_{t_min}(x): the learned U are trained down to t_min only, and the closed form is
    taken at the same t. An entry point: `seed` fixes the initialization, data and noise."""
    if len(sigmas) != len(weights) or abs(sum(weights) - 1) > 1e-9:
        raise ValueError(f"sigmas {sigmas} and weights {weights} must have equal length, weights sum 1")
    data_var = sum(w * s**2 for w, s in zip(weights, sigmas, strict=True))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        init = EnergyModel(RadialNet(data_var, hidden), energy_form).state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    x_z, _ = sample_mixture(logz_images, d, sigmas, weights, g)
    # the mixture's covariance is data_var I, so the t_max Gaussian refinement uses it exactly
    lam = torch.full((d,), data_var)
    x, sigma = sample_mixture(n_test, d, sigmas, weights, g)
    t_eval = torch.full((n_test,), t_min)
    nlls = {"closed_form": mixture_energy(x.double(), t_eval.double(), sigmas, weights)}
    for method, dual in (("single", False), ("dual", True)):
        model = EnergyModel(RadialNet(data_var, hidden), energy_form)
        model.load_state_dict(init)
        _train(model, dual, d, sigmas, weights, steps, batch, lr, t_min, t_max, seed)
        lz = log_z(model.eval(), x_z, t_max, draws=1, generator=g, eigenvalues=lam)
        nlls[method] = nll(model, x, lz, t=t_min)
    r = x.square().mean(1).numpy()
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "method": method,
                    "sigma": sigma.numpy(),
                    "r": r,
                    "nll": v.numpy(),
                    "nll_bits_per_dim": nll_bits_per_dim(v, d, quantized=False).numpy(),
                }
            )
            for method, v in nlls.items()
        ],
        ignore_index=True,
    )


def mode_levels(table: pd.DataFrame) -> pd.DataFrame:
    """Per method x mode (tidy): level = mean bits/dim; relative_level = level minus the first mode's;
    relative_level_error = that minus the closed form's (the levels claim); slope = d(bits/dim)/dr
    within the mode and shape_corr = per-sample correlation with the closed form (the shape claim)."""
    truth = table[table.method == "closed_form"].set_index(["sigma", "r"]).nll_bits_per_dim
    rows = []
    for (method, sigma), m in table.sort_values("sigma", kind="stable").groupby(
        ["method", "sigma"], sort=False
    ):
        v = m.set_index(["sigma", "r"]).nll_bits_per_dim
        rows.append(
            {
                "method": method,
                "sigma": sigma,
                "level": v.mean(),
                "slope": np.polyfit(m.r, m.nll_bits_per_dim, 1)[0],
                "shape_corr": np.corrcoef(v, truth.loc[v.index])[0, 1],
            }
        )
    out = pd.DataFrame(rows)
    first = out.groupby("method")["level"].transform("first")
    out["relative_level"] = out["level"] - first
    true_rel = out[out.method == "closed_form"].set_index("sigma").relative_level
    out["relative_level_error"] = out.relative_level - out.sigma.map(true_rel)
    return out
