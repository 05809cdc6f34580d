"""Periodic stationary Gaussian fields: the project's ground truth (exact entropy and spectrum).

On the n x n grid with periodic boundaries, the DFT frequencies are the integer pairs
k = (k_y, k_x), k_i in {-n/2, ..., n/2 - 1} (numpy's `fftfreq(n) * n`), and |k| = sqrt(k_y^2 + k_x^2).
The power spectrum is

    S(k) = c (1 + (k_y / k0)^2 + (k_x / (aspect k0))^2)^(-gamma / 2)      (aspect 1: a function of |k|),

with c set so that the pixel variance, mean_k S(k), is std^2. Sampling

    x = mean + real(ifft2(sqrt(S) * fft2(w, norm="ortho"), norm="ortho")),  w ~ N(0, I)

gives x ~ N(mean, Sigma) with Sigma = F^H diag(S) F circulant (F the unitary 2-D DFT): its
eigenvalues are exactly S on the grid. S(k) = S(-k), so the ifft is real up to rounding.
Channels are independent with the same spectrum. Entropy: H = 1/2 sum_k log(2 pi e lambda_k).
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


class GaussianField:
    """The field of a `GaussianFieldData` spec: its spectrum, exact entropy and a sampler."""

    def __init__(self, spec: GaussianFieldData):
        self.spec = spec
        s = spectrum(spec.size, spec.gamma, spec.k0, spec.std, spec.aspect)
        self.eigenvalues = np.broadcast_to(s, (spec.channels, *s.shape)).copy()  # (C, n, n) float64

    @property
    def d(self) -> int:
        return self.eigenvalues.size

    def entropy_nats(self) -> float:
        """Differential entropy 1/2 sum_k log(2 pi e lambda_k) of the whole image, in nats."""
        return gaussian_entropy_nats(torch.from_numpy(self.eigenvalues))

    def entropy_bits_per_dim(self) -> float:
        return nats_to_bits(self.entropy_nats()) / self.d

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n fields, float64 (n, C, size, size); not clipped, not quantized."""
        c, h, w = self.eigenvalues.shape
        white = torch.randn((n, c, h, w), generator=generator, dtype=torch.float64)
        root = torch.from_numpy(np.sqrt(self.eigenvalues))
        x = torch.fft.ifft2(root * torch.fft.fft2(white, norm="ortho"), norm="ortho").real
        return self.spec.mean + x


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
        extras={"eigenvalues.npy": field.eigenvalues},
        meta={
            "entropy": {
                "nats": nats,
                "nats_per_dim": nats / field.d,
                "bits_per_dim": field.entropy_bits_per_dim(),
            }
        },
    )
