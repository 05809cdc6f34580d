"""Gaussian fields: the project's ground truth (exact entropy, covariance and noisy densities).

On the n x n grid with periodic boundaries, the DFT frequencies are the integer pairs
k = (k_y, k_x), k_i in {-n/2, ..., n/2 - 1} (numpy's `fftfreq(n) * n`), and |k| = sqrt(k_y^2 + k_x^2).
The power spectrum is

    S(k) = c (1 + (k_y / k0)^2 + (k_x / (aspect k0))^2)^(-gamma / 2)      (aspect 1: a function of |k|),

with c set so that the pixel variance, mean_k S(k), is std^2. Sampling

    z = real(ifft2(sqrt(S) * fft2(w, norm="ortho"), norm="ortho")),  w ~ N(0, I)

gives z ~ N(0, C) with C = F^H diag(S) F circulant (F the unitary 2-D DFT): its eigenvalues are
exactly S on the grid. S(k) = S(-k), so the ifft is real up to rounding. The field is

    x = mean + s * z,    s(i, j) = r^((i + j) / (2 (n - 1))) / norm,   norm^2 = mean_ij r^((i + j) / (n - 1)),

with r = std_ratio: the pixel std grows geometrically by r from the top-left to the bottom-right pixel
and its RMS stays `std`. r = 1 (s = 1): periodic and stationary. r != 1: neither (the pixel variance
varies, and wraps around with a jump), yet Cov(x) = D C D with D = diag(s) keeps an exact entropy,
    H = 1/2 sum_k log(2 pi e S(k)) + sum_ij log s(i, j)        (log det D C D = log det C + 2 log det D).
A modulation keeps the clean density closed-form, where a windowed or Dirichlet field would not.
Channels are independent with the same spectrum and modulation. The noisy covariance D C D + t I is no
longer diagonal in any fixed basis: models/gaussian.py GaussianEnergy.field diagonalizes it densely.
"""

from __future__ import annotations

import numpy as np
import torch

from image_density.config import GaussianFieldData
from image_density.data.splits import blocks, split_seed
from image_density.data.store import Source
from image_density.likelihood import gaussian_entropy_nats
from image_density.units import nats_to_bits


def spectrum(n: int, gamma: float, k0: float, std: float, aspect: float = 1.0) -> np.ndarray:
    """S(k) on the n x n DFT grid (numpy fft order), normalized so that mean(S) = std^2. (n, n)"""
    k = np.fft.fftfreq(n) * n
    k_abs2 = k[:, None] ** 2 + (k[None, :] / aspect) ** 2
    s = (1.0 + k_abs2 / k0**2) ** (-gamma / 2.0)
    return s * (std**2 / s.mean())


def modulation(n: int, std_ratio: float) -> np.ndarray:
    """s(i, j) = std_ratio^((i + j) / (2 (n - 1))), normalized so that mean(s^2) = 1. (n, n)"""
    i = np.arange(n)
    ramp = (i[:, None] + i[None, :]) / (2.0 * max(n - 1, 1))  # 0 at the top-left, 1 at the bottom-right
    s = std_ratio**ramp
    return s / np.sqrt(np.mean(s**2))


class GaussianField:
    """The field of a `GaussianFieldData` spec: its spectrum (eigenvalues of the stationary part z),
    its modulation s (None when std_ratio is 1), exact entropy and a sampler."""

    def __init__(self, spec: GaussianFieldData):
        self.spec = spec
        c = spec.channels
        s = spectrum(spec.size, spec.gamma, spec.k0, spec.std, spec.aspect)
        self.eigenvalues = np.broadcast_to(s, (c, *s.shape)).copy()  # (C, n, n) float64
        self.modulation = None
        if spec.std_ratio != 1.0:
            m = modulation(spec.size, spec.std_ratio)
            self.modulation = np.broadcast_to(m, (c, *m.shape)).copy()  # (C, n, n) float64

    @property
    def d(self) -> int:
        return self.eigenvalues.size

    def entropy_nats(self) -> float:
        """Differential entropy 1/2 sum_k log(2 pi e lambda_k) + sum log s of the whole image, in nats."""
        log_det_s = 0.0 if self.modulation is None else float(np.log(self.modulation).sum())
        return gaussian_entropy_nats(torch.from_numpy(self.eigenvalues)) + log_det_s

    def entropy_bits_per_dim(self) -> float:
        return nats_to_bits(self.entropy_nats()) / self.d

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n fields, float64 (n, C, size, size); not clipped, not quantized."""
        c, h, w = self.eigenvalues.shape
        white = torch.randn((n, c, h, w), generator=generator, dtype=torch.float64)
        root = torch.from_numpy(np.sqrt(self.eigenvalues))
        z = torch.fft.ifft2(root * torch.fft.fft2(white, norm="ortho"), norm="ortho").real
        if self.modulation is not None:
            z = torch.from_numpy(self.modulation) * z
        return self.spec.mean + z


def source(spec: GaussianFieldData) -> Source:
    field = GaussianField(spec)

    def chunks(split: str, n: int):
        def gen():
            g = torch.Generator().manual_seed(int(split_seed(spec.seed, split).generate_state(1)[0]))
            for x in blocks(n, lambda b: field.sample(b, g)):
                yield x.numpy().astype(np.float32)

        return gen

    nats = field.entropy_nats()
    return Source(
        shape=field.eigenvalues.shape,
        dtype=np.dtype(np.float32),
        chunks={"train": chunks("train", spec.n_train), "test": chunks("test", spec.n_test)},
        source={"generator": "gaussian_field", **spec.model_dump(mode="json")},
        extras={
            "eigenvalues.npy": field.eigenvalues,
            **({} if field.modulation is None else {"modulation.npy": field.modulation}),
        },
        meta={
            "entropy": {
                "nats": nats,
                "nats_per_dim": nats / field.d,
                "bits_per_dim": field.entropy_bits_per_dim(),
            }
        },
    )
