"""Units of log-probabilities and noise levels (METHOD.md, "Units").

Everything the project reports goes through here: nats/dim, bits/dim, dB/dim, PSNR <-> t, and the
+8 bits/dim that turns a density on [0,1]^d into the probability of an 8-bit grid cell.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)
LN10 = math.log(10.0)
# log2(256): a density on [0,1]^d -> probability of one cell of the 8-bit grid (no dequantization).
BITS_8BIT = 8.0
DB_PER_NAT = 10.0 / LN10

Number = float | torch.Tensor


def nats_to_bits(nats: Number) -> Number:
    return nats / LN2


def bits_to_nats(bits: Number) -> Number:
    return bits * LN2


def nll_bits_per_dim(nll_nats: Number, d: int, quantized: bool) -> Number:
    """-log p(x) in nats (whole image) -> bits/dim; +8 only for 8-bit data scaled to [0,1]."""
    return nll_nats / (d * LN2) + (BITS_8BIT if quantized else 0.0)


def log_p_db_per_dim(log_p_nats: Number, d: int) -> Number:
    """log p(x) in nats -> dB/dim, the papers' unit: (10 / ln 10) log p / d."""
    return DB_PER_NAT * log_p_nats / d


def db_per_dim_to_bits_per_dim(log_p_db: Number, quantized: bool) -> Number:
    """NLL bits/dim = 8 - 0.3322 x (log p in dB/dim) for 8-bit data (METHOD.md)."""
    return -log_p_db * LN10 / (10.0 * LN2) + (BITS_8BIT if quantized else 0.0)


def psnr_to_t(psnr_db: Number) -> Number:
    """Noise variance t of an input PSNR (peak 1): t = 10^(-PSNR/10)."""
    if isinstance(psnr_db, torch.Tensor):
        return torch.pow(10.0, -psnr_db / 10.0)
    return 10.0 ** (-psnr_db / 10.0)


def t_to_psnr(t: Number) -> Number:
    """PSNR (dB, peak 1) of noise variance t: -10 log10 t."""
    if isinstance(t, torch.Tensor):
        return -10.0 * torch.log10(t)
    return -10.0 * math.log10(t)


def mse_to_psnr(mse: Number) -> Number:
    """PSNR (dB, peak 1) of a mean squared error; the same map as t_to_psnr."""
    return t_to_psnr(mse)


def sigma255_to_t(sigma: Number) -> Number:
    """Noise std given on the 0..255 scale (paper 2's sigma = 20, 40, ...) -> variance t on [0,1]."""
    return (sigma / 255.0) ** 2
