"""Denoising parity (paper 1, Table 1): the energy model's Tweedie denoiser x_hat = y - t grad_y U
against the plain denoiser, output PSNR vs input PSNR (dB, peak 1; input PSNR = -10 log10 t).

Every model sees the same noisy images (one z per image, draw and PSNR), so differences between
models are not noise. psnr_out is the release's estimator: -10 log10 of the mean squared error over
the test images (and draws). The mean over images of each image's PSNR, the denoising papers' other
convention, is kept as psnr_out_per_image_mean: it is larger (Jensen: -log of a mean <= mean of -log).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from image_density import units
from image_density.likelihood import _dtype_device
from image_density.noise import add_noise, t_grid_from_psnr
from image_density.studies.nll import StudyModel

# Paper 1, Table 1 (colour ImageNet64 models): input PSNR -> output PSNR, score net ("denoiser") /
# energy net.
PAPER_TABLE1 = {
    "psnr_in": [90.0, 60.0, 30.0, 15.0, 0.0, -15.0],
    "denoiser": [90.20, 60.43, 35.58, 25.92, 18.84, 13.31],
    "energy": [90.09, 60.45, 35.67, 26.01, 18.88, 13.48],
}
PAPER_DATA = "colour ImageNet64 (paper)"


def paper_rows(dataset: str | None = None) -> pd.DataFrame:
    """Table 1's rows, source "paper". dataset: the run's colour ImageNet64 dataset, whose panel they
    belong on; None: no such dataset, the rows are kept under PAPER_DATA and drawn nowhere."""
    return pd.DataFrame([
        {"dataset": dataset or PAPER_DATA, "model": model, "source": "paper", "data": PAPER_DATA,
         "psnr_in": p_in, "t": units.psnr_to_t(p_in), "psnr_out": p_out}
        for model in ("denoiser", "energy")
        for p_in, p_out in zip(PAPER_TABLE1["psnr_in"], PAPER_TABLE1[model], strict=True)
    ])  # fmt: skip


def denoising_study(
    models: Sequence[StudyModel],
    x: torch.Tensor,
    psnrs: Sequence[float],
    *,
    dataset: str,
    draws: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    paper_data: bool = False,
) -> pd.DataFrame:
    """One row per model x input PSNR on images x (N, C, H, W), then the paper's Table 1 rows (on this
    dataset's panel only if paper_data: the images are colour ImageNet64): dataset, model, network,
    source, psnr_in, t, n_images, mse, psnr_out (of the mean MSE), psnr_out_per_image_mean,
    psnr_out_sem (of the per-image PSNRs)."""
    if not models:
        raise ValueError("denoising_study needs at least one model")
    t_all = t_grid_from_psnr(list(psnrs))
    # per model and PSNR: per-image MSE, averaged over draws; (n_models, n_psnr, N)
    mse = np.zeros((len(models), len(t_all), len(x)))
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        for j, t_val in enumerate(t_all.tolist()):
            for _ in range(draws):
                t = torch.full((len(xb),), t_val, dtype=xb.dtype)
                y, _ = add_noise(xb, t, generator)
                for i, m in enumerate(models):
                    dtype, device = _dtype_device(m.model)
                    with torch.no_grad():
                        x_hat = m.model.denoise(y.to(device, dtype), t.to(device, dtype)).detach()
                    err = (x_hat.double().cpu() - xb.double()).flatten(1).square().mean(1)
                    mse[i, j, start : start + len(xb)] += err.numpy() / draws
    rows = []
    for i, m in enumerate(models):
        for j, (p_in, t_val) in enumerate(zip(psnrs, t_all.tolist(), strict=True)):
            psnr = units.mse_to_psnr(torch.from_numpy(mse[i, j])).numpy()  # (N,) per image
            mean_mse = float(mse[i, j].mean())
            rows.append({
                "dataset": dataset, "model": m.name, "network": m.network, "source": m.source,
                "psnr_in": float(p_in), "t": t_val, "n_images": len(x), "mse": mean_mse,
                "psnr_out": float(units.mse_to_psnr(mean_mse)),
                "psnr_out_per_image_mean": float(psnr.mean()),
                "psnr_out_sem": float(psnr.std(ddof=1) / np.sqrt(len(psnr))) if len(psnr) > 1 else 0.0,
            })  # fmt: skip
    return pd.concat([pd.DataFrame(rows), paper_rows(dataset if paper_data else None)], ignore_index=True)
