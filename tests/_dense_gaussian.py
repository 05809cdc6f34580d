"""Ground truth for the multi-scale tests: a Gaussian N(mean, cov) held as dense matrices, and its
exact low-pass marginal and detail conditionals in the wavelet domain (float64, small images).

The pixel covariance of a periodic stationary field comes from its spectrum (data/gaussian_field.py):
cov = F^H diag(lambda) F. One wavelet level is the linear map T (built by applying `dwt` to the
identity); (x_{j+1}, d_j) = T x_j is Gaussian with covariance T S T^T, so
d_j | x_{j+1} ~ N(m_d + A (x_{j+1} - m_l), S_dd - A S_ld), A = S_dl S_ll^{-1}.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from image_density.config import GaussianFieldData
from image_density.data.gaussian_field import GaussianField
from image_density.multiscale.wavelets import dwt


def field_covariance(eigenvalues: np.ndarray) -> torch.Tensor:
    """(C, n, n) spectrum -> dense pixel covariance (C n n, C n n); channels independent."""
    c, n, _ = eigenvalues.shape
    eye = torch.eye(n * n, dtype=torch.float64).reshape(n * n, n, n)
    blocks = []
    for ch in range(c):
        lam = torch.from_numpy(eigenvalues[ch])
        cols = torch.fft.ifft2(lam * torch.fft.fft2(eye, norm="ortho"), norm="ortho").real
        blocks.append(cols.reshape(n * n, n * n))
    return torch.block_diag(*blocks)


class DenseGaussian:
    """N(mean, cov) on flat vectors; `mean` may be per sample (B, D). Exact noisy densities at t:
    N(mean, cov + t I). U = -log p_t (normalized), so dU/dt is the exact (negated) time score."""

    def __init__(self, cov: torch.Tensor, mean: torch.Tensor):
        self.lam, self.vec = torch.linalg.eigh(cov)
        self.mean = mean
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def with_mean(self, mean: torch.Tensor) -> DenseGaussian:
        """The same covariance (no new eigendecomposition) around another mean."""
        g = object.__new__(DenseGaussian)
        g.lam, g.vec, g.mean, g._cache = self.lam, self.vec, mean, None
        return g

    def _r(self, y: torch.Tensor) -> torch.Tensor:  # (B, D) in the eigenbasis
        if self._cache is None or self._cache[0] is not y:
            self._cache = (y, (y.flatten(1) - self.mean) @ self.vec)
        return self._cache[1]

    def _var(self, t) -> torch.Tensor:
        return self.lam + torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)

    def log_prob(self, y: torch.Tensor, t=0.0) -> torch.Tensor:
        var = self._var(t)
        return -0.5 * (self._r(y) ** 2 / var + torch.log(2 * math.pi * var)).sum(dim=1)

    def dU_dt(self, y: torch.Tensor, t) -> torch.Tensor:
        var = self._var(t)
        return 0.5 * (1 / var - self._r(y) ** 2 / var**2).sum(dim=1)

    def denoise(self, y: torch.Tensor, t) -> torch.Tensor:
        var = self._var(t)
        x = self.mean + (self._r(y) * self.lam / var) @ self.vec.T
        return x.reshape(y.shape)


def one_level_matrix(shape: tuple[int, int, int], wavelet: str, normalization: str) -> torch.Tensor:
    """T with [x_{j+1}.flatten(), d_j.flatten()] = T x_j.flatten() for one image of `shape`."""
    d = math.prod(shape)
    low, det = dwt(torch.eye(d, dtype=torch.float64).reshape(d, *shape), wavelet, normalization)
    return torch.cat([low.flatten(1), det.flatten(1)], dim=1).T


class DetailConditional:
    """Exact d_j | x_{j+1}: callables on image-shaped tensors (d (B, 3C, h, w), x (B, C, h, w))."""

    def __init__(self, a, m_d, m_l, cov):
        self.a, self.m_d, self.m_l = a, m_d, m_l
        self.gaussian = DenseGaussian(cov, m_d)

    def at(self, x: torch.Tensor) -> DenseGaussian:
        return self.gaussian.with_mean(self.m_d + (x.flatten(1) - self.m_l) @ self.a.T)

    def log_prob(self, d, x):
        return self.at(x).log_prob(d)

    def denoise(self, d, x, t):
        return self.at(x).denoise(d, t)


def wavelet_gaussians(cov, mean, shape, levels, wavelet="haar", normalization="orthonormal"):
    """Exact x_J marginal (DenseGaussian) and [DetailConditional for j = 0 ... J-1]."""
    conditionals = []
    for _ in range(levels):
        t = one_level_matrix(shape, wavelet, normalization)
        s, m = t @ cov @ t.T, t @ mean
        nl = s.shape[0] // 4
        a = s[nl:, :nl] @ torch.linalg.inv(s[:nl, :nl])
        conditionals.append(DetailConditional(a, m[nl:], m[:nl], s[nl:, nl:] - a @ s[:nl, nl:]))
        cov, mean = s[:nl, :nl], m[:nl]
        shape = (shape[0], shape[1] // 2, shape[2] // 2)
    return DenseGaussian(cov, mean), conditionals


def field_wavelet_gaussians(size: int, levels: int):
    """A default size x size Gaussian field and its exact wavelet-domain Gaussians:
    (GaussianField, x_J marginal, [conditional of d_j for j = 0 ... J-1])."""
    f = GaussianField(GaussianFieldData(kind="gaussian_field", size=size, n_train=1, n_test=1))
    cov = field_covariance(f.eigenvalues)
    mean = torch.full((cov.shape[0],), f.spec.mean, dtype=torch.float64)
    return f, *wavelet_gaussians(cov, mean, (1, size, size), levels)
