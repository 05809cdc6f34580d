"""The `study` command's library side: model files and prepared data in, tables out.

`run_study(name, cfg, ...)` runs a study of the registry (studies/registry.py). Each loads what it
needs (models normalized as by the `nll` command, the images the params ask for, the exact Gaussian
model of a generated field) and returns its outputs keyed by file suffix: "" for the main table
(the command's --out), "_summary.csv" and "_extremes.npy" for the companions written beside it
(figures.py reads them by the same names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from image_density import units
from image_density.config import Config, ConfigError
from image_density.data import Prepared, generalization_split, load_prepared
from image_density.noise import t_grid
from image_density.studies.content import affine_sweep, content_study
from image_density.studies.denoising import denoising_study
from image_density.studies.dimensionality import dimensionality_study
from image_density.studies.generalization import generalization_study
from image_density.studies.nll import (
    StudyModel,
    exact_gaussian,
    is_paper_colour_data,
    load_study_model,
    nll_study,
)
from image_density.studies.registry import STUDIES
from image_density.studies.toy import mode_levels, toy_study

Outputs = dict[str, pd.DataFrame | np.ndarray]


@dataclass(frozen=True)
class Inputs:
    """What the `study` command hands a study: model.pt files, the `nll` command's table, the
    dataset and prepared folder to evaluate on (default: the models' own, under <results>/data)."""

    models: Sequence[Path] = ()
    table: Path | None = None
    dataset: str | None = None
    data_dir: Path | None = None


def exact_model(data: Prepared, name: str = "exact") -> StudyModel | None:
    """The true model of a generated Gaussian field (nll.exact_gaussian), None for other data."""
    g = exact_gaussian(data)
    return None if g is None else StudyModel(name, g, g.log_z(), 0.0, "exact")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_models(cfg: Config, paths: Sequence[Path]) -> list[tuple[StudyModel, dict]]:
    return [load_study_model(cfg, Path(p), batch_size=cfg.studies.batch, device=_device()) for p in paths]


def _dataset(cfg: Config, infos: list[dict], dataset: str | None) -> str:
    """The dataset to evaluate on: --dataset, else the one every model was trained on."""
    if dataset is None:
        trained = sorted({info.get("meta", {}).get("dataset") for info in infos})
        if len(trained) != 1:
            raise ValueError(f"the models were trained on different datasets {trained}: give --dataset")
        dataset = trained[0]
    if dataset not in cfg.datasets:
        raise ConfigError(
            f"--dataset {dataset!r} is not a key of datasets: (defined: {sorted(cfg.datasets)})"
        )
    return dataset


def _data(cfg: Config, dataset: str, data_dir: Path | None, infos: list[dict]) -> Prepared:
    data = load_prepared(data_dir or cfg.results / "data" / dataset)
    for info in infos:
        shape = tuple(info.get("meta", {}).get("shape", data.shape))
        if shape != data.shape:
            raise ValueError(
                f"model {info['meta'].get('name')!r} takes images {shape}, "
                f"dataset {dataset!r} has {data.shape}"
            )
    return data


def _first(data: Prepared, split: str, n: int | None) -> tuple[np.ndarray, torch.Tensor]:
    idx = np.arange(min(n or len(data.split(split)), len(data.split(split))))
    return idx, data.images(split, idx)


def run_study(name: str, cfg: Config, **inputs) -> Outputs:
    """Run study `name` (studies.registry) as the params `cfg` (section `studies:`) ask, on `inputs`
    (Inputs' fields). Randomness is seeded from cfg.seed."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r} (known: {', '.join(STUDIES)})")
    given = Inputs(**inputs)
    if STUDIES[name].needs == "models" and not given.models:
        raise ValueError(f"study {name} needs --models (model.pt files written by `train`)")
    missing = [str(p) for p in given.models if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"model files not found: {missing}")
    return STUDIES[name].load()(cfg, given)


@dataclass
class _Loaded:
    models: list[StudyModel]
    data: Prepared
    dataset: str
    generator: torch.Generator


def _load(cfg: Config, given: Inputs) -> _Loaded:
    """The models, the data they are evaluated on, and the study's seeded generator."""
    loaded = _load_models(cfg, given.models)
    infos = [info for _, info in loaded]
    dataset = _dataset(cfg, infos, given.dataset)
    data = _data(cfg, dataset, given.data_dir, infos)
    return _Loaded([m for m, _ in loaded], data, dataset, torch.Generator().manual_seed(cfg.seed))


def run_denoising(cfg: Config, given: Inputs) -> Outputs:
    run, spec, batch = _load(cfg, given), cfg.studies.denoising, cfg.studies.batch
    _, x = _first(run.data, "test", spec.n_images)
    wiener = exact_model(run.data, "wiener")
    table = denoising_study(run.models + ([wiener] if wiener else []), x, spec.psnrs, dataset=run.dataset,
                            draws=spec.draws, generator=run.generator, batch_size=batch,
                            paper_data=is_paper_colour_data(run.data))  # fmt: skip
    return {"": table}


def run_dimensionality(cfg: Config, given: Inputs) -> Outputs:
    run, spec, batch = _load(cfg, given), cfg.studies.dimensionality, cfg.studies.batch
    _, x = _first(run.data, "test", spec.n_images)
    ranker = next((m for m in run.models if m.has_log_p), None)
    log_p = (
        None if ranker is None else units.log_p_db_per_dim(ranker.log_p_nats(x, batch), run.data.d).numpy()
    )
    exact = exact_gaussian(run.data)
    eig = None if exact is None else exact.eigenvalues
    table = dimensionality_study(
        run.models, x, t_grid(spec.t_min, spec.t_max, spec.n_t), dataset=run.dataset, draws=spec.draws,
        log_p_x_db=log_p, n_extremes=spec.n_extremes, eigenvalues=eig, generator=run.generator,
        batch_size=batch,
    )  # fmt: skip
    return {"": table}


def run_content(cfg: Config, given: Inputs) -> Outputs:
    run, spec, batch = _load(cfg, given), cfg.studies.content, cfg.studies.batch
    energies = [m for m in run.models if m.has_log_p]
    if len(energies) != 1 or len(run.models) != 1:
        raise ValueError(f"study content takes one energy model, got {[m.name for m in run.models]}")
    energy = energies[0]
    idx, x = _first(run.data, "test", spec.n_images)
    log_p = units.log_p_db_per_dim(energy.log_p_nats(x, batch), run.data.d).numpy()
    res = content_study(x, log_p, dataset=run.dataset, model=energy.name, n_extremes=spec.n_extremes,
                        wavelet_levels=spec.wavelet_levels, participation_levels=spec.participation_levels,
                        index=idx, network=energy.network)  # fmt: skip
    n_affine = min(spec.affine_images, len(x))
    affine = affine_sweep(lambda y: energy.log_p_nats(y, batch), x[:n_affine], spec.affine_a,
                          spec.affine_b, index=idx[:n_affine])  # fmt: skip
    affine = affine.assign(dataset=run.dataset, model=energy.name, network=energy.network)
    return {
        "": res.per_image,
        "_summary.csv": res.summary,
        "_extremes.npy": res.extremes,
        "_affine.csv": affine,
    }


def run_nll(cfg: Config, given: Inputs) -> Outputs:
    table, data_dir = given.table, given.data_dir
    if table is None:
        raise ValueError(
            "study nll needs --table: the tidy table the `nll` command writes (results/tables/nll.csv)"
        )
    if not Path(table).is_file():
        raise FileNotFoundError(f"nll table not found: {table} (run `image-density nll` first)")
    learned = pd.read_csv(table)
    names = dict.fromkeys([*(cfg.energy.datasets if cfg.energy else []), *learned.get("dataset", [])])
    root = Path(data_dir) if data_dir else cfg.results / "data"
    datasets = {n: load_prepared(root / n) for n in names}
    spec = cfg.studies.nll
    return {"": nll_study(learned, datasets, baseline_images=spec.baseline_images,
                          batch_size=cfg.studies.batch, device=_device())}  # fmt: skip


def run_toy(cfg: Config, given: Inputs) -> Outputs:
    """Fig. 1 on synthetic data: no models or data files; the per-mode levels as the summary."""
    spec = cfg.studies.toy.model_dump()
    spec.update(sigmas=tuple(spec["sigmas"]), weights=tuple(spec["weights"]), seed=cfg.seed)
    table = toy_study(**spec)
    return {"": table, "_summary.csv": mode_levels(table)}


def run_generalization(cfg: Config, given: Inputs) -> Outputs:
    g, data_dir = cfg.generalization, given.data_dir
    if g is None:
        raise ConfigError("study generalization needs a generalization: section in the params")
    loaded = _load_models(cfg, given.models)
    gen = torch.Generator().manual_seed(cfg.seed)
    pairs: dict[int, dict[str, StudyModel]] = {}
    for m, info in loaded:
        meta = info.get("meta", {})
        if meta.get("subset") not in ("A", "B") or meta.get("dataset") != g.dataset:
            raise ValueError(f"model {m.name!r} is not a generalization model of {g.dataset!r} (A or B)")
        pairs.setdefault(int(meta["n"]), {})[meta["subset"]] = m
    unpaired = sorted(n for n, p in pairs.items() if len(p) != 2)
    if unpaired:
        raise ValueError(f"generalization: N = {unpaired} lack model A or B among --models")
    data = _data(cfg, g.dataset, data_dir, [info for _, info in loaded])
    spec = cfg.studies.generalization

    def images(n: int, which: str) -> tuple[np.ndarray, torch.Tensor]:
        if which == "test":
            return _first(data, "test", spec.n_images)
        idx = generalization_split(len(data.train), n, which)[: spec.n_images]
        return idx, data.images("train", idx)

    scatter, summary = generalization_study(
        {n: (p["A"], p["B"]) for n, p in pairs.items()}, images, dataset=g.dataset,
        t_min=g.train.t_min, t_max=g.train.t_max, loss_draws=spec.loss_draws, generator=gen,
        batch_size=cfg.studies.batch, paper_data=is_paper_colour_data(data),
    )  # fmt: skip
    return {"": scatter, "_summary.csv": summary}
