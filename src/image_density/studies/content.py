"""Probability vs image content (paper 1, Figs. 3-4).

The distribution of log p over test images (dB/dim) and its Gumbel fit, the most and least probable
images, and log p against content as the release measures it:
- sparsity: the participation ratio ||c||_1^2 / (n ||c||_2^2) of an image's n Haar coefficients c over
  `participation_levels` levels in the release's averaging normalization, the coarsest low-pass
  included (1 for coefficients of equal magnitude, 1/n for a single non-zero one: low = sparse);
- contrast: log p(a x + b) of the test images swept over a gain a and an offset b (`affine_sweep`).
This project's first measures are kept under their own names: `pixel_std` and `detail_l1_l2`,
||d||_1 / (sqrt(n) ||d||_2) of the orthonormal detail coefficients over `wavelet_levels` levels, with
their Spearman correlations with log p.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from image_density import units
from image_density.multiscale.wavelets import decompose

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


def pixel_std(x: torch.Tensor) -> np.ndarray:
    """Pixel standard deviation of each image (all pixels and channels), (N,)."""
    return x.flatten(1).double().std(1, correction=0).numpy()


def _check_levels(x: torch.Tensor, levels: int, key: str) -> None:
    h, w = x.shape[-2:]
    if h % 2**levels or w % 2**levels:
        raise ValueError(
            f"studies.content.{key} = {levels}: images of {h} x {w} pixels are not divisible by 2^{levels}"
        )


def participation_ratio(x: torch.Tensor, levels: int, wavelet: str = "haar") -> np.ndarray:
    """The release's sparsity, ||c||_1^2 / (n ||c||_2^2) over each image's n Haar coefficients (every
    detail band of `levels` averaging-normalized levels and the coarsest low-pass), (N,); NaN for an
    all-zero image."""
    _check_levels(x, levels, "participation_levels")
    x_j, details = decompose(x.double(), levels, wavelet, normalization="average")
    c = torch.cat([x_j.flatten(1), *(dj.flatten(1) for dj in details)], 1)  # (N, n), n = d
    l1, l2sq = c.abs().sum(1), c.square().sum(1)
    return torch.where(l2sq > 0, l1.square() / (c.shape[1] * l2sq), torch.nan).numpy()


def detail_l1_l2(x: torch.Tensor, levels: int, wavelet: str = "haar") -> np.ndarray:
    """||d||_1 / (sqrt(n) ||d||_2) of each image's detail coefficients over `levels` orthonormal
    levels, (N,); NaN for an image without any detail (constant)."""
    _check_levels(x, levels, "wavelet_levels")
    x = x.double()
    _, details = decompose(x, levels, wavelet)
    d = torch.cat([dj.flatten(1) for dj in details], 1)  # (N, n)
    l1, l2 = d.abs().sum(1), d.square().sum(1).sqrt()
    ratio = l1 / (d.shape[1] ** 0.5 * l2)
    # details of a constant image are rounding errors (~1e-16 of the image), not structure
    flat = l2 <= 1e-9 * x.flatten(1).norm(dim=1)
    return torch.where(flat, torch.nan, ratio).numpy()


def affine_sweep(
    log_p_nats, x: torch.Tensor, a: Sequence[float], b: Sequence[float], *, index: np.ndarray | None = None
) -> pd.DataFrame:
    """log p(a x + b) in dB/dim for each image of x (N, C, H, W) and each gain a and offset b; log_p_nats
    maps images to log p in nats, (N,). One row per image x a x b: index, a, b, log_p_db."""
    index = np.arange(len(x)) if index is None else np.asarray(index)
    d = x[0].numel()
    rows = [
        pd.DataFrame({"index": index, "a": float(ai), "b": float(bi),
                      "log_p_db": units.log_p_db_per_dim(log_p_nats(ai * x + bi), d).numpy()})
        for ai in a for bi in b
    ]  # fmt: skip
    return pd.concat(rows, ignore_index=True)


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
    participation_levels: int,
    index: np.ndarray | None = None,
    network: str = "",
) -> ContentResult:
    """x (N, C, H, W) in [0, 1], log_p_db (N,) its log p in dB/dim under `model`; index (N,): the
    images' rows in their split (default 0..N-1).

    per_image: dataset, model, index, log_p_db, rank (1 = most probable), participation_ratio,
    pixel_std, detail_l1_l2, extreme ("most" / "least" / ""). summary: n_images, mean, median, std,
    gumbel_loc, gumbel_scale, gumbel_ks_statistic (Kolmogorov-Smirnov distance to the fitted Gumbel),
    spearman_participation_ratio, spearman_pixel_std, spearman_detail_l1_l2; then the paper's row
    (source "paper")."""
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
    measures = {
        "participation_ratio": participation_ratio(x, participation_levels),
        "pixel_std": pixel_std(x),
        "detail_l1_l2": detail_l1_l2(x, wavelet_levels),
    }
    per_image = pd.DataFrame({
        "dataset": dataset, "model": model, "index": index, "log_p_db": log_p_db, "rank": rank,
        **measures, "extreme": extreme,
    })  # fmt: skip
    # a model that gives every image the same log p (e.g. untrained) has no distribution to fit
    loc, scale, ks = float("nan"), float("nan"), float("nan")
    if np.ptp(log_p_db) > 0:
        loc, scale = fit_gumbel(log_p_db)
        ks = float(stats.kstest(log_p_db, "gumbel_r", args=(loc, scale)).statistic)
    ours = {
        "dataset": dataset, "model": model, "network": network, "source": "ours", "n_images": len(x),
        "mean": log_p_db.mean(), "median": float(np.median(log_p_db)), "std": log_p_db.std(ddof=1),
        "gumbel_loc": loc, "gumbel_scale": scale,
        "gumbel_ks_statistic": ks,
        **{f"spearman_{k}": _spearman(log_p_db, v) for k, v in measures.items()},
    }  # fmt: skip
    paper = {"dataset": "imagenet64 gray (paper)", "model": "energy", "source": "paper", **PAPER_CONTENT}
    extremes = x[np.concatenate([most, least])].float().numpy()
    return ContentResult(per_image, pd.DataFrame([ours, paper]), extremes)
