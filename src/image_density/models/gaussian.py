"""The exact energy of a Gaussian field: the ground truth of every estimator.

x ~ N(m, Sigma), channels independent, Sigma_c = V_c diag(lambda_c) V_c^T per channel with V_c an
orthonormal basis: the 2-D DFT of a periodic stationary field (lambda_k its spectrum, (C, H, W)), or,
for any other covariance (a modulated, non-periodic field: GaussianEnergy.field), a dense eigenbasis
(C, HW, HW) with lambda in ascending order reshaped to (C, H, W). Noisy: y = x + sqrt(t) z ~
N(m, Sigma + t I), diagonal in the same basis, so with x_k the coefficients of y - m,
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


def circulant_covariance(spectrum: torch.Tensor) -> torch.Tensor:
    """The pixel covariance F^H diag(S) F of a periodic stationary field of spectrum S (H, W):
    (HW, HW), column q = the field's response to a unit impulse at pixel q."""
    h, w = spectrum.shape
    eye = torch.eye(h * w, dtype=spectrum.dtype).reshape(h * w, h, w)
    return torch.fft.ifft2(spectrum * torch.fft.fft2(eye, norm="ortho"), norm="ortho").real.reshape(
        h * w, h * w
    )


class GaussianEnergy(nn.Module):
    """Same face as EnergyModel: energy, score (= grad_y U), time_score (= dU/dt), denoise (= the
    Wiener filter), plus nll_exact and exact samples. eigenvalues: (C, H, W), positive; without
    eigenvectors, the DFT spectrum, symmetric under k -> -k (a real field); with eigenvectors
    (C, HW, HW) orthonormal columns, lambda_c[k] belongs to column k of eigenvectors[c].
    mean: a scalar or a tensor broadcastable to (C, H, W)."""

    def __init__(
        self,
        eigenvalues: torch.Tensor,
        mean: float | torch.Tensor = 0.0,
        eigenvectors: torch.Tensor | None = None,
    ):
        super().__init__()
        lam = torch.as_tensor(eigenvalues)
        if lam.dim() != 3:
            raise ValueError(f"eigenvalues must have shape (C, H, W), got {tuple(lam.shape)}")
        if not bool((lam > 0).all()):
            raise ValueError(f"eigenvalues must be positive, min is {lam.min().item():g}")
        c, h, w = lam.shape
        if eigenvectors is None:
            mirrored = torch.roll(lam.flip(1, 2), shifts=(1, 1), dims=(1, 2))  # lambda_{-k}
            if not torch.allclose(lam, mirrored, rtol=1e-6, atol=0):
                raise ValueError("eigenvalues must satisfy lambda_k = lambda_{-k} (a real field)")
        elif tuple(eigenvectors.shape) != (c, h * w, h * w):
            raise ValueError(
                f"eigenvectors must have shape {(c, h * w, h * w)}, got {tuple(eigenvectors.shape)}"
            )
        self.register_buffer("eigenvalues", lam)
        self.register_buffer("eigenvectors", None if eigenvectors is None else eigenvectors.to(lam))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=lam.dtype).expand_as(lam).clone())

    @classmethod
    def field(
        cls, spectrum: torch.Tensor, mean: float | torch.Tensor = 0.0, modulation: torch.Tensor | None = None
    ) -> GaussianEnergy:
        """The field mean + s z of data/gaussian_field.py: z periodic stationary with DFT spectrum
        (C, H, W), s the modulation (C, H, W) or None (then the DFT basis, no dense algebra).
        Otherwise Sigma_c = D_c C_c D_c (D = diag(s), C circulant) is diagonalized densely, float64."""
        if modulation is None:
            return cls(spectrum, mean)
        spectrum, s = torch.as_tensor(spectrum, dtype=torch.float64), torch.as_tensor(modulation).double()
        if s.shape != spectrum.shape or not bool((s > 0).all()):
            raise ValueError(
                f"modulation must be positive of shape {tuple(spectrum.shape)}, got {tuple(s.shape)}"
            )
        lam, vec = [], []
        for spec_c, s_c in zip(spectrum, s.flatten(1), strict=True):
            cov = s_c[:, None] * circulant_covariance(spec_c) * s_c[None, :]  # (HW, HW)
            lam_c, vec_c = torch.linalg.eigh(cov)
            lam.append(lam_c.reshape(spec_c.shape))
            vec.append(vec_c)
        return cls(torch.stack(lam), mean, torch.stack(vec))

    def stationary(self) -> GaussianEnergy:
        """The periodic stationary Gaussian closest to this one in KL(p || q), same mean: its DFT
        spectrum is q_k = E|x_k|^2, the diagonal of F Sigma F^H (= sum_j lambda_j |(F v_j)_k|^2). Itself
        for a DFT-diagonal field. The best a shift-equivariant model (e.g. a circular-padded network)
        can reach on a non-periodic field: its excess NLL is that KL."""
        if self.eigenvectors is None:
            return self
        c, h, w = self.shape
        v = self.eigenvectors.transpose(1, 2).reshape(c, h * w, h, w)  # eigenvector j as an image
        power = torch.fft.fft2(v, norm="ortho").abs().square()  # (C, HW, H, W)
        q = torch.einsum("cj,cjhw->chw", self.eigenvalues.flatten(1), power)
        return GaussianEnergy(q, self.mean)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.eigenvalues.shape)

    def _analysis(self, v: torch.Tensor) -> torch.Tensor:
        """Coefficients V^T v per channel: complex DFT or real dense, (B, C, H, W)."""
        if self.eigenvectors is None:
            return torch.fft.fft2(v, norm="ortho")
        return torch.einsum("bcp,cpk->bck", v.flatten(2), self.eigenvectors.to(v)).reshape(v.shape)

    def _synthesis(self, coef: torch.Tensor) -> torch.Tensor:
        """The real image V coef per channel, (B, C, H, W)."""
        if self.eigenvectors is None:
            return torch.fft.ifft2(coef, norm="ortho").real
        return torch.einsum("bck,cpk->bcp", coef.flatten(2), self.eigenvectors.to(coef)).reshape(coef.shape)

    def _spectrum(self, y: torch.Tensor) -> torch.Tensor:
        """Coefficients of y - m in the eigenbasis, (B, C, H, W)."""
        if tuple(y.shape[1:]) != self.shape:
            raise ValueError(f"GaussianEnergy of shape {self.shape} got images of shape {tuple(y.shape[1:])}")
        return self._analysis(y - self.mean.to(y))

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
        return self._synthesis(self._spectrum(y) / self._lam_t(y, t))

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
        return self.mean.to(y) + self._synthesis(self._spectrum(y) * gain)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples (n, C, H, W): m + Sigma^{1/2} w (real for the DFT since lambda is symmetric)."""
        lam = self.eigenvalues
        w = torch.randn((n, *self.shape), generator=generator, dtype=lam.dtype).to(lam.device)
        return self.mean + self._synthesis(self._analysis(w) * lam.sqrt())
