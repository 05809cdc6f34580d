"""The `study` command's library side: model files and prepared data in, tables out.

`run_study(name, cfg, ...)` loads what a study needs (models normalized as by the `nll` command,
the images the params ask for, the exact Gaussian model of a generated field) and returns its
outputs keyed by file suffix: "" for the main table (the command's --out), "_summary.csv" and
"_extremes.npy" for the companions written beside it (figures.py reads them by the same names).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from image_density import units
from image_density.config import Config, ConfigError
from image_density.data import Prepared, generalization_split, load_prepared
from image_density.models import GaussianEnergy
from image_density.noise import t_grid
from image_density.studies.content import affine_sweep, content_study
from image_density.studies.denoising import denoising_study
from image_density.studies.dimensionality import dimensionality_study
from image_density.studies.generalization import generalization_study
from image_density.studies.nll import StudyModel, is_paper_colour_data, load_study_model, nll_study
from image_density.studies.toy import mode_levels, toy_study

Outputs = dict[str, pd.DataFrame | np.ndarray]
STUDIES = ("nll", "denoising", "generalization", "dimensionality", "content", "toy")
NEEDS_MODELS = ("denoising", "generalization", "dimensionality", "content")


def exact_model(data: Prepared, name: str = "exact") -> StudyModel | None:
    """The true model of a generated Gaussian field (GaussianEnergy), None for other data."""
    if data.eigenvalues is None:
        return None
    mean = data.meta.get("source", {}).get("mean", 0.0)
    g = GaussianEnergy(torch.from_numpy(np.asarray(data.eigenvalues, dtype=np.float64)), mean)
    return StudyModel(name, g, g.log_z(), 0.0, "exact")


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


def run_study(
    name: str,
    cfg: Config,
    *,
    models: Sequence[Path] = (),
    table: Path | None = None,
    dataset: str | None = None,
    data_dir: Path | None = None,
) -> Outputs:
    """Run study `name` as the params `cfg` (section `studies:`) ask. models: model.pt files; table:
    the `nll` command's table (nll study); dataset / data_dir: evaluate on another dataset / folder
    than the models' (default <results>/data/<their dataset>). Randomness is seeded from cfg.seed."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r} (known: {', '.join(STUDIES)})")
    if name in NEEDS_MODELS and not models:
        raise ValueError(f"study {name} needs --models (model.pt files written by `train`)")
    missing = [str(p) for p in models if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"model files not found: {missing}")
    if name == "nll":
        return _nll(cfg, table, data_dir)
    if name == "toy":
        return _toy(cfg)
    loaded = _load_models(cfg, models)
    infos = [info for _, info in loaded]
    gen = torch.Generator().manual_seed(cfg.seed)
    if name == "generalization":
        return _generalization(cfg, loaded, data_dir, gen)
    dataset = _dataset(cfg, infos, dataset)
    data = _data(cfg, dataset, data_dir, infos)
    study_models = [m for m, _ in loaded]
    batch = cfg.studies.batch
    if name == "denoising":
        spec = cfg.studies.denoising
        _, x = _first(data, "test", spec.n_images)
        wiener = exact_model(data, "wiener")
        study_models += [wiener] if wiener else []
        table = denoising_study(study_models, x, spec.psnrs, dataset=dataset, draws=spec.draws,
                                generator=gen, batch_size=batch,
                                paper_data=is_paper_colour_data(data))  # fmt: skip
        return {"": table}
    if name == "dimensionality":
        spec = cfg.studies.dimensionality
        _, x = _first(data, "test", spec.n_images)
        ranker = next((m for m in study_models if m.has_log_p), None)
        log_p = (
            None if ranker is None else units.log_p_db_per_dim(ranker.log_p_nats(x, batch), data.d).numpy()
        )
        eig = None if data.eigenvalues is None else torch.from_numpy(np.asarray(data.eigenvalues))
        table = dimensionality_study(
            study_models, x, t_grid(spec.t_min, spec.t_max, spec.n_t), dataset=dataset, draws=spec.draws,
            log_p_x_db=log_p, n_extremes=spec.n_extremes, eigenvalues=eig, generator=gen, batch_size=batch,
        )  # fmt: skip
        return {"": table}
    # content
    spec = cfg.studies.content
    energies = [m for m in study_models if m.has_log_p]
    if len(energies) != 1 or len(study_models) != 1:
        raise ValueError(f"study content takes one energy model, got {[m.name for m in study_models]}")
    idx, x = _first(data, "test", spec.n_images)
    log_p = units.log_p_db_per_dim(energies[0].log_p_nats(x, batch), data.d).numpy()
    res = content_study(x, log_p, dataset=dataset, model=energies[0].name, n_extremes=spec.n_extremes,
                        wavelet_levels=spec.wavelet_levels, participation_levels=spec.participation_levels,
                        index=idx, network=energies[0].network)  # fmt: skip
    n_affine = min(spec.affine_images, len(x))
    affine = affine_sweep(lambda y: energies[0].log_p_nats(y, batch), x[:n_affine], spec.affine_a,
                          spec.affine_b, index=idx[:n_affine])  # fmt: skip
    affine = affine.assign(dataset=dataset, model=energies[0].name, network=energies[0].network)
    return {
        "": res.per_image,
        "_summary.csv": res.summary,
        "_extremes.npy": res.extremes,
        "_affine.csv": affine,
    }


def _nll(cfg: Config, table: Path | None, data_dir: Path | None) -> Outputs:
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


def _toy(cfg: Config) -> Outputs:
    """Fig. 1 on synthetic data: no models or data files; the per-mode levels as the summary."""
    spec = cfg.studies.toy.model_dump()
    spec.update(sigmas=tuple(spec["sigmas"]), weights=tuple(spec["weights"]), seed=cfg.seed)
    table = toy_study(**spec)
    return {"": table, "_summary.csv": mode_levels(table)}


def _generalization(cfg: Config, loaded, data_dir: Path | None, gen: torch.Generator) -> Outputs:
    g = cfg.generalization
    if g is None:
        raise ConfigError("study generalization needs a generalization: section in the params")
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
