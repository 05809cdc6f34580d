"""From the params file to a paper-1 training: which section's settings a model gets (`plan_run`),
its run name, and `train_from_config`, which builds its network and images and calls `train.train`
through `train_prepared` (the training images of a prepared dataset, and its provenance).

The studies read a trained model's settings back through `plan_run`, from the model file's meta.
Paper 2's networks have their own planning in `multiscale.train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from image_density import jobs
from image_density.config import Config, ConfigError, LikelihoodSpec, TrainSpec, UNetSpec

if TYPE_CHECKING:
    from torch import nn

    from image_density.data import Prepared
    from image_density.train import Objective, TrainResult

MODELS = {"energy": "energy_unet", "denoiser": "denoiser_unet"}  # --model -> models registry arch


@dataclass(frozen=True)
class Plan:
    """What the params ask for one model: the section it comes from and its settings."""

    section: str  # "energy" or "generalization"
    unet: UNetSpec
    train: TrainSpec
    likelihood: LikelihoodSpec
    subset: str | None = None  # "A" (first n training images) or "B" (last n)
    n: int | None = None


def plan_run(cfg: Config, dataset: str, subset: str | None = None, n: int | None = None) -> Plan:
    """The `energy:` section for a dataset, or the `generalization:` one for a subset (A|B, n)."""
    if (subset is None) != (n is None):
        raise ConfigError("give both --subset and --n (a generalization model), or neither")
    if subset is None:
        if cfg.energy is None or dataset not in cfg.energy.datasets:
            have = cfg.energy.datasets if cfg.energy else "no energy: section"
            raise ConfigError(f"dataset {dataset!r} is not in energy.datasets ({have})")
        return Plan("energy", cfg.energy.unet, cfg.energy.train, cfg.energy.likelihood)
    g = cfg.generalization
    if g is None or g.dataset != dataset:
        raise ConfigError(
            f"dataset {dataset!r} is not generalization.dataset "
            f"({g.dataset if g else 'no generalization: section'})"
        )
    if subset not in ("A", "B") or n not in g.n:
        raise ConfigError(f"generalization models are --subset A|B with --n in {g.n}, got {subset} {n}")
    return Plan("generalization", g.unet, g.train, g.likelihood, subset, n)


def run_name(model: str, plan: Plan) -> str:
    return model if plan.subset is None else f"{model}-{plan.subset}{plan.n}"


def train_from_config(
    cfg: Config,
    model: str,
    dataset: str,
    data_dir: Path,
    out_dir: Path,
    *,
    ckpt_dir: Path | None = None,
    subset: str | None = None,
    n: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the energy model (dual score matching) or the plain denoiser of the params file on a
    prepared dataset (or on subset A/B of its first/last n training images)."""
    from image_density.data import generalization_split, load_prepared
    from image_density.losses import denoiser_loss, dual_score_loss
    from image_density.models import build_model, unet_model_spec
    from image_density.models.energy import gaussian_stats
    from image_density.multiscale.train import STATS_IMAGES

    if model not in MODELS:
        raise ConfigError(f"--model must be one of {sorted(MODELS)}, got {model!r}")
    plan = plan_run(cfg, dataset, subset, n)
    data = load_prepared(data_dir)
    rows = np.arange(len(data.train))
    if subset is not None:
        rows = generalization_split(len(data.train), n, subset)
    stats = None
    if model == "energy" and plan.unet.energy_form == "gaussian":
        stats = gaussian_stats(data.images("train", rows[:STATS_IMAGES]))
    model_spec = unet_model_spec(MODELS[model], data.shape[0], plan.unet, stats)
    torch.manual_seed(plan.train.seed)
    net = build_model(model_spec)
    meta = {
        "name": run_name(model, plan),
        "model": model,
        "dataset": dataset,
        "section": plan.section,
        "subset": subset,
        "n": n,
    }
    objective = dual_score_loss if model == "energy" else denoiser_loss
    config = jobs.settings(jobs.training_job("train", model, subset), cfg, dataset)
    return train_prepared(net, objective, model_spec, plan.train, config, data, out_dir, meta=meta, rows=rows,
                          ckpt_dir=ckpt_dir, progress=progress)  # fmt: skip


def train_prepared(
    net: nn.Module,
    objective: Objective,
    model_spec: dict,
    spec: TrainSpec,
    config: dict,
    data: Prepared,
    out_dir: Path,
    *,
    meta: dict,
    rows: np.ndarray | None = None,
    ckpt_dir: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """`train.train` on a prepared dataset's training images (`rows` of them, default all); the model
    file keeps `config` (the params its job reads, jobs.settings), `meta` and the data's provenance
    (its sha256 is checked on resume)."""
    from image_density.train import ImageSource, train

    meta = {
        **meta,
        "data_path": str(data.path),
        "shape": list(data.shape),
        "d": data.d,
        "quantized": data.quantized,
        "data_sha256": data.meta["sha256"]["train.npy"],
    }
    rows = np.arange(len(data.train)) if rows is None else rows
    images = ImageSource(len(rows), lambda i: data.images("train", rows[i]))
    return train(
        net,
        objective,
        images,
        spec,
        out_dir,
        model_spec,
        ckpt_dir=ckpt_dir,
        config=config,
        meta=meta,
        progress=progress,
    )
