"""Multi-level separable 2-D orthogonal wavelet transform of batched tensors (METHOD.md, paper 2).

Periodic boundaries, critically sampled: each level maps x_j (B, C, h, w) to the low-pass x_{j+1}
(B, C, h/2, w/2) and the details d_{j+1} (B, 3C, h/2, w/2), with the coefficients of
`pywt.wavedec2(..., mode="periodization")`. Details are channel-major: d[:, 3c + b] is band
b in (H, V, D) = (pywt's cH, cV, cD) of channel c.

Indexing (0-based, as the release's cCNN_j): `decompose` returns x_J and details[0..J-1], where
details[j] has the size of the low-pass it is conditioned on, lows[j] = x_{j+1} (`pyramid`);
details[0] are the finest. Paper 2 writes these d_{j+1} and x_{j+1}.

Normalizations, and the one place their Jacobian lives (`log_det_jacobian`):
- "orthonormal" (default): W is orthogonal, log|det| = 0, so log p(x) = log p(x_J) + sum_j log p(d_j|x_j)
  exactly, and white pixel noise of variance t stays white with variance t in every band.
- "average" (the LPM release): every level also divides by 2, so the Haar low-pass is the local
  average and stays in [0, 1]; coefficients of level l (1-based) are the orthonormal ones / 2^l.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import numpy as np
import pywt
import torch
import torch.nn.functional as F

Normalization = Literal["orthonormal", "average"]
NORMALIZATIONS: tuple[str, ...] = ("orthonormal", "average")


@lru_cache
def _filters(wavelet: str) -> np.ndarray:
    """The 4 separable analysis kernels (LL, H, V, D) as correlation kernels. (4, L, L) float64."""
    try:
        w = pywt.Wavelet(wavelet)
    except ValueError:
        raise ValueError(f"wavelet {wavelet!r} is not a pywt discrete wavelet") from None
    if not w.orthogonal:
        raise ValueError(f"wavelet {wavelet!r} is not orthogonal; only orthogonal wavelets are supported")
    # pywt convolves; torch correlates, hence the reversal.
    lo, hi = np.array(w.dec_lo[::-1]), np.array(w.dec_hi[::-1])
    # H = high-pass along rows (height), low-pass along columns; V the converse (pywt's cH, cV).
    return np.stack([np.outer(lo, lo), np.outer(hi, lo), np.outer(lo, hi), np.outer(hi, hi)])


def filter_length(wavelet: str) -> int:
    return _filters(wavelet).shape[-1]


def _kernel(wavelet: str, x: torch.Tensor, channels: int) -> torch.Tensor:
    k = torch.as_tensor(_filters(wavelet), dtype=x.dtype, device=x.device)
    return k.unsqueeze(1).repeat(channels, 1, 1, 1)  # (4C, 1, L, L), grouped per channel


def _check(x: torch.Tensor, levels: int, wavelet: str, normalization: str) -> None:
    _filters(wavelet), _scale(normalization)
    if x.dim() != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if levels < 1 or h % 2**levels or w % 2**levels:
        raise ValueError(f"image size {h}x{w} is not divisible by 2^levels = 2^{levels}")


def _periodic_index(n: int, length: int, device) -> torch.Tensor:
    """Indices of the periodic extension by (L/2 - 1, L/2 - 1) that aligns with pywt's periodization:
    a[k] = sum_i f[i] x[(2k + L/2 - i) mod n]. Wraps any number of times (n may be < L)."""
    p = length // 2 - 1
    return torch.arange(-p, n + p, device=device) % n


def _scale(normalization: str) -> float:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return 1.0 if normalization == "orthonormal" else 0.5


def dwt(
    x: torch.Tensor, wavelet: str = "haar", normalization: Normalization = "orthonormal"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One level: x (B, C, h, w) -> low-pass (B, C, h/2, w/2), details (B, 3C, h/2, w/2)."""
    _check(x, 1, wavelet, normalization)
    b, c, h, w = x.shape
    length = filter_length(wavelet)
    if length > 2:
        x = x[..., _periodic_index(h, length, x.device), :][..., _periodic_index(w, length, x.device)]
    coeffs = F.conv2d(x, _kernel(wavelet, x, c), stride=2, groups=c) * _scale(normalization)
    coeffs = coeffs.reshape(b, c, 4, h // 2, w // 2)
    return coeffs[:, :, 0], coeffs[:, :, 1:].reshape(b, 3 * c, h // 2, w // 2)


def _fold(xp: torch.Tensor, n: int, length: int, dim: int) -> torch.Tensor:
    """Adjoint of the periodic extension along `dim`: add every extended sample back to its source."""
    shape = list(xp.shape)
    shape[dim] = n
    return xp.new_zeros(shape).index_add_(dim, _periodic_index(n, length, xp.device), xp)


def idwt(
    low: torch.Tensor,
    details: torch.Tensor,
    wavelet: str = "haar",
    normalization: Normalization = "orthonormal",
) -> torch.Tensor:
    """Inverse of `dwt`: (B, C, h, w), (B, 3C, h, w) -> (B, C, 2h, 2w). The transpose, W orthogonal."""
    b, c, h, w = low.shape
    if details.shape != (b, 3 * c, h, w):
        raise ValueError(f"details of shape {tuple(details.shape)} do not match low-pass {tuple(low.shape)}")
    coeffs = torch.cat([low.unsqueeze(2), details.reshape(b, c, 3, h, w)], dim=2).reshape(b, 4 * c, h, w)
    xp = F.conv_transpose2d(coeffs / _scale(normalization), _kernel(wavelet, low, c), stride=2, groups=c)
    length = filter_length(wavelet)
    if length == 2:
        return xp
    return _fold(_fold(xp, 2 * h, length, dim=2), 2 * w, length, dim=3)


def pyramid(
    x: torch.Tensor, levels: int, wavelet: str = "haar", normalization: Normalization = "orthonormal"
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """x (B, C, H, W) -> lows [x_1, ..., x_J], details [d_0, ..., d_{J-1}]; lows[j] and details[j]
    are (B, C, H/2^(j+1), W/2^(j+1)) and (B, 3C, ...): details[j] is conditioned on lows[j]."""
    _check(x, levels, wavelet, normalization)
    lows, details = [], []
    for _ in range(levels):
        x, d = dwt(x, wavelet, normalization)
        lows.append(x)
        details.append(d)
    return lows, details


def decompose(
    x: torch.Tensor, levels: int, wavelet: str = "haar", normalization: Normalization = "orthonormal"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x (B, C, H, W) -> x_J (B, C, H/2^J, W/2^J), [details_0 (B, 3C, H/2, W/2), ..., details_{J-1}]."""
    lows, details = pyramid(x, levels, wavelet, normalization)
    return lows[-1], details


def reconstruct(
    x_J: torch.Tensor,
    details: list[torch.Tensor],
    wavelet: str = "haar",
    normalization: Normalization = "orthonormal",
) -> torch.Tensor:
    """Inverse of `decompose`."""
    x = x_J
    for d in reversed(details):
        x = idwt(x, d, wavelet, normalization)
    return x


def release_scale(level: int, normalization: Normalization) -> float:
    """Coefficients of `level` (0: pixels; details[j] and lows[j] are level j + 1) in `normalization`
    are this many times the LPM release's ("average"): 2^level for "orthonormal", 1 for "average".
    The one conversion of a value the release states in its units (a sampler's sigma_0, its
    divergence guard, its low-pass range) into ours."""
    return (_scale(normalization) / _scale("average")) ** level


def log_det_jacobian(shape: tuple[int, int, int], levels: int, normalization: Normalization) -> float:
    """log |det d(x_J, d_0..d_{J-1}) / dx| for one image of shape (C, H, W), in nats.

    log p(x) = log p(x_J) + sum_j log p(d_j | x_{j+1}) + this. 0 for the orthonormal transform;
    "average" multiplies each level's input (C h w values) by 1/2: -ln 2 * sum_l C H W / 4^l.
    """
    scale = _scale(normalization)
    c, h, w = shape
    return sum(c * h * w / 4**level for level in range(levels)) * math.log(scale)
