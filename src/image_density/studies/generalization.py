"""Generalization (paper 1, Fig. 2): model A trained on the first N images, B on the last N.

Per N, log p_A(x) and log p_B(x) (dB/dim) on A's training images, B's training images and test
images. A model that generalizes assigns the same log p as its twin trained on other images
(Delta = log p_A - log p_B near 0, Pearson r near 1); a model that memorizes assigns its own images
a far higher log p. Also the train and test loss: the dual score loss, averaged over t drawn as in
training (log-uniform on [t_min, t_max]) and over noise, with the same t and noise for A and B.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import torch

from image_density import units
from image_density.likelihood import _dtype_device
from image_density.losses import dual_score_loss
from image_density.noise import sample_log_uniform_t
from image_density.studies.denoising import PAPER_DATA
from image_density.studies.nll import StudyModel

IMAGE_SETS = ("A", "B", "test")  # A's training images, B's training images, test images

# Paper 1 (colour ImageNet64 models, d = 12288, dB/dim), compared on A's and on B's training images; a
# range where the paper gives one (over the two image sets, or over N <= 100 for memorization).
PAPER_GENERALIZATION = [
    {"n": 100_000, "mean_abs_delta_db": 0.11, "rms_delta_db": 0.19, "pearson_r": 0.9987},
    {"n": 1_000, "mean_abs_delta_db_lo": 0.23, "mean_abs_delta_db_hi": 0.33,
     "pearson_r_lo": 0.98, "pearson_r_hi": 0.99},
    *({"n": n, "mean_abs_delta_db_lo": 7.0, "mean_abs_delta_db_hi": 65.0} for n in (1, 10, 100)),
]  # fmt: skip

# (n, image set) -> (indices into that set's split, images (B, C, H, W))
ImageSets = Callable[[int, str], tuple[np.ndarray, torch.Tensor]]


def mean_dual_score_loss(
    model,
    x: torch.Tensor,
    t_min: float,
    t_max: float,
    draws: int,
    generator: torch.Generator,
    batch_size: int = 64,
) -> torch.Tensor:
    """The dual score loss per image, (N,) float64 CPU, averaged over `draws` (t, z) per image."""
    dtype, device = _dtype_device(model)
    out = []
    for xb in x.split(batch_size):
        xb = xb.to(device, dtype)
        acc = torch.zeros(len(xb), dtype=torch.float64)
        for _ in range(draws):
            t = sample_log_uniform_t(len(xb), t_min, t_max, generator, device=device).to(dtype)
            acc += dual_score_loss(model, xb, t, generator)["loss"].detach().double().cpu()
        out.append(acc / draws)
    return torch.cat(out)


def _stats(delta: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    spread = len(a) > 1 and a.std() > 0 and b.std() > 0
    return {
        "mean_abs_delta_db": float(np.abs(delta).mean()),
        "rms_delta_db": float(np.sqrt(np.square(delta).mean())),
        "pearson_r": float(np.corrcoef(a, b)[0, 1]) if spread else float("nan"),
    }


def generalization_study(
    pairs: Mapping[int, tuple[StudyModel, StudyModel]],
    images: ImageSets,
    *,
    dataset: str,
    t_min: float,
    t_max: float,
    loss_draws: int,
    generator: torch.Generator,
    batch_size: int = 64,
    paper_data: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """pairs: N -> (model A, model B), both normalized energies. Returns
    - scatter: one row per N x image set x image: dataset, n, images, index, log_p_A_db, log_p_B_db,
      delta_db (log p in dB/dim);
    - summary: one row per N x image set: n_images, mean_abs_delta_db, rms_delta_db, pearson_r,
      mean log p of each model, loss_A, loss_B (mean dual score loss); then, if paper_data (the
      images are colour ImageNet64, as the paper's), the paper's rows (source "paper", with _lo/_hi
      columns where it gives a range)."""
    scatter, summary = [], []
    for n, (model_a, model_b) in sorted(pairs.items()):
        for m in (model_a, model_b):
            if not m.has_log_p:
                raise ValueError(f"generalization model {m.name!r} (N = {n}) has no normalized energy")
        for which in IMAGE_SETS:
            idx, x = images(n, which)
            d = x[0].numel()
            log_p = {
                k: units.log_p_db_per_dim(m.log_p_nats(x, batch_size), d).numpy()
                for k, m in (("A", model_a), ("B", model_b))
            }
            losses = {}
            state = generator.get_state()
            for k, m in (("A", model_a), ("B", model_b)):
                generator.set_state(state)  # the same t and noise for both models
                losses[k] = mean_dual_score_loss(m.model, x, t_min, t_max, loss_draws, generator, batch_size)
            delta = log_p["A"] - log_p["B"]
            scatter.append(pd.DataFrame({
                "dataset": dataset, "n": n, "images": which, "index": idx,
                "log_p_A_db": log_p["A"], "log_p_B_db": log_p["B"], "delta_db": delta,
            }))  # fmt: skip
            summary.append({
                "dataset": dataset, "n": n, "images": which, "source": "ours", "n_images": len(x),
                **_stats(delta, log_p["A"], log_p["B"]),
                "mean_log_p_A_db": float(log_p["A"].mean()), "mean_log_p_B_db": float(log_p["B"].mean()),
                "loss_A": float(losses["A"].mean()), "loss_B": float(losses["B"].mean()),
                "model_A": model_a.name, "model_B": model_b.name, "network": model_a.network,
            })  # fmt: skip
    tables = [pd.DataFrame(summary)]
    if paper_data:
        tables.append(pd.DataFrame(PAPER_GENERALIZATION).assign(dataset=dataset, images="A and B",
                                                                source="paper", data=PAPER_DATA))  # fmt: skip
    return pd.concat(scatter, ignore_index=True), pd.concat(tables, ignore_index=True)
