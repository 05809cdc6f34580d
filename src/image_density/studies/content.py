"""Probability vs image content (paper 1, Figs. 3-4).

The distribution of log p over test images (dB/dim) and its Gumbel fit, the most and least probable
images, and log p against two measures of content: contrast (the pixel standard deviation) and
wavelet sparsity, ||d||_1 / (sqrt(n) ||d||_2) of an image's n Haar detail coefficients d (1 for
coefficients of equal magnitude, -> 0 for a few large ones: low = sparse).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from image_density.wavelets import decompose

# Paper 1, ImageNet64 grayscale test images, log p in dB/dim (Gumbel: scipy.stats.gumbel_r).
PAPER_CONTENT = {"mean": 11.43, "median": 10.67, "std": 4.17, "gumbel_loc": 9.57, "gumbel_scale": 3.17}


@dataclass(frozen=True)
class ContentResult:
    per_image: pd.DataFrame  # one row per image
    summary: pd.DataFrame  # ours and the paper's distribution statistics
    extremes: np.ndarray  # (2k, C, H, W) float32: the k most probable (most first), then the k least


def fit_gumbel(values: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (loc, scale) of a right-skewed Gumbel (scipy.stats.gumbel_r)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or values.std() == 0:
        raise ValueError(f"a Gumbel fit needs at least 2 distinct values, got {len(values)}")
    loc, scale = stats.gumbel_r.fit(values)
    return float(loc), float(scale)


def contrast(x: torch.Tensor) -> np.ndarray:
    """Pixel standard deviation of each image (all pixels and channels), (N,)."""
    return x.flatten(1).double().std(1, correction=0).numpy()


def wavelet_sparsity(x: torch.Tensor, levels: int, wavelet: str = "haar") -> np.ndarray:
    """||d||_1 / (sqrt(n) ||d||_2) of each image's detail coefficients over `levels` orthonormal
    levels, (N,); NaN for an image without any detail (constant)."""
    h, w = x.shape[-2:]
    if h % 2**levels or w % 2**levels:
        raise ValueError(
            f"studies.content.wavelet_levels = {levels}: images of {h} x {w} pixels are not divisible "
            f"by 2^{levels}"
        )
    x = x.double()
    _, details = decompose(x, levels, wavelet)
    d = torch.cat([dj.flatten(1) for dj in details], 1)  # (N, n)
    l1, l2 = d.abs().sum(1), d.square().sum(1).sqrt()
    ratio = l1 / (d.shape[1] ** 0.5 * l2)
    # details of a constant image are rounding errors (~1e-16 of the image), not structure
    flat = l2 <= 1e-9 * x.flatten(1).norm(dim=1)
    return torch.where(flat, torch.nan, ratio).numpy()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def content_study(
    x: torch.Tensor,
    log_p_db: np.ndarray,
    *,
    dataset: str,
    model: str,
    n_extremes: int,
    wavelet_levels: int,
    index: np.ndarray | None = None,
) -> ContentResult:
    """x (N, C, H, W) in [0, 1], log_p_db (N,) its log p in dB/dim under `model`; index (N,): the
    images' rows in their split (default 0..N-1).

    per_image: dataset, model, index, log_p_db, rank (1 = most probable), contrast, sparsity, extreme
    ("most" / "least" / ""). summary: n_images, mean, median, std, gumbel_loc, gumbel_scale,
    gumbel_ks_statistic (Kolmogorov-Smirnov distance to the fitted Gumbel), spearman_contrast,
    spearman_sparsity; then the paper's row (source "paper")."""
    log_p_db = np.asarray(log_p_db, dtype=np.float64)
    if len(log_p_db) != len(x):
        raise ValueError(f"{len(x)} images but {len(log_p_db)} log p values")
    index = np.arange(len(x)) if index is None else np.asarray(index)
    order = np.argsort(-log_p_db, kind="stable")
    rank = np.empty(len(x), dtype=np.int64)
    rank[order] = np.arange(1, len(x) + 1)
    k = min(n_extremes, len(x) // 2)
    most, least = order[:k], order[::-1][:k]
    extreme = np.full(len(x), "", dtype=object)
    extreme[most], extreme[least] = "most", "least"
    c, s = contrast(x), wavelet_sparsity(x, wavelet_levels)
    per_image = pd.DataFrame({
        "dataset": dataset, "model": model, "index": index, "log_p_db": log_p_db, "rank": rank,
        "contrast": c, "sparsity": s, "extreme": extreme,
    })  # fmt: skip
    # a model that gives every image the same log p (e.g. untrained) has no distribution to fit
    loc, scale, ks = float("nan"), float("nan"), float("nan")
    if np.ptp(log_p_db) > 0:
        loc, scale = fit_gumbel(log_p_db)
        ks = float(stats.kstest(log_p_db, "gumbel_r", args=(loc, scale)).statistic)
    ours = {
        "dataset": dataset, "model": model, "source": "ours", "n_images": len(x),
        "mean": log_p_db.mean(), "median": float(np.median(log_p_db)), "std": log_p_db.std(ddof=1),
        "gumbel_loc": loc, "gumbel_scale": scale,
        "gumbel_ks_statistic": ks,
        "spearman_contrast": _spearman(log_p_db, c), "spearman_sparsity": _spearman(log_p_db, s),
    }  # fmt: skip
    paper = {"dataset": "imagenet64 gray (paper)", "model": "energy", "source": "paper", **PAPER_CONTENT}
    extremes = x[np.concatenate([most, least])].float().numpy()
    return ContentResult(per_image, pd.DataFrame([ours, paper]), extremes)
