"""Effective dimensionality (paper 1, Fig. 5) and the mean log-probability of noisy images vs t.

    d_eff(x, t) = E_z ||x - x_hat(x + sqrt(t) z, t)||^2 / t

is the number of dimensions in which the denoiser lets noise through (the divergence of x_hat,
by Stein's lemma / Tweedie); d at small t for a model that keeps every pixel, 0 at large t. For a
Gaussian N(m, Sigma) with eigenvalues lambda_k, E_x d_eff(x, t) = sum_k lambda_k / (lambda_k + t).
log p_t(y) = -(U(y, t) + log Z): the dual-score model's one log Z (found at t_max) holds at every t,
because the time score ties the levels of U across t; exactly -H(N(m, Sigma + t I)) in mean for a
Gaussian. Curves for the test mean and for the most and least probable test images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from image_density import units
from image_density.likelihood import _dtype_device
from image_density.noise import add_noise
from image_density.studies.nll import StudyModel

# Paper 1 (ImageNet64 grayscale, d = 4096), test average of d_eff at a few t.
PAPER_D_EFF = {"d": 4096, "t": [1e-12, 2e-4, 1e-2, 0.46, 1e3], "d_eff": [4096, 2370, 780, 108, 1.2]}


def noisy_curves(
    m: StudyModel,
    x: torch.Tensor,
    t: torch.Tensor,
    draws: int,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per image and t, averaged over `draws` noise draws: d_eff (N, T) and, for a normalized
    energy, log p_t(x + sqrt(t) z) in nats (N, T), else None."""
    dtype, device = _dtype_device(m.model)
    n, n_t = len(x), len(t)
    d_eff = np.zeros((n, n_t))
    log_p = np.zeros((n, n_t)) if m.has_log_p else None
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size].to(device, dtype)
        rows = slice(start, start + len(xb))
        for j, t_val in enumerate(t.tolist()):
            tb = torch.full((len(xb),), t_val, dtype=dtype, device=device)
            for _ in range(draws):
                y, _ = add_noise(xb, tb, generator)
                with torch.no_grad():
                    x_hat = m.model.denoise(y, tb).detach()
                    err = (x_hat.double() - xb.double()).flatten(1).square().sum(1) / t_val
                    d_eff[rows, j] += err.cpu().numpy() / draws
                    if log_p is not None:
                        u = m.model.energy(y, tb).double().cpu().numpy()
                        log_p[rows, j] -= (u + m.log_z) / draws
    return d_eff, log_p


def exact_curves(eigenvalues: torch.Tensor, t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian with covariance eigenvalues lambda: E d_eff(t) = sum_k lambda_k / (lambda_k + t) and
    E log p_t = -1/2 sum_k log(2 pi e (lambda_k + t)) in nats, each (T,)."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).flatten()[None]  # (1, d)
    lam_t = lam + t.to(torch.float64)[:, None]  # (T, d)
    d_eff = (lam / lam_t).sum(1)
    log_p = -0.5 * torch.log(2 * math.pi * math.e * lam_t).sum(1)
    return d_eff.numpy(), log_p.numpy()


def _sem(v: np.ndarray) -> np.ndarray:
    return v.std(0, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else np.zeros(v.shape[1])


def _rows(dataset, name, source, images, index, log_p_x, t, d, d_eff, d_eff_sem, log_p, log_p_sem):
    return pd.DataFrame({
        "dataset": dataset, "model": name, "source": source, "images": images, "index": index,
        "log_p_db": log_p_x, "t": t, "psnr": units.t_to_psnr(torch.from_numpy(t)).numpy(), "d": d,
        "d_eff": d_eff,
        "d_eff_sem": d_eff_sem, "d_eff_fraction": d_eff / d,
        "log_p_t_db": units.log_p_db_per_dim(log_p, d) if log_p is not None else np.nan,
        "log_p_t_db_sem": units.log_p_db_per_dim(log_p_sem, d) if log_p_sem is not None else np.nan,
    })  # fmt: skip


def extreme_indices(log_p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(the k most probable, most first; the k least probable, least first) indices of log p (N,)."""
    order = np.argsort(-np.asarray(log_p), kind="stable")
    k = min(k, len(order))
    return order[:k], order[::-1][:k]


def dimensionality_study(
    models: Sequence[StudyModel],
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    dataset: str,
    draws: int,
    log_p_x_db: np.ndarray | None = None,
    n_extremes: int = 0,
    eigenvalues: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> pd.DataFrame:
    """One row per model x image group x t: d_eff (and d_eff / d), and E log p_t in dB/dim for the
    normalized energies. Groups: "test" (mean over x (N, C, H, W)), and with log_p_x_db (N,) (log p of
    each image, dB/dim) "most_probable_i" / "least_probable_i", i = 1..n_extremes (index = its row in x).
    Then exact rows (source "exact") when the data's covariance eigenvalues are given, and the
    paper's d_eff points (source "paper", compare d_eff / d)."""
    d = x[0].numel()
    t_np = t.double().numpy()
    frames = []
    groups = []
    if log_p_x_db is not None and n_extremes > 0:
        most, least = extreme_indices(log_p_x_db, n_extremes)
        groups = [(f"most_probable_{i + 1}", k) for i, k in enumerate(most)]
        groups += [(f"least_probable_{i + 1}", k) for i, k in enumerate(least)]
    for m in models:
        d_eff, log_p = noisy_curves(m, x, t, draws, generator, batch_size)
        frames.append(_rows(
            dataset, m.name, m.source, "test", -1, np.nan, t_np, d, d_eff.mean(0), _sem(d_eff),
            None if log_p is None else log_p.mean(0), None if log_p is None else _sem(log_p),
        ).assign(network=m.network))  # fmt: skip
        for label, k in groups:
            d_k, lp_k = noisy_curves(m, x[k : k + 1], t, draws, generator, batch_size)
            frames.append(_rows(
                dataset, m.name, m.source, label, int(k), float(log_p_x_db[k]), t_np, d, d_k[0],
                np.full(len(t_np), np.nan), None if lp_k is None else lp_k[0], None,
            ).assign(network=m.network))  # fmt: skip
    if eigenvalues is not None:
        d_eff, log_p = exact_curves(eigenvalues, t)
        frames.append(_rows(dataset, "exact", "exact", "test", -1, np.nan, t_np, d, d_eff, 0.0, log_p, 0.0))
    paper_t = np.array(PAPER_D_EFF["t"])
    frames.append(_rows(
        "imagenet64 gray (paper)", "energy", "paper", "test", -1, np.nan, paper_t, PAPER_D_EFF["d"],
        np.array(PAPER_D_EFF["d_eff"], dtype=float), np.nan, None, None,
    ))  # fmt: skip
    return pd.concat(frames, ignore_index=True)
