"""The one face every loss, sampler and study calls: energy U(y, t), its gradients, the denoiser.

EnergyModel: U(y, t) = 1/2 <y, f(y, t)> (+ b(t)) with f any network shaped like its input
(METHOD.md, "Model"); scores by autograd: score = grad_y U, time_score = dU/dt, and Tweedie's
denoiser x_hat = y - t grad_y U. DenoiserModel: the plain baseline x_hat = y - t f(y, t).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from image_density.models.unet import T_FLOOR
from image_density.noise import expand_t

EnergyForm = Literal["pure", "offset"]

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


class EnergyModel(nn.Module):
    """U(y, t) = 1/2 <y, f(y, t)> ("pure", the paper) or + b(t) ("offset", METHOD.md "Measured here":
    the pure form has U(0, t) = 0 for all t, so the t-dependent level of -log p_t near the data must be
    faked by f and is learned slowly). Shapes: y (B, ...), t (B,) -> U (B,)."""

    def __init__(self, net: nn.Module, energy_form: EnergyForm = "pure"):
        super().__init__()
        if energy_form not in ("pure", "offset"):
            raise ValueError(f"energy_form must be 'pure' or 'offset', got {energy_form!r}")
        self.net = net
        self.energy_form = energy_form
        self.offset = TimeOffset() if energy_form == "offset" else None

    def energy(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(y.dtype)
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
