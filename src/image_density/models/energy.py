"""The one face every loss, sampler and study calls: energy U(y, t), its gradients, the denoiser.

EnergyModel: U(y, t) = 1/2 <y, f(y, t)> (+ b(t)) (+ U_G(y, t)) with f any network shaped like its
input (METHOD.md, "Model"); scores by autograd: score = grad_y U, time_score = dU/dt, and Tweedie's
denoiser x_hat = y - t grad_y U. DenoiserModel: the plain baseline x_hat = y - t f(y, t).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from image_density.models.unet import T_FLOOR
from image_density.noise import expand_t

EnergyForm = Literal["pure", "offset", "gaussian"]
ENERGY_FORMS = ("pure", "offset", "gaussian")

# b(t) = d g(log t / LOG_T_SCALE): inputs of order 1 over t in [1e-9, 1e3]
LOG_T_SCALE = 10.0


class TimeOffset(nn.Module):
    """b(t) = d g(log t), g a small MLP. The factor d makes g a per-dimension quantity of order 1
    (-log p_t moves by ~ (d/2) log t over the t range), so (t/d) db/dt = dg/dlog t is order 1 too."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        # no bias at the end: a constant in U changes no score and is absorbed by log Z
        self.g = nn.Sequential(
            nn.Linear(1, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1, bias=False),
        )
        nn.init.zeros_(self.g[-1].weight)

    def forward(self, t: torch.Tensor, d: int) -> torch.Tensor:
        u = t.clamp_min(T_FLOOR).log()[:, None] / LOG_T_SCALE  # (B, 1)
        return d * self.g(u)[:, 0]


def gaussian_stats(x: torch.Tensor) -> dict[str, list[float]]:
    """Per channel mean and variance of images x (N, C, H, W), plain floats: the data_mean and data_var
    of the "gaussian" energy form (what a model spec stores)."""
    x = x.double().transpose(0, 1).flatten(1)  # (C, N H W)
    return {"data_mean": x.mean(1).tolist(), "data_var": x.var(1).tolist()}


class GaussianPart(nn.Module):
    """U_G(y, t) = sum_c [ ||y_c - mu_c||^2 / (2 (t + s_c)) + (d_c / 2) log(1 + t / s_c) ]: -log p_t of
    the isotropic Gaussian N(mu_c, s_c I) per channel c (mu_c, s_c the data's mean and pixel variance),
    up to a constant. At large t every Gaussian-tailed p_t agrees with it to first order in 1/t (its
    score, time score and log-det term, sum_k 1/(2t) lambda_k = d s / (2t)), so a network that models
    only U - U_G need not produce the y/t and d/(2t) of the heat flow from the image."""

    def __init__(self, data_mean: list[float], data_var: list[float]):
        super().__init__()
        if len(data_mean) != len(data_var) or not all(v > 0 for v in data_var):
            raise ValueError(
                f"data_mean/data_var: one per channel, variances > 0; got {data_mean}, {data_var}"
            )
        self.register_buffer("mu", torch.tensor(data_mean, dtype=torch.float32))
        self.register_buffer("s", torch.tensor(data_var, dtype=torch.float32))

    def weight(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(s_c / (t + s_c))^2, (B, C, 1, 1): the weight of the network's residual (EnergyModel.energy)."""
        s = self.s.to(y).view(1, -1, *[1] * (y.dim() - 2))
        return (s / (s + expand_t(t, y))).square()

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if y.shape[1] != self.mu.numel():
            raise ValueError(f"gaussian energy part of {self.mu.numel()} channels got {y.shape[1]}")
        shape = (1, -1, *[1] * (y.dim() - 2))
        s_t = self.s.to(y).view(shape) + expand_t(t, y)  # (B, C, 1, 1)
        quad = ((y - self.mu.to(y).view(shape)).square() / s_t).flatten(1).sum(1)
        per_channel = y[0, 0].numel()
        log_det = per_channel * torch.log1p(expand_t(t, y) / self.s.to(y).view(shape)).flatten(1).sum(1)
        return 0.5 * (quad + log_det)


class EnergyModel(nn.Module):
    """U(y, t) = 1/2 <y, f(y, t)> ("pure", the paper) or + b(t) ("offset", METHOD.md "Measured here":
    the pure form has U(0, t) = 0 for all t, so the t-dependent level of -log p_t near the data must be
    faked by f and is learned slowly) or + b(t) + U_G(y, t) ("gaussian": f models the residual from
    the data's isotropic Gaussian, exact at large t; needs data_mean, data_var per channel).
    Shapes: y (B, ...), t (B,) -> U (B,)."""

    def __init__(
        self,
        net: nn.Module,
        energy_form: EnergyForm = "pure",
        data_mean: list[float] | None = None,
        data_var: list[float] | None = None,
    ):
        super().__init__()
        if energy_form not in ENERGY_FORMS:
            raise ValueError(f"energy_form must be one of {ENERGY_FORMS}, got {energy_form!r}")
        if (energy_form == "gaussian") != (data_mean is not None and data_var is not None):
            raise ValueError("energy_form 'gaussian' needs data_mean and data_var (and only it takes them)")
        self.net = net
        self.energy_form = energy_form
        self.offset = TimeOffset() if energy_form != "pure" else None
        self.gaussian = GaussianPart(data_mean, data_var) if energy_form == "gaussian" else None

    def energy(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(y.dtype)
        u = 0.0
        if self.gaussian is not None:
            u = self.gaussian(y, t)
            # the residual of a Gaussian, 1/2 (y-mu)^T (Sigma_t^-1 - I/(t+s)) (y-mu), is a quadratic form
            # in y - mu whose eigenvalues (s - lambda) / ((lambda + t)(s + t)) fall like 1/t^2: f is
            # weighed by (s / (t + s))^2 so that its own target stays of order 1/s at large t. Unweighed,
            # any early f costs t ||f||^2 / d at large t and is driven to 0 at every t (measured, 8x8 field:
            # within 100 steps, NLL error 0.10 whatever the lr)
            y = y - self.gaussian.mu.to(y).view(1, -1, *[1] * (y.dim() - 2))
            u = u + 0.5 * (self.gaussian.weight(y, t) * y * self.net(y, t)).flatten(1).sum(1)
        else:
            u = 0.5 * (y * self.net(y, t)).flatten(1).sum(1)
        if self.offset is not None:
            u = u + self.offset(t, y[0].numel())
        return u

    forward = energy

    def score_and_time_score(
        self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(grad_y U (B, ...), dU/dt (B,)) from one backward pass. With create_graph the results are
        differentiable (training: double backprop; divergences). Works under torch.no_grad, not under
        torch.inference_mode."""
        with torch.enable_grad():
            # keep a y/t that already requires grad, so callers can differentiate the score w.r.t. it
            y = y if y.requires_grad else y.detach().requires_grad_(True)
            t = t.to(y.dtype)
            t = t if t.requires_grad else t.detach().requires_grad_(True)
            u = self.energy(y, t)
            # U of different images are independent, so grad of the sum gives per-image gradients
            s_y, s_t = torch.autograd.grad(u.sum(), (y, t), create_graph=create_graph)
        return s_y, s_t

    def score(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        with torch.enable_grad():
            y = y if y.requires_grad else y.detach().requires_grad_(True)
            (s_y,) = torch.autograd.grad(self.energy(y, t).sum(), y, create_graph=create_graph)
        return s_y

    def time_score(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        with torch.enable_grad():
            t = t.to(y.dtype)
            t = t if t.requires_grad else t.detach().requires_grad_(True)
            (s_t,) = torch.autograd.grad(self.energy(y, t).sum(), t, create_graph=create_graph)
        return s_t

    def denoise(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Tweedie: x_hat = y - t grad_y U(y, t)."""
        return y - expand_t(t, y) * self.score(y, t, create_graph)


class DenoiserModel(nn.Module):
    """The plain denoiser baseline: x_hat = y - t f(y, t); f plays the role of grad_y U."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def score(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(y, t.to(y.dtype))

    def denoise(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return y - expand_t(t, y) * self.score(y, t)

    forward = denoise
