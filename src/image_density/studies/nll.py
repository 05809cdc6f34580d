"""NLL of trained energy models, and the NLL study: learned NLLs beside exact values, baselines and
the paper (METHOD.md, paper 1 "Normalization and NLL").

log Z at t_max from the model's own training images (its A/B subset for a generalization model),
then -log p(x) = U(x, t_eval) + log Z per image, t_eval = the model's training t_min (the smallest t
it has seen; see likelihood.nll). `evaluate_nll` gives one tidy row per (dataset, model, split) plus
per-image values (the `nll` command); `load_study_model` gives the other studies the same normalized
model; `nll_study` adds to the rows of the `nll` command the exact NLL (Gaussian fields), the best
Gaussian model, the uniform density of 8-bit data and the paper's ImageNet64 numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from image_density import likelihood, units
from image_density.checkpoint import load_model
from image_density.config import Config, ConfigError
from image_density.data import Prepared, generalization_split, load_prepared
from image_density.models import GaussianEnergy, network_label
from image_density.plan import Plan, plan_run

KEY_COLUMNS = ["dataset", "model", "split"]

# Paper 1, ImageNet64 (box-resized "Downsampled ImageNet"), bits/dim of the energy model.
PAPER_NLL = {3: {"test": 3.36, "train": 3.33}, 1: {"test": 4.20}}  # channels -> split -> bits/dim
PAPER_DATASET_KIND = "imagenet64"
# Covariance of the uniform dequantization noise of 8-bit data on [0, 1]: the best Gaussian of the
# dequantized data has covariance Sigma + this I, which also keeps it regular when N <= d.
QUANT_VARIANCE = 1.0 / (12.0 * 255.0**2)


@dataclass(frozen=True)
class NllResult:
    row: dict  # the tidy row of results/tables/nll.csv
    per_image: dict[str, np.ndarray]  # index, nll_nats, nll_bits_per_dim, log_p_db_per_dim


@dataclass(frozen=True)
class StudyModel:
    """A model as the studies see it: the EnergyModel face (energy, score, denoise), and for an
    energy its normalization, log p(x) = -(U(x, t_eval) + log_z) (likelihood.nll)."""

    name: str
    model: nn.Module
    log_z: float | None = None  # None: a plain denoiser, no log p
    t_eval: float = 0.0  # stands in for t = 0: a learned model's training t_min
    source: str = "ours"  # "ours" (learned) or "exact" (the Gaussian ground truth)
    network: str = "exact"  # models.network_label of a learned model

    @property
    def has_log_p(self) -> bool:
        return self.log_z is not None

    def log_p_nats(self, x: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
        """log p(x) in nats per image, (N,) float64 CPU."""
        if self.log_z is None:
            raise ValueError(f"model {self.name!r} has no normalized energy (a plain denoiser?)")
        return -likelihood.nll(self.model, x, self.log_z, t=self.t_eval, batch_size=batch_size)


def _model_log_z(
    cfg: Config, model, info: dict, train_data_dir: Path, batch_size: int
) -> tuple[float, Plan, tuple[int, int, int]]:
    """(log Z of a trained energy at t_max, on a seeded choice of its own training images; the
    params of its run; the shape of its training images)."""
    meta = info.get("meta", {})
    plan = plan_run(cfg, meta["dataset"], meta.get("subset"), meta.get("n"))
    spec = plan.likelihood
    if spec.t_max != plan.train.t_max:
        raise ConfigError(
            f"likelihood.t_max = {spec.t_max} differs from the training t_max = "
            f"{plan.train.t_max} of {meta.get('name')!r}: log Z needs a t the model was trained at"
        )
    train_data = load_prepared(train_data_dir)
    if meta.get("data_sha256") and train_data.meta["sha256"]["train.npy"] != meta["data_sha256"]:
        raise ValueError(
            f"model {meta.get('name')!r} was trained on other data than {train_data_dir} (sha256 differs)"
        )
    rows = np.arange(len(train_data.train))
    if plan.subset is not None:
        rows = generalization_split(len(train_data.train), plan.n, plan.subset)
    gen = torch.Generator().manual_seed(cfg.seed)
    if len(rows) > spec.logz_images:
        rows = np.sort(rows[torch.randperm(len(rows), generator=gen)[: spec.logz_images].numpy()])
    x_z = train_data.images("train", rows)  # (n_logz, C, H, W)
    eig = None
    if spec.spectral_refinement:
        exact = exact_gaussian(train_data)
        if exact is not None:
            eig = exact.eigenvalues
        elif len(x_z) >= 2:
            eig = likelihood.data_covariance_eigenvalues(x_z)
    log_z = likelihood.log_z(
        model, x_z, spec.t_max, spec.logz_draws, generator=gen, eigenvalues=eig, batch_size=batch_size
    )
    return log_z, plan, train_data.shape


def _default_device(device) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_study_model(
    cfg: Config,
    model_path: Path,
    train_data_dir: Path | None = None,
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> tuple[StudyModel, dict]:
    """A model file -> (StudyModel, the file's info). An energy is normalized exactly as by the `nll`
    command (same log Z); a plain denoiser gets no log Z. train_data_dir: the prepared data it was
    trained on (default: <results>/data/<its dataset>)."""
    model, info = load_model(model_path, _default_device(device))
    meta = info.get("meta", {})
    name = meta.get("name", Path(model_path).parent.name)
    network = network_label(info["model_spec"])
    if not hasattr(model, "energy"):
        return StudyModel(name, model, network=network), info
    train_data_dir = train_data_dir or cfg.results / "data" / meta["dataset"]
    log_z, plan, _ = _model_log_z(cfg, model, info, Path(train_data_dir), batch_size)
    return StudyModel(name, model, log_z, plan.train.t_min, network=network), info


def evaluate_nll(
    cfg: Config,
    model_path: Path,
    dataset: str,
    data_dir: Path,
    train_data_dir: Path,
    split: str,
    *,
    limit: int | None = None,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> NllResult:
    """NLL (bits/dim) of the energy model at model_path on `split` of the prepared `data_dir`.

    train_data_dir: the prepared data the model was trained on (checked by its sha256), for log Z.
    The likelihood settings come from the params section the model was trained from.
    """
    model, info = load_model(model_path, _default_device(device))
    meta = info.get("meta", {})
    if not hasattr(model, "energy"):
        raise ValueError(
            f"{model_path}: a {info['model_spec'].get('arch')!r} model has no energy; "
            "nll needs an energy model"
        )
    data = load_prepared(data_dir)  # checked (sha256) before the work of log Z
    log_z, plan, train_shape = _model_log_z(cfg, model, info, Path(train_data_dir), batch_size)
    arr = data.split(split)
    n = len(arr) if limit is None else min(limit, len(arr))
    if data.shape != train_shape:
        raise ValueError(f"{data_dir} has images {data.shape}, the model was trained on {train_shape}")
    batches = (data.images(split, np.arange(i, min(i + batch_size, n))) for i in range(0, n, batch_size))
    t_eval = plan.train.t_min
    nll_nats = likelihood.nll(model, batches, log_z, t=t_eval, batch_size=batch_size).numpy()  # (n,)
    bits = units.nll_bits_per_dim(nll_nats, data.d, data.quantized)
    row = {
        "dataset": dataset,
        "model": meta.get("name", Path(model_path).parent.name),
        "split": split,
        "n_images": int(n),
        "nll_bits_per_dim": float(bits.mean()),
        "nll_std_bits_per_dim": float(bits.std(ddof=1)) if n > 1 else 0.0,
        "exact_bits_per_dim": exact_bits_per_dim(data),
        "log_z_nats": float(log_z),
        "energy_form": info["model_spec"].get("energy_form"),
        "network": network_label(info["model_spec"]),
        "t_eval": t_eval,
        "t_max": plan.likelihood.t_max,
        "step": info.get("step"),
        "model_path": str(model_path),
    }
    per_image = {
        "index": np.arange(n),
        "nll_nats": nll_nats,
        "nll_bits_per_dim": bits,
        "log_p_db_per_dim": units.log_p_db_per_dim(-nll_nats, data.d),
    }
    return NllResult(row, per_image)


# ---------------------------------------------------------------------- reference values, study


def exact_gaussian(data: Prepared) -> GaussianEnergy | None:
    """The true model of a generated Gaussian field (periodic or modulated), None for other data."""
    if data.eigenvalues is None:
        return None
    spectrum = torch.from_numpy(np.asarray(data.eigenvalues, dtype=np.float64))
    s = None if data.modulation is None else torch.from_numpy(np.asarray(data.modulation, dtype=np.float64))
    return GaussianEnergy.field(spectrum, data.meta.get("source", {}).get("mean", 0.0), s)


def exact_bits_per_dim(data: Prepared) -> float | None:
    """The true mean NLL (the entropy) of a generated Gaussian field, else None."""
    exact = exact_gaussian(data)
    if exact is None:
        return None
    entropy = likelihood.gaussian_entropy_nats(exact.eigenvalues)
    return float(units.nll_bits_per_dim(entropy, data.d, data.quantized))


def is_paper_colour_data(data: Prepared) -> bool:
    """Colour ImageNet64: the data of paper 1's Table 1 and generalization models."""
    return data.meta.get("kind") == PAPER_DATASET_KIND and data.shape[0] == 3


def paper_bits_per_dim(data: Prepared, split: str) -> float | None:
    """Paper 1's NLL of its energy model on this kind of data (ImageNet64 colour / grayscale)."""
    if data.meta.get("kind") != PAPER_DATASET_KIND:
        return None
    return PAPER_NLL.get(data.shape[0], {}).get(split)


def _chunks(data: Prepared, split: str, n: int, batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(0, n, batch_size):
        yield data.images(split, np.arange(i, min(i + batch_size, n)))


def fit_gaussian(
    batches: Iterable[torch.Tensor], variance_floor: float = 0.0, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximum-likelihood Gaussian of images (streamed in batches (B, C, H, W)): (mean (d,),
    covariance eigenvalues (d,) + variance_floor, eigenvectors (d, d)), float64 on `device`."""
    shift, total, outer, n = None, None, None, 0
    for xb in batches:
        xf = xb.flatten(1).to(device=device, dtype=torch.float64)
        if shift is None:
            # sums centred on the first batch's mean, so that outer / n - mean mean^T does not cancel
            shift = xf.mean(0)
            total, outer = torch.zeros_like(shift), xf.new_zeros(xf.shape[1], xf.shape[1])
        xc = xf - shift
        total += xc.sum(0)
        outer += xc.T @ xc
        n += xf.shape[0]
    if n < 2:
        raise ValueError(f"the Gaussian baseline needs at least 2 training images, got {n}")
    mean_c = total / n
    cov = outer / n - torch.outer(mean_c, mean_c)
    lam, vec = torch.linalg.eigh(cov)
    lam = lam + variance_floor
    if lam.min() <= 0:
        raise ValueError(
            f"the data covariance of {n} images of dimension {len(lam)} is singular (smallest "
            f"eigenvalue {lam.min().item():.3g}): give studies.nll.baseline_images > d, or more data"
        )
    return mean_c + shift, lam, vec


def gaussian_nll_nats(
    batches: Iterable[torch.Tensor], mean: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor
) -> torch.Tensor:
    """-log N(x; mean, V diag(lambda) V^T) in nats per image, (N,) float64 CPU."""
    half_log_det = 0.5 * torch.log(2 * math.pi * eigenvalues).sum()
    out = []
    for xb in batches:
        r = (xb.flatten(1).to(mean) - mean) @ eigenvectors  # (B, d) in the eigenbasis
        out.append((0.5 * (r.square() / eigenvalues).sum(1) + half_log_det).cpu())
    return torch.cat(out)


def _learned_rows(learned: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in (*KEY_COLUMNS, "n_images", "nll_bits_per_dim", "nll_std_bits_per_dim",
                        "energy_form", "t_eval", "step") if c in learned.columns]  # fmt: skip
    return learned[keep].assign(source="ours")


def nll_study(
    learned: pd.DataFrame,
    datasets: Mapping[str, Prepared],
    *,
    baseline_images: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """One row per dataset x model x split (bits/dim): the learned models' rows of the `nll` table
    (source "ours"), and per dataset the best Gaussian (mean and covariance fitted on the first
    `baseline_images` training images; its train row is on those images) and, for 8-bit data, the
    uniform density (8 bits/dim) (source "baseline"). Every row carries the dataset's exact NLL where
    known (Gaussian fields) and the energy rows the paper's value where one exists (ImageNet64)."""
    device = _default_device(device)
    rows = [_learned_rows(learned)] if len(learned) else []
    for name, data in datasets.items():
        n_fit = min(baseline_images or len(data.train), len(data.train))
        floor = QUANT_VARIANCE if data.quantized else 0.0
        if not data.quantized and n_fit <= data.d:
            raise ValueError(
                f"dataset {name!r}: the covariance of {n_fit} training images of dimension {data.d} is "
                "singular; the best-Gaussian baseline of continuous data needs studies.nll.baseline_images "
                f"(and training images) > {data.d}"
            )
        mean, lam, vec = fit_gaussian(_chunks(data, "train", n_fit, batch_size), floor, device)
        for split, n in (("train", n_fit), ("test", len(data.test))):
            nats = gaussian_nll_nats(_chunks(data, split, n, batch_size), mean, lam, vec).numpy()
            bits = units.nll_bits_per_dim(nats, data.d, data.quantized)
            rows.append(pd.DataFrame([{
                "dataset": name, "model": "gaussian", "split": split, "n_images": n,
                "nll_bits_per_dim": float(bits.mean()), "nll_std_bits_per_dim": float(bits.std(ddof=1)),
                "source": "baseline",
            }]))  # fmt: skip
            if data.quantized:
                rows.append(pd.DataFrame([{
                    "dataset": name, "model": "uniform", "split": split, "n_images": n,
                    "nll_bits_per_dim": units.BITS_8BIT, "nll_std_bits_per_dim": 0.0, "source": "baseline",
                }]))  # fmt: skip
    if not rows:
        raise ValueError("nll_study got no learned rows and no datasets")
    table = pd.concat(rows, ignore_index=True)
    exact = {name: exact_bits_per_dim(data) for name, data in datasets.items()}
    table["exact_bits_per_dim"] = [exact.get(d) for d in table["dataset"]]
    table["paper_bits_per_dim"] = [
        paper_bits_per_dim(datasets[d], s) if d in datasets and m == "energy" else None
        for d, m, s in zip(table["dataset"], table["model"], table["split"], strict=True)
    ]
    return table
