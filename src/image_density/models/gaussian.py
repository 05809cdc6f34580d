"""The exact energy of a stationary periodic Gaussian field: the ground truth of every estimator.

x ~ N(m, Sigma) with Sigma diagonal in the orthonormal 2-D DFT of each channel (channels independent),
eigenvalues lambda_k (C, H, W). Noisy: y = x + sqrt(t) z ~ N(m, Sigma + t I), so with x_k the DFT of
y - m,
    -log p_t(y) = 1/2 sum_k |x_k|^2 / (lambda_k + t) + 1/2 sum_k log(2 pi (lambda_k + t)).
`energy` drops the t-independent 1/2 sum_k log(2 pi lambda_k) (so U(y, 0) is a pure quadratic, like the
learned energies, and log Z = 1/2 sum_k log(2 pi lambda_k) is non-trivial), but keeps
1/2 sum_k log(1 + t / lambda_k), which makes the time score exact.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from image_density.noise import expand_t


class GaussianEnergy(nn.Module):
    """Same face as EnergyModel: energy, score (= grad_y U), time_score (= dU/dt), denoise (= the
    Wiener filter), plus nll_exact and exact samples. eigenvalues: (C, H, W), positive and symmetric
    under k -> -k (a real field); mean: a scalar or a tensor broadcastable to (C, H, W)."""

    def __init__(self, eigenvalues: torch.Tensor, mean: float | torch.Tensor = 0.0):
        super().__init__()
        lam = torch.as_tensor(eigenvalues)
        if lam.dim() != 3:
            raise ValueError(f"eigenvalues must have shape (C, H, W), got {tuple(lam.shape)}")
        if not bool((lam > 0).all()):
            raise ValueError(f"eigenvalues must be positive, min is {lam.min().item():g}")
        mirrored = torch.roll(lam.flip(1, 2), shifts=(1, 1), dims=(1, 2))  # lambda_{-k}
        if not torch.allclose(lam, mirrored, rtol=1e-6, atol=0):
            raise ValueError("eigenvalues must satisfy lambda_k = lambda_{-k} (a real field)")
        self.register_buffer("eigenvalues", lam)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=lam.dtype).expand_as(lam).clone())

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.eigenvalues.shape)

    def _spectrum(self, y: torch.Tensor) -> torch.Tensor:
        """Orthonormal DFT of y - m over (H, W), complex (B, C, H, W)."""
        if tuple(y.shape[1:]) != self.shape:
            raise ValueError(f"GaussianEnergy of shape {self.shape} got images of shape {tuple(y.shape[1:])}")
        return torch.fft.fft2(y - self.mean.to(y), norm="ortho")

    def _lam_t(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eigenvalues.to(y) + expand_t(t, y)  # (B, C, H, W)

    def energy(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        lam_t = self._lam_t(y, t)
        quad = (self._spectrum(y).abs().square() / lam_t).flatten(1).sum(1)
        log_det = torch.log1p(expand_t(t, y) / self.eigenvalues.to(y)).flatten(1).sum(1)
        return 0.5 * (quad + log_det)

    forward = energy

    def log_z(self) -> float:
        """The exact log normalizer of exp(-U(., t)) (t-independent): 1/2 sum_k log(2 pi lambda_k)."""
        return 0.5 * torch.log(2 * math.pi * self.eigenvalues.double()).sum().item()

    def nll_exact(self, x: torch.Tensor, t: torch.Tensor | float = 0.0) -> torch.Tensor:
        """-log p_t(x) in nats, (B,)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.energy(x, t) + self.log_z()

    def score(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """grad_y U = Sigma_t^{-1} (y - m) (differentiable in y whether or not create_graph)."""
        return torch.fft.ifft2(self._spectrum(y) / self._lam_t(y, t), norm="ortho").real

    def time_score(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """dU/dt = -1/2 sum_k |x_k|^2 / (lambda_k + t)^2 + 1/2 sum_k 1 / (lambda_k + t)."""
        lam_t = self._lam_t(y, t)
        return 0.5 * ((1 - self._spectrum(y).abs().square() / lam_t) / lam_t).flatten(1).sum(1)

    def score_and_time_score(
        self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score(y, t), self.time_score(y, t)

    def denoise(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """The Wiener filter m + Sigma (Sigma + t I)^{-1} (y - m) = y - t grad_y U."""
        gain = self.eigenvalues.to(y) / self._lam_t(y, t)
        return self.mean.to(y) + torch.fft.ifft2(self._spectrum(y) * gain, norm="ortho").real

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples (n, C, H, W): m + Sigma^{1/2} w, Sigma^{1/2} real since lambda is symmetric."""
        lam = self.eigenvalues
        w = torch.randn((n, *self.shape), generator=generator, dtype=lam.dtype).to(lam.device)
        w_k = torch.fft.fft2(w, norm="ortho") * lam.sqrt()
        return self.mean + torch.fft.ifft2(w_k, norm="ortho").real
