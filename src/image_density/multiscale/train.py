"""Training of the multi-scale model's networks, one per call, through train.train (METHOD.md, paper 2
and "Beyond both papers").

A network is (dataset, family, scale, rf):
- family "denoiser" (paper 2, blind CNNs): scale "lowpass" is the global low-pass CNN on x_J (all 3x3,
  no rf), scale j (0 = finest) the cCNN_j of receptive field rf, scale "flat" the pixel-domain CNN of rf;
- family "energy" (beyond both papers, dual score matching): "lowpass" the energy of x_J (paper 1's
  UNet, or the CNN below without conditioning: multiscale.energy.lowpass), j the conditional energy
  U(d_j | x_j) of receptive field rf (models/local_energy.py).
Settings come from `multiscale:` (denoisers: cnn, train, epochs, intensity_scaling, noise_range,
noise_grid; energies: energy.* and, for the RF-limited network, cnn). What a network needs from its
data (a denoiser's noise range, an energy's preconditioning) is measured once on the first
STATS_IMAGES training images and stored in its model spec or meta, so `checkpoint.load_model`
rebuilds it and a resumed run checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from image_density import jobs
from image_density.config import Config, ConfigError, TrainSpec
from image_density.data import Prepared, load_prepared
from image_density.models import build_model, unet_model_spec
from image_density.models.cnn import cnn_model_spec
from image_density.models.energy import gaussian_stats
from image_density.multiscale.conditional import denoiser_objective, energy_objective, noise_sigma_max
from image_density.multiscale.nets import Net, Scale
from image_density.multiscale.wavelets import pyramid
from image_density.plan import train_prepared
from image_density.train import TrainResult

Family = Literal["denoiser", "energy"]
FAMILIES = ("denoiser", "energy")
STATS_IMAGES = 512


@dataclass(frozen=True)
class ScalePlan:
    dataset: str
    family: str
    scale: Scale
    rf: int | None
    levels: int
    train: TrainSpec

    @property
    def name(self) -> str:
        return Net(self.family, self.scale, self.rf).name


def plan_scale(cfg: Config, dataset: str, family: str, scale: Scale, rf: int | None) -> ScalePlan:
    """Check that the params ask for this network; every refusal names the option and what is allowed."""
    m = cfg.multiscale
    if m is None or dataset not in m.datasets:
        have = m.datasets if m else "no multiscale: section"
        raise ConfigError(f"dataset {dataset!r} is not in multiscale.datasets ({have})")
    if family not in FAMILIES:
        raise ConfigError(f"--model must be one of {FAMILIES}, got {family!r}")
    if family == "energy" and m.energy is None:
        raise ConfigError("energy networks need a multiscale.energy: section in the params")
    levels = m.levels_of(dataset)
    if scale == "lowpass":
        if rf is not None:
            raise ConfigError("the low-pass network has no --rf (its receptive field covers x_J)")
    else:
        if family == "energy" and scale == "flat":
            raise ConfigError("--scale flat is a denoiser baseline; energies are lowpass or j")
        if scale != "flat" and not (isinstance(scale, int) and 0 <= scale < levels):
            raise ConfigError(
                f"--scale must be lowpass, flat or j in 0..{levels - 1} for {dataset!r}, got {scale!r}"
            )
        if rf not in m.rf:
            raise ConfigError(f"--rf must be one of multiscale.rf = {m.rf}, got {rf}")
    train_spec = m.energy.train if family == "energy" else m.train
    return ScalePlan(dataset, family, scale, rf, levels, train_spec)


def epoch_train_spec(cfg: Config, plan: ScalePlan, n_train: int) -> TrainSpec:
    """The plan's TrainSpec under multiscale.epochs (config.EpochSchedule), for n_train images; the
    plan's own when there is no schedule or the network is an energy."""
    e = cfg.multiscale.epochs
    if e is None or plan.family != "denoiser":
        return plan.train
    j = {"flat": 0, "lowpass": plan.levels - 1}.get(plan.scale, plan.scale)
    per_epoch = -(-n_train // plan.train.batch)
    return plan.train.model_copy(
        update={
            "steps": e.epochs * e.growth**j * per_epoch,
            "lr_halve_every": e.lr_halve_every * e.growth**j * per_epoch,
        }
    )


def _stats(cfg: Config, plan: ScalePlan, data: Prepared) -> dict:
    """What the network needs from its data, measured on the first STATS_IMAGES training images."""
    m = cfg.multiscale
    x = data.images("train", np.arange(min(STATS_IMAGES, len(data.train))))
    j = None if plan.scale == "lowpass" else plan.scale
    if plan.family == "denoiser":
        levels = 0 if plan.scale == "flat" else plan.levels
        sigma_max = noise_sigma_max(x, levels, j, m.noise_range, m.wavelet, m.normalization)
        if sigma_max <= 0:
            raise ConfigError(
                f"{plan.dataset}: the band of {plan.name} is 0 on the first {len(x)} training images (zero "
                "variance): no noise range to train on; use fewer multiscale.levels or other data"
            )
        return {"sigma_max": sigma_max}
    lows, details = pyramid(x.double(), plan.levels, m.wavelet, m.normalization)
    # second moments about 0: the preconditioning of models/local_energy.py
    band = lows[-1] if j is None else details[j]
    if j is None and m.energy.lowpass == "unet":
        return gaussian_stats(band) if m.energy.unet.energy_form == "gaussian" else {}
    stats = {"band_var": band.square().mean().item()}
    if j is not None:
        stats["cond_scale"] = lows[j].square().mean().sqrt().item()
    if m.energy.energy_form == "gaussian":
        stats.update(gaussian_stats(band))
    return stats


def scale_model_spec(cfg: Config, plan: ScalePlan, channels: int, stats: dict) -> dict:
    """The registry spec of the network (plain JSON types, stored in its model file)."""
    m = cfg.multiscale
    if plan.family == "denoiser":
        kind = {"lowpass": "lowpass", "flat": "flat"}.get(plan.scale, "conditional")
        return cnn_model_spec(kind, channels, m.cnn, plan.rf)
    lowpass = plan.scale == "lowpass"
    if lowpass and m.energy.lowpass == "unet":
        return unet_model_spec("energy_unet", channels, m.energy.unet, stats or None)
    return {
        "arch": "local_energy_cnn",
        "channels": channels if lowpass else 3 * channels,
        "cond_channels": 0 if lowpass else channels,
        "layers": m.cnn.layers_lowpass if lowpass else m.cnn.layers_conditional,
        "width": m.cnn.channels,
        "rf": plan.rf,  # None for the low-pass: all 3x3
        "emb_features": m.energy.emb_features,
        "emb_dim": m.energy.emb_dim,
        "band_var": stats["band_var"],
        "cond_scale": stats.get("cond_scale", 1.0),
        "padding_mode": m.cnn.padding_mode,
        "energy_form": m.energy.energy_form,
        **{k: stats[k] for k in ("data_mean", "data_var") if k in stats},
    }


def train_scale_from_config(
    cfg: Config,
    dataset: str,
    family: str,
    scale: Scale,
    rf: int | None,
    data_dir: Path,
    out_dir: Path,
    *,
    ckpt_dir: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one network of the multi-scale model (see the module docstring) on a prepared dataset:
    out_dir/model.pt (checkpoint.load_model rebuilds it) and metrics.jsonl; resumes from ckpt_dir."""
    plan = plan_scale(cfg, dataset, family, scale, rf)
    m = cfg.multiscale
    data = load_prepared(data_dir)
    plan = replace(plan, train=epoch_train_spec(cfg, plan, len(data.train)))
    stats = _stats(cfg, plan, data)
    model_spec = scale_model_spec(cfg, plan, data.shape[0], stats)
    j = None if plan.scale in ("lowpass", "flat") else plan.scale
    levels = 0 if plan.scale == "flat" else plan.levels
    if family == "denoiser":
        objective = denoiser_objective(
            levels, j, stats["sigma_max"], m.noise_grid, m.wavelet, m.normalization, m.intensity_scaling
        )
    else:
        objective = energy_objective(levels, j, m.wavelet, m.normalization)
    torch.manual_seed(plan.train.seed)
    net = build_model(model_spec)
    meta = {
        "name": plan.name,
        "section": "multiscale",
        "family": family,
        "dataset": dataset,
        "scale": plan.scale,
        "rf": plan.rf,
        "levels": plan.levels,
        "wavelet": m.wavelet,
        "normalization": m.normalization,
        **stats,
    }
    config = jobs.settings(jobs.training_job("train-scale", family), cfg, dataset)
    return train_prepared(net, objective, model_spec, plan.train, config, data, out_dir, meta=meta,
                          ckpt_dir=ckpt_dir, progress=progress)  # fmt: skip
