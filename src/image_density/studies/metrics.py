"""Headline numbers of a run, read off the study tables (results/metrics.json, `dvc metrics show`).

`headline_metrics(tables)` takes the tables by name (as the `metrics` command's options) and returns a
nested dict of plain floats, None where a number is not finite or not known. No torch: numbers are
only read, never recomputed. Rows the tables carry from the papers (source "paper") are left out,
except as the reference values named `paper_*`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

Metrics = dict[str, object]


def _num(value) -> float | None:
    """A JSON-safe number: None for NaN, NA, inf or a missing cell."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _ours(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["source"] != "paper"] if "source" in table.columns else table


def nll_metrics(table: pd.DataFrame) -> Metrics:
    """Per dataset: NLL (bits/dim) of every model and split, the exact NLL where known and the
    learned energy's excess over it on test images (the estimator's error), the paper's value."""
    out: Metrics = {}
    for dataset, rows in _ours(table).groupby("dataset", sort=False):
        m = {f"{r.model}_{r.split}_bits_per_dim": _num(r.nll_bits_per_dim) for r in rows.itertuples()}
        exact = _num(rows["exact_bits_per_dim"].iloc[0]) if "exact_bits_per_dim" in rows else None
        if exact is not None:
            m["exact_bits_per_dim"] = exact
            energy = m.get("energy_test_bits_per_dim")
            m["energy_test_minus_exact_bits_per_dim"] = None if energy is None else energy - exact
        if "paper_bits_per_dim" in rows:
            for r in rows[rows["paper_bits_per_dim"].notna()].itertuples():
                m[f"paper_{r.model}_{r.split}_bits_per_dim"] = _num(r.paper_bits_per_dim)
        out[str(dataset)] = m
    return out


def denoising_metrics(table: pd.DataFrame) -> Metrics:
    """Per dataset and model: the PSNR gain (output - input, dB) averaged over the input PSNRs; and
    the energy model's output PSNR minus the plain denoiser's, averaged the same way (paper 1's parity
    claim: the energy's gradient denoises as well as a network trained to denoise)."""
    out: Metrics = {}
    for dataset, rows in _ours(table).groupby("dataset", sort=False):
        m: Metrics = {
            f"{model}_mean_gain_db": _num((r["psnr_out"] - r["psnr_in"]).mean())
            for model, r in rows.groupby("model", sort=False)
        }
        by = rows.pivot_table(index="psnr_in", columns="model", values="psnr_out")
        if {"energy", "denoiser"} <= set(by.columns):
            m["energy_minus_denoiser_db"] = _num((by["energy"] - by["denoiser"]).mean())
        out[str(dataset)] = m
    return out


def generalization_metrics(summary: pd.DataFrame) -> Metrics:
    """At the smallest and largest N: mean |log p_A - log p_B| (dB/dim) and Pearson r on the models'
    training images (A's and B's, averaged) and on test images (memorization at small N,
    generalization at large N, paper 1's Fig. 2)."""
    ours = _ours(summary)
    out: Metrics = {}
    ns = sorted(ours["n"].unique())
    for n in dict.fromkeys([ns[0], ns[-1]] if ns else []):
        rows = ours[ours["n"] == n]
        train, test = rows[rows["images"].isin(["A", "B"])], rows[rows["images"] == "test"]
        out[f"n{int(n)}"] = {
            "train_mean_abs_delta_db": _num(train["mean_abs_delta_db"].mean()),
            "train_pearson_r": _num(train["pearson_r"].mean()),
            "test_mean_abs_delta_db": _num(test["mean_abs_delta_db"].mean()),
            "test_pearson_r": _num(test["pearson_r"].mean()),
        }
    return out


def content_metrics(summary: pd.DataFrame) -> Metrics:
    """Per dataset: the distribution of log p (dB/dim) over test images and its Gumbel fit, and the
    rank correlations of log p with the participation ratio (the release's sparsity, paper 1's
    Fig. 4) and this project's pixel std and detail l1/l2."""
    cols = ["mean", "median", "std", "gumbel_loc", "gumbel_scale", "spearman_participation_ratio",
            "spearman_pixel_std", "spearman_detail_l1_l2"]  # fmt: skip
    return {str(r["dataset"]): {c: _num(r[c]) for c in cols if c in r} for _, r in _ours(summary).iterrows()}


def toy_metrics(levels: pd.DataFrame) -> Metrics:
    """Per learned method: the error (bits/dim) of the gap between the last and the first mode's level
    (single score matching misplaces it, dual gets it; paper 1's Fig. 1), and the mean correlation of
    each mode's shape with the closed form."""
    out: Metrics = {}
    for method, rows in levels[levels["method"] != "closed_form"].groupby("method", sort=False):
        rows = rows.sort_values("sigma")
        out[str(method)] = {
            "gap_error_bits_per_dim": _num(rows["relative_level_error"].iloc[-1]),
            "shape_corr": _num(rows["shape_corr"].mean()),
        }
    return out


def multiscale_denoising_metrics(table: pd.DataFrame) -> Metrics:
    """Per dataset: output PSNR (dB) of every model (multi-scale and flat per RF, low-pass only) at the
    largest noise sigma, where the receptive field matters most (paper 2's flat RF 5 vs RF 43 on
    CelebA-160: 21.0 vs 24.4 dB at sigma = 100)."""
    out: Metrics = {}
    for dataset, rows in _ours(table).groupby("dataset", sort=False):
        sigma = rows["sigma"].max()
        top = rows[rows["sigma"] == sigma]
        out[str(dataset)] = {
            "sigma": _num(sigma),
            **{_net(r.model, r.rf): _num(r.psnr_out) for r in top.itertuples()},
        }
    return out


def _net(model: str, rf) -> str:
    return str(model) if pd.isna(rf) else f"{model}-rf{int(rf)}"


def multiscale_nll_metrics(table: pd.DataFrame) -> Metrics:
    """Per dataset: the multi-scale NLL (bits/dim) per RF, and the exact NLL where known."""
    out: Metrics = {}
    for dataset, rows in table.groupby("dataset", sort=False):
        m: Metrics = {f"rf{int(r.rf)}_bits_per_dim": _num(r.nll_bits_per_dim) for r in rows.itertuples()}
        if "exact_bits_per_dim" in rows and _num(rows["exact_bits_per_dim"].iloc[0]) is not None:
            m["exact_bits_per_dim"] = _num(rows["exact_bits_per_dim"].iloc[0])
        out[str(dataset)] = m
    return out


def superres_metrics(table: pd.DataFrame) -> Metrics:
    """Per dataset and RF: PSNR (dB) of a super-resolved sample and of the samples' mean."""
    return {
        str(dataset): {
            f"rf{int(r.rf)}": {"psnr_samples": _num(r.psnr_samples), "psnr_mean": _num(r.psnr_mean)}
            for r in rows.itertuples()
        }
        for dataset, rows in table.groupby("dataset", sort=False)
    }


SECTIONS = {
    "nll": nll_metrics,
    "denoising": denoising_metrics,
    "generalization": generalization_metrics,
    "content": content_metrics,
    "toy": toy_metrics,
    "multiscale_denoising": multiscale_denoising_metrics,
    "multiscale_nll": multiscale_nll_metrics,
    "superres": superres_metrics,
}


def headline_metrics(tables: Mapping[str, pd.DataFrame]) -> Metrics:
    """{section: numbers} for every table given, keyed as SECTIONS (an unknown name is an error)."""
    unknown = sorted(set(tables) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown tables {unknown} (known: {sorted(SECTIONS)})")
    return {name: fn(tables[name]) for name, fn in SECTIONS.items() if name in tables}
