"""Paper 1's studies, one entry each: what a study needs, what it writes, its figure and its metrics.

The `study` command's choices and help, its dispatch (studies/run.py), and the workflow's tracking
catalogue (workflow/rules/catalogue.smk) read this table; the params a study job reads are its
`jobs.JOBS["study_<name>"]`. Adding a study: its module with a `run(cfg, inputs) -> Outputs`
function, an entry here, its job in jobs.JOBS, its rule in studies.smk and its figure in figures.py.
Light on purpose (no torch): the CLI's --help and the workflow's parse import it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Study:
    help: str
    runner: str  # "module:function" taking (cfg, studies.run.Inputs) -> Outputs
    needs: Literal["models", "table", "nothing"] = "models"
    per_dataset: bool = False  # one table (and figure) per dataset of energy.datasets: NAME_<dataset>
    table: str | None = None  # the main table's stem below <results>/tables (default: the name)
    companions: tuple[str, ...] = ()  # written beside the main table: <stem><suffix>
    figure: bool = True  # a figure of the same name (figures.FIGURES), captioned by report/<name>.rst
    metrics: bool = True  # a section of metrics.json of the same name (per dataset if per_dataset)
    section: Literal["energy", "generalization", None] = "energy"  # the models' params section

    def load(self):
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)


_RUN = "image_density.studies.run"
STUDIES: dict[str, Study] = {
    "nll": Study(
        "the `nll` table + exact NLL, best-Gaussian and uniform baselines, paper values",
        f"{_RUN}:run_nll",
        needs="table",
        table="nll_study",
    ),
    "denoising": Study("output vs input PSNR (Table 1)", f"{_RUN}:run_denoising"),
    "generalization": Study(
        "log p_A vs log p_B per N",
        f"{_RUN}:run_generalization",
        companions=("_summary.csv",),
        section="generalization",
    ),
    "dimensionality": Study(
        "d_eff and E log p_t vs t", f"{_RUN}:run_dimensionality", per_dataset=True, metrics=False
    ),
    "content": Study(
        "log p vs content of test images, and log p(a x + b)",
        f"{_RUN}:run_content",
        per_dataset=True,
        companions=("_summary.csv", "_extremes.npy", "_affine.csv"),
    ),
    "toy": Study(
        "single vs dual score matching on a Gaussian scale mixture, no models or data (the summary: "
        "the per-mode levels)",
        f"{_RUN}:run_toy",
        needs="nothing",
        companions=("_summary.csv",),
        section=None,
    ),
}


def table_stem(name: str, dataset: str | None = None) -> str:
    """The main table's file stem of study `name` (of `dataset` for a per-dataset study)."""
    stem = STUDIES[name].table or name
    return f"{stem}_{dataset}" if STUDIES[name].per_dataset else stem


def outputs(name: str, dataset: str | None = None) -> list[str]:
    """File names below <results>/tables the study writes: main table first, then its companions."""
    stem = table_stem(name, dataset)
    return [f"{stem}.csv", *(f"{stem}{suffix}" for suffix in STUDIES[name].companions)]
