"""Figures of the studies, drawn from their tables only (results/tables/*.csv and the .npy image
arrays the content study writes): no torch here, so a figure never recomputes a number.

One style for every figure (`STYLE`, one colour per model role), axis labels with units, and the
paper's number beside ours wherever the table carries one (rows with source "paper"; red stars or
ranges). `make_figure(name, ...)` reads, draws and writes PNG + PDF.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from scipy import stats

from image_density import atomic

STYLE = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("paper", font_scale=1.1),
    "axes.titlesize": "medium",
    "legend.fontsize": "small",
    "legend.frameon": False,
    "axes.formatter.useoffset": False,  # plain tick values, even for a narrow range of log p
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "figure.constrained_layout.use": True,
}
_ROLE_COLOURS = {
    "energy": "#1f77b4",
    "denoiser": "#ff7f0e",
    "gaussian": "#2ca02c",
    "uniform": "#7f7f7f",
    "dual": "#1f77b4",
    "single": "#ff7f0e",
}
EXACT_COLOUR, PAPER_COLOUR = "black", "#d62728"
PAPER_MARKER = dict(marker="*", s=140, color=PAPER_COLOUR, edgecolor="white", linewidth=0.5, zorder=5)
IMAGE_SET_LABELS = {"A": "A's training images", "B": "B's training images", "test": "test images"}
LOG_P = "log p (dB/dim)"
T_LABEL = "noise level t (variance per pixel)"


def colour(model: str, others: list[str] | None = None) -> str:
    """One colour per model role everywhere (energy, denoiser, baselines); exact models black."""
    if model in ("exact", "wiener", "closed_form"):
        return EXACT_COLOUR
    role = model.split("-")[0]  # energy-A100 -> energy
    if role in _ROLE_COLOURS:
        return _ROLE_COLOURS[role]
    spare = sns.color_palette("tab10")[4:]
    i = others.index(model) if others and model in others else zlib.crc32(model.encode())
    return to_hex(spare[i % len(spare)])


def _require(table: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"the {what} table lacks columns {missing} (has {list(table.columns)})")


def _split(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ours, exact, paper) rows; a table without a source column is all ours."""
    if "source" not in table.columns:
        return table, table.iloc[:0], table.iloc[:0]
    src = table["source"]
    return table[~src.isin(["exact", "paper"])], table[src == "exact"], table[src == "paper"]


# ------------------------------------------------------------------------------------------- NLL


def nll_figure(table: pd.DataFrame) -> Figure:
    """Bars: NLL (bits/dim) per dataset and model, one panel per split; black line: the exact NLL
    (Gaussian fields); star: the paper's value (ImageNet64 energy models)."""
    _require(table, ["dataset", "model", "split", "nll_bits_per_dim"], "nll")
    splits = [s for s in ("train", "test") if s in set(table["split"])]
    datasets = list(dict.fromkeys(table["dataset"]))
    models = list(dict.fromkeys(table["model"]))
    fig = Figure(figsize=(max(4.5, 1.6 * len(datasets) * len(splits)), 3.6))
    axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
    width = 0.8 / len(models)
    for ax, split in zip(axes, splits, strict=True):
        rows = table[table["split"] == split]
        for j, model in enumerate(models):
            r = rows[rows["model"] == model].set_index("dataset").reindex(datasets)
            x = np.arange(len(datasets)) - 0.4 + (j + 0.5) * width
            bars = ax.bar(x, r["nll_bits_per_dim"], width, color=colour(model, models), label=model)
            ax.bar_label(bars, fmt="%.2f", fontsize="x-small", padding=1)
            if "paper_bits_per_dim" in r and r["paper_bits_per_dim"].notna().any():
                ax.scatter(x, r["paper_bits_per_dim"], label="paper (ImageNet64)", **PAPER_MARKER)
        if "exact_bits_per_dim" in rows:
            exact = rows.groupby("dataset", sort=False)["exact_bits_per_dim"].first().reindex(datasets)
            for i, v in enumerate(exact):
                if pd.notna(v):
                    ax.hlines(v, i - 0.45, i + 0.45, colors=EXACT_COLOUR, linestyles="--", label="exact")
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_title(f"{split} images")
        ax.set_xlabel("dataset")
    axes[0].set_ylabel("NLL (bits/dim)")
    _legend(axes[-1])
    return fig


def _legend(ax, **kwargs) -> None:
    """A legend without repeated labels."""
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        ax.legend(unique.values(), unique.keys(), **kwargs)


# ------------------------------------------------------------------------------------- denoising


def denoising_figure(table: pd.DataFrame) -> Figure:
    """Per dataset (one row of panels): output PSNR (of the mean MSE) and PSNR gain (output - input)
    vs input PSNR per model, and the parity panel: each model's output PSNR minus the plain
    denoiser's. Stars, on the panels of a colour ImageNet64 dataset only (the paper's rows carry its
    name): paper 1's Table 1, its energy net, and its energy net minus its score net."""
    _require(table, ["dataset", "model", "psnr_in", "psnr_out"], "denoising")
    ours, exact, paper = _split(table)
    datasets = list(dict.fromkeys(pd.concat([ours, exact])["dataset"]))
    fig = Figure(figsize=(13, 3.6 * len(datasets)))
    axes = fig.subplots(len(datasets), 3, squeeze=False)
    lo, hi = table["psnr_in"].min(), table["psnr_in"].max()
    for (ax_out, ax_gain, ax_par), dataset in zip(axes, datasets, strict=True):
        mine = paper[paper["dataset"] == dataset]
        p_energy = mine[mine["model"] == "energy"].set_index("psnr_in")["psnr_out"]
        p_den = mine[mine["model"] == "denoiser"].set_index("psnr_in")["psnr_out"]
        ax_out.plot([lo, hi], [lo, hi], color="0.6", linestyle=":", label="output = input")
        ax_gain.axhline(0, color="0.6", linestyle=":")
        ax_par.axhline(0, color="0.6", linestyle=":")
        rows = pd.concat([exact[exact["dataset"] == dataset], ours[ours["dataset"] == dataset]])
        names = list(dict.fromkeys(rows["model"]))
        reference = rows[rows["model"] == "denoiser"].set_index("psnr_in")["psnr_out"]
        for model, r in rows.groupby("model", sort=False):
            r = r.sort_values("psnr_in")
            style = _denoiser_style(model, (r["source"] == "exact").all(), names)
            ax_out.plot(r["psnr_in"], r["psnr_out"], **style)
            ax_gain.plot(r["psnr_in"], r["psnr_out"] - r["psnr_in"], **style)
            if len(reference) and model != "denoiser":
                diff = r.set_index("psnr_in")["psnr_out"] - reference
                ax_par.plot(diff.index, diff.to_numpy(), **style)
        if len(p_energy):
            ax_out.scatter(
                p_energy.index, p_energy, label="paper: energy net (colour ImageNet64)", **PAPER_MARKER
            )
            ax_gain.scatter(p_energy.index, p_energy - p_energy.index, **PAPER_MARKER)
        if len(p_energy) and len(p_den):
            ax_par.scatter(
                p_energy.index, p_energy - p_den, label="paper: energy - score net", **PAPER_MARKER
            )
        ax_out.set(xlabel="input PSNR (dB)", ylabel="output PSNR (dB)", title=f"{dataset}: output PSNR")
        ax_gain.set(xlabel="input PSNR (dB)", ylabel="PSNR gain, output - input (dB)",
                    title=f"{dataset}: denoising gain")  # fmt: skip
        ax_par.set(xlabel="input PSNR (dB)", ylabel="output PSNR - plain denoiser's (dB)",
                   title=f"{dataset}: parity with the plain denoiser")  # fmt: skip
        _legend(ax_out, loc="upper left")
        _legend(ax_par, loc="best")
    return fig


def _denoiser_style(model: str, exact: bool, names: list[str]) -> dict:
    """Exact (Wiener) curves thin, dashed, under the others; the plain denoiser hollow squares."""
    if exact:
        return dict(color=EXACT_COLOUR, linestyle="--", linewidth=1.0, label=f"{model} (exact)", zorder=1)
    hollow = model.split("-")[0] == "denoiser"
    return dict(color=colour(model, names), marker="s" if hollow else "o", markersize=5 if hollow else 4,
                markerfacecolor="none" if hollow else None, label=model, zorder=2)  # fmt: skip


# ------------------------------------------------------------------------------- generalization


def generalization_figure(scatter: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    """Top: log p_A vs log p_B (dB/dim) per N on A's, B's training images and test images (on the
    diagonal: both models agree). Bottom, vs N: mean |log p_A - log p_B|, Pearson r, and the dual
    score loss on training vs test images; red: the paper's values and ranges (colour ImageNet64,
    present only when the data is)."""
    _require(scatter, ["n", "images", "log_p_A_db", "log_p_B_db"], "generalization scatter")
    _require(summary, ["n", "images", "mean_abs_delta_db", "pearson_r", "loss_A", "loss_B"],
             "generalization summary")  # fmt: skip
    ns = sorted(set(scatter["n"]))
    fig = Figure(figsize=(max(9, 2.6 * len(ns)), 6.4))
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.0])
    axes = top.subplots(1, len(ns), squeeze=False)[0]
    palette = {k: c for k, c in zip(IMAGE_SET_LABELS, sns.color_palette("colorblind"), strict=False)}
    for ax, n in zip(axes, ns, strict=True):
        s = scatter[scatter["n"] == n]
        # test images first, so that the (fewer) training images are drawn on top
        for which, r in sorted(s.groupby("images", sort=False), key=lambda g: g[0] != "test"):
            ax.scatter(r["log_p_A_db"], r["log_p_B_db"], s=6, alpha=0.6, color=palette.get(which),
                       label=IMAGE_SET_LABELS.get(which, which), linewidths=0)  # fmt: skip
        lo = np.nanmin(s[["log_p_A_db", "log_p_B_db"]].to_numpy())
        hi = np.nanmax(s[["log_p_A_db", "log_p_B_db"]].to_numpy())
        ax.plot([lo, hi], [lo, hi], color="0.4", linestyle=":", linewidth=1)
        ax.set(title=f"N = {n:,}", xlabel=f"model A: {LOG_P}", aspect="equal")
    axes[0].set_ylabel(f"model B: {LOG_P}")
    _legend(axes[0], loc="upper left", markerscale=2)

    ours, _, paper = _split(summary)
    ax_d, ax_r, ax_l = bottom.subplots(1, 3)
    for which, r in ours.groupby("images", sort=False):
        r = r.sort_values("n")
        kw = dict(color=palette.get(which), marker="o", label=IMAGE_SET_LABELS.get(which, which))
        ax_d.plot(r["n"], r["mean_abs_delta_db"], **kw)
        ax_r.plot(r["n"], r["pearson_r"], **kw)
    _paper_points(ax_d, paper, "mean_abs_delta_db")
    _paper_points(ax_r, paper, "pearson_r")
    ax_d.set(xscale="log", yscale="log", xlabel="training images N",
             ylabel="mean |log p_A - log p_B| (dB/dim)")  # fmt: skip
    ax_r.set(xscale="log", xlabel="training images N", ylabel="Pearson r of log p_A, log p_B")
    by = ours.set_index(["n", "images"])
    loss = pd.DataFrame({
        "train": [(by.loc[(n, "A"), "loss_A"] + by.loc[(n, "B"), "loss_B"]) / 2 for n in ns],
        "test": [(by.loc[(n, "test"), "loss_A"] + by.loc[(n, "test"), "loss_B"]) / 2 for n in ns],
    }, index=ns)  # fmt: skip
    ax_l.plot(loss.index, loss["train"], marker="o", color=palette["A"], label="training images")
    ax_l.plot(loss.index, loss["test"], marker="o", color=palette["test"], label="test images")
    ax_l.set(xscale="log", xlabel="training images N", ylabel="dual score loss (mean over t)")
    handles, labels = ax_d.get_legend_handles_labels()
    bottom.legend(handles, labels, loc="outside right upper")  # the image sets' colours, the paper
    _legend(ax_l, loc="best")
    return fig


def _paper_points(ax, paper: pd.DataFrame, column: str) -> None:
    """The paper's exact values as stars, its ranges as red bars, labelled once."""
    if column in paper:
        v = paper[paper[column].notna()]
        if len(v):
            ax.scatter(v["n"], v[column], label="paper (colour ImageNet64)", **PAPER_MARKER)
    lo, hi = f"{column}_lo", f"{column}_hi"
    if lo in paper and hi in paper:
        rng = paper[paper[lo].notna()]
        if len(rng):
            ax.vlines(
                rng["n"],
                rng[lo],
                rng[hi],
                colors=PAPER_COLOUR,
                linewidth=4,
                alpha=0.7,
                label="paper range (colour ImageNet64)",
            )


# ------------------------------------------------------------------------------- dimensionality


def dimensionality_figure(table: pd.DataFrame) -> Figure:
    """Left: d_eff / d vs t for the test mean (thick) and the most / least probable test images
    (thin, solid / dotted), exact Gaussian curve dashed, paper points as stars. Right: E log p_t
    (dB/dim) of noisy images vs t, same lines."""
    _require(table, ["model", "images", "t", "d_eff_fraction", "log_p_t_db"], "dimensionality")
    ours, exact, paper = _split(table)
    fig = Figure(figsize=(10, 4))
    ax_d, ax_p = fig.subplots(1, 2)
    names = list(dict.fromkeys(ours["model"]))
    for (model, images), r in ours.groupby(["model", "images"], sort=False):
        r = r.sort_values("t")
        mean = images == "test"
        group = "test mean" if mean else f"{images.split('_')[0]} probable"
        kw = dict(color=colour(model, names), linewidth=2.2 if mean else 0.9, alpha=1.0 if mean else 0.8,
                  zorder=3 if mean else 2, linestyle="-" if mean or images.startswith("most") else ":",
                  label=f"{model}: {group}")  # fmt: skip
        ax_d.plot(r["t"], r["d_eff_fraction"], **kw)
        if r["log_p_t_db"].notna().any():
            ax_p.plot(r["t"], r["log_p_t_db"], **kw)
    for _, r in exact.groupby("dataset", sort=False):
        r = r.sort_values("t")
        ax_d.plot(r["t"], r["d_eff_fraction"], color=EXACT_COLOUR, linestyle="--", label="exact (Gaussian)")
        ax_p.plot(r["t"], r["log_p_t_db"], color=EXACT_COLOUR, linestyle="--", label="exact (Gaussian)")
    if len(paper):
        ax_d.scatter(paper["t"], paper["d_eff_fraction"], label="paper (ImageNet64 gray)", **PAPER_MARKER)
    ax_d.set(xscale="log", yscale="log", xlabel=T_LABEL, ylabel="effective dimensionality d_eff / d",
             title="effective dimensionality")  # fmt: skip
    ax_p.set(xscale="log", xlabel=T_LABEL, ylabel="E log p_t(x + sqrt(t) z) (dB/dim)",
             title="log-probability of noisy images")  # fmt: skip
    _legend(ax_d, loc="lower left")
    _legend(ax_p, loc="lower left")
    return fig


# ------------------------------------------------------------------------------------- content


def content_figure(
    per_image: pd.DataFrame,
    summary: pd.DataFrame,
    images: np.ndarray | None = None,
    affine: pd.DataFrame | None = None,
) -> Figure:
    """Top: histogram of log p (dB/dim) over test images with the fitted Gumbel density (the paper's
    fit in the legend); log p vs the participation ratio of the Haar coefficients (the release's
    sparsity; extremes marked); log p(a x + b) vs the gain a, one line per offset b (mean over the swept
    images, the release's contrast figure), or, without the sweep, log p vs pixel std (ours). Bottom
    (with images): the most probable (top row) and least probable (bottom row) test images."""
    _require(per_image, ["log_p_db", "rank", "participation_ratio", "extreme"], "content per-image")
    _require(summary, ["source", "gumbel_loc", "gumbel_scale"], "content summary")
    ours, _, paper = _split(summary)
    k = 0 if images is None else len(images) // 2
    fig = Figure(figsize=(11, 3.6 + (2.6 if k else 0)))
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.6, 2.6]) if k else (fig, None)
    ax_h, ax_s, ax_c = top.subplots(1, 3)
    lp = per_image["log_p_db"].to_numpy(float)
    sns.histplot(lp, stat="density", ax=ax_h, color="0.7", edgecolor="white", label="test images")
    grid = np.linspace(lp.min(), lp.max(), 200)
    o = ours.iloc[0]
    if np.isfinite(o["gumbel_scale"]):
        ax_h.plot(grid, stats.gumbel_r.pdf(grid, o["gumbel_loc"], o["gumbel_scale"]), color=colour("energy"),
                  label=f"Gumbel fit: loc {o['gumbel_loc']:.4g}, scale {o['gumbel_scale']:.3g}")  # fmt: skip
    if len(paper):
        p = paper.iloc[0]
        ax_h.plot([], [], " ", label=f"paper (ImageNet64 gray): loc {p['gumbel_loc']:.2f}, "
                  f"scale {p['gumbel_scale']:.2f}")  # fmt: skip
    ax_h.set(xlabel=LOG_P, ylabel="density (per dB/dim)", title="distribution of log p")
    ax_h.xaxis.set_major_locator(MaxNLocator(4))
    _legend(ax_h, loc="upper right", fontsize="x-small")
    ext = {"most": ("most probable", "#17becf"), "least": ("least probable", "#9467bd")}
    measures = {"participation_ratio": "Haar participation ratio (low = sparse)",
                "pixel_std": "ours: pixel std (intensity, [0, 1] scale)"}  # fmt: skip
    scatters = [(ax_s, "participation_ratio")] + ([] if affine is not None else [(ax_c, "pixel_std")])
    for ax, col in scatters:
        ax.scatter(per_image[col], lp, s=6, alpha=0.5, color="0.4", linewidths=0, label="test images")
        for key, (label, c) in ext.items():
            r = per_image[per_image["extreme"] == key]
            ax.scatter(r[col], r["log_p_db"], s=18, color=c, label=label)
        rho = o.get(f"spearman_{col}", np.nan)
        ax.set(xlabel=measures[col], ylabel=LOG_P, title=f"log p vs sparsity (Spearman {rho:.2f})"
               if col == "participation_ratio" else f"log p vs pixel std (Spearman {rho:.2f})")  # fmt: skip
    _legend(ax_s, fontsize="x-small")
    if affine is not None:
        _require(affine, ["a", "b", "log_p_db"], "content affine sweep")
        mean = affine.groupby(["b", "a"], sort=True)["log_p_db"].agg(["mean", "std"]).reset_index()
        for (b, r), c in zip(mean.groupby("b"), sns.color_palette("crest", mean["b"].nunique()), strict=True):
            ax_c.plot(r["a"], r["mean"], marker="o", color=c, label=f"b = {b:g}")
            ax_c.fill_between(r["a"], r["mean"] - r["std"], r["mean"] + r["std"], color=c, alpha=0.15)
        gains = sorted(mean["a"].unique())
        ax_c.set(xscale="log", xlabel="gain a", ylabel="log p(a x + b) (dB/dim)",
                 title=f"contrast: log p(a x + b), {affine['index'].nunique()} images")  # fmt: skip
        ax_c.set_xticks(gains, [f"{a:g}" for a in gains])
        ax_c.xaxis.set_minor_formatter(NullFormatter())
        _legend(ax_c, fontsize="x-small")
    if k:
        _image_grid(bottom, images, per_image, k)
    return fig


def _image_grid(subfig, images: np.ndarray, per_image: pd.DataFrame, k: int) -> None:
    """Row 1: the k most probable images (most first); row 2: the k least probable (least first)."""
    n = len(per_image)
    by_rank = per_image.set_index("rank")["log_p_db"]
    axes = subfig.subplots(2, k, squeeze=False)
    lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
    for row, (ranks, label) in enumerate((
        (range(1, k + 1), "most probable"), (range(n, n - k, -1), "least probable")
    )):  # fmt: skip
        for ax, rank, img in zip(axes[row], ranks, images[row * k : (row + 1) * k], strict=True):
            img = np.transpose(img, (1, 2, 0))
            rgb = img.shape[-1] == 3
            ax.imshow(np.clip(img, 0, 1) if rgb else img[..., 0], cmap=None if rgb else "gray",
                      vmin=lo, vmax=hi, interpolation="nearest")  # fmt: skip
            ax.set_title(f"{by_rank.get(rank, np.nan):.4g} dB/dim", fontsize="x-small")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        axes[row][0].set_ylabel(label, fontsize="small")


# ------------------------------------------------------------------------------------------ toy


def toy_figure(table: pd.DataFrame) -> Figure:
    """Paper 1, Fig. 1: -log p (bits/dim) of samples of a two-mode Gaussian scale mixture vs their
    squared norm per dimension r, for the closed form and the energies learned by single and dual
    score matching; right: each method's mean error per mode (single SM misplaces the modes' levels)."""
    _require(table, ["method", "sigma", "r", "nll_bits_per_dim"], "toy")
    fig = Figure(figsize=(10, 3.8))
    ax_s, ax_b = fig.subplots(1, 2)
    methods = list(dict.fromkeys(table["method"]))
    for method, r in table.groupby("method", sort=False):
        closed = method == "closed_form"
        ax_s.scatter(r["r"], r["nll_bits_per_dim"], s=14 if closed else 8, color=colour(method, methods),
                     marker="o" if closed else "x", alpha=0.9, label=method.replace("_", " "),
                     linewidths=None if closed else 0.8, facecolors="none" if closed else None)  # fmt: skip
    ax_s.set(xscale="log", xlabel="squared norm per dimension r = |x|^2 / d",
             ylabel="-log p(x) (bits/dim)", title="negative log-probability of samples")  # fmt: skip
    _legend(ax_s)
    levels = table.pivot_table(index="method", columns="sigma", values="nll_bits_per_dim", aggfunc="mean")
    err = (levels - levels.loc["closed_form"]).drop(index="closed_form")
    sigmas = list(err.columns)
    width = 0.8 / len(err)
    for j, (method, row) in enumerate(err.iterrows()):
        x = np.arange(len(sigmas)) - 0.4 + (j + 0.5) * width
        bars = ax_b.bar(x, row.to_numpy(), width, color=colour(method, methods), label=method)
        ax_b.bar_label(bars, fmt="%.3f", fontsize="x-small", padding=1)
    ax_b.axhline(0, color=EXACT_COLOUR, linewidth=0.8)
    ax_b.set_xticks(range(len(sigmas)), [f"mode sigma = {s:g}" for s in sigmas])
    gap = err.iloc[:, -1] - err.iloc[:, 0]  # error of the level of the last mode relative to the first
    shown = ", ".join(f"{m} {v:+.3f}" for m, v in gap.items())
    ax_b.set(ylabel="mean NLL - true NLL (bits/dim)",
             title=f"error of each mode's level\n(error of the gap between modes: {shown})")  # fmt: skip
    _legend(ax_b)
    return fig


# ------------------------------------------------------------------------------ paper 2: RF ablation


def _ms_split(table: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """(multi-scale, flat, low-pass only, paper) rows of the `denoise` table; ours only in the first 3."""
    _require(table, ["dataset", "model", "rf", "sigma", "psnr_in", "psnr_out"], "multiscale denoising")
    ours, _, paper = _split(table)
    return (*(ours[ours["model"] == m] for m in ("multiscale", "flat", "lowpass-only")), paper)


def _paper_flat(ax, paper: pd.DataFrame, x: str, rfs=None, sigma_colour=None) -> None:
    """Paper 2's flat denoisers (CelebA-160) as stars at (x, output PSNR); only RFs in `rfs` if given;
    with sigma_colour (sigma -> colour), each sigma's stars in its colour, edged in the paper's red."""
    rows = paper if rfs is None else paper[paper["rf"].isin(rfs)]
    label = "paper: flat (CelebA-160)"
    if sigma_colour is None:
        if len(rows):
            ax.scatter(rows[x].astype(float), rows["psnr_out"], label=label, **PAPER_MARKER)
        return
    for sigma, r in rows[rows["sigma"].isin(sigma_colour)].groupby("sigma"):
        style = PAPER_MARKER | {"color": sigma_colour[sigma], "edgecolor": PAPER_COLOUR, "linewidth": 1.0}
        ax.scatter(r[x].astype(float), r["psnr_out"], label=label, **style)


def _sequential(values) -> dict:
    """One colour per value of an ordered setting (RF, sigma), light to dark."""
    values = sorted(set(values))
    return dict(zip(values, map(to_hex, sns.color_palette("crest", max(len(values), 2))), strict=False))


def multiscale_denoising_figure(table: pd.DataFrame) -> Figure:
    """Paper 2's denoising comparison, per dataset: output PSNR vs noise sigma of the multi-scale
    denoiser (solid) and the flat one (dashed) per receptive field, of the low-pass-only reconstruction
    (details set to zero, dotted) and of the noisy input; right: multi-scale minus flat per RF. Stars:
    paper 2's flat denoisers of the same RFs (CelebA-160, 160x160: larger images than the demo's)."""
    ms, flat, low, paper = _ms_split(table)
    datasets = list(dict.fromkeys(pd.concat([ms, flat, low])["dataset"]))
    rf_colour = _sequential(pd.concat([ms["rf"], flat["rf"]]).dropna().astype(int))
    fig = Figure(figsize=(10, 3.8 * len(datasets)))
    for (ax, ax_d), dataset in zip(fig.subplots(len(datasets), 2, squeeze=False), datasets, strict=True):
        rows = table[table["dataset"] == dataset].sort_values("sigma")
        inp = rows.groupby("sigma")["psnr_in"].first()
        ax.plot(inp.index, inp.to_numpy(), color="0.6", linestyle=":", label="noisy input")
        for kind, frame, style in (("multi-scale", ms, "-"), ("flat", flat, "--")):
            for rf, r in frame[frame["dataset"] == dataset].sort_values("sigma").groupby("rf"):
                ax.plot(r["sigma"], r["psnr_out"], color=rf_colour[int(rf)], linestyle=style, markersize=4,
                        marker="o" if style == "-" else "s", label=f"{kind} RF {int(rf)}")  # fmt: skip
        r = low[low["dataset"] == dataset].sort_values("sigma")
        ax.plot(r["sigma"], r["psnr_out"], color=EXACT_COLOUR, linestyle=":", marker="x",
                label="low-pass only")  # fmt: skip
        _paper_flat(ax, paper, "sigma", rfs=list(rf_colour))
        by_rf = {m: rows[rows["model"] == m].pivot_table(index="sigma", columns="rf", values="psnr_out")
                 for m in ("multiscale", "flat")}  # fmt: skip
        diff = by_rf["multiscale"] - by_rf["flat"]
        for rf in diff.columns.dropna():
            if diff[rf].notna().any():
                ax_d.plot(diff.index, diff[rf], color=rf_colour[int(rf)], marker="o", label=f"RF {int(rf)}")
        ax_d.axhline(0, color="0.6", linestyle=":")
        ax.set(xlabel="noise sigma (of 255)", ylabel="PSNR (dB)", title=f"{dataset}: denoising")
        ax_d.set(xlabel="noise sigma (of 255)", ylabel="multi-scale - flat output PSNR (dB)",
                 title=f"{dataset}: multi-scale vs flat, same RF")  # fmt: skip
        _legend(ax_d, fontsize="x-small")
    _figure_legend(fig, ax)
    return fig


def _figure_legend(fig: Figure, ax) -> None:
    """One legend right of the panels, from `ax` (too many lines for a legend inside a panel)."""
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    fig.legend(unique.values(), unique.keys(), loc="outside right upper", fontsize="x-small")


def rf_ablation_figure(table: pd.DataFrame, nll: pd.DataFrame | None = None) -> Figure:
    """The neighbourhood ablation, per dataset: output PSNR vs receptive field per noise sigma for the
    multi-scale (solid) and flat (dashed) denoisers, low-pass only as dotted levels; with the
    multi-scale NLL table, its bits/dim vs RF beside (the exact NLL dashed, where known). Stars: paper 2's
    flat denoisers at every RF it reports (CelebA-160), the reference its claim is made against."""
    ms, flat, low, paper = _ms_split(table)
    ours = pd.concat([ms, flat, low])
    datasets = list(dict.fromkeys(ours["dataset"]))
    sigma_colour = _sequential(ours["sigma"])
    ncols = 1 if nll is None else 2
    fig = Figure(figsize=(5.2 * ncols, 3.8 * len(datasets)))
    axes = fig.subplots(len(datasets), ncols, squeeze=False)
    for row, dataset in zip(axes, datasets, strict=True):
        ax = row[0]
        for kind, frame, style in (("multi-scale", ms, "-"), ("flat", flat, "--")):
            for sigma, r in frame[frame["dataset"] == dataset].sort_values("rf").groupby("sigma"):
                ax.plot(r["rf"].astype(int), r["psnr_out"], color=sigma_colour[sigma], linestyle=style,
                        marker="o" if style == "-" else "s", markersize=4,
                        label=f"{kind}, sigma {sigma:g}")  # fmt: skip
        for _, r in low[low["dataset"] == dataset].iterrows():
            ax.axhline(r["psnr_out"], color=sigma_colour[r["sigma"]], linestyle=":", linewidth=1,
                       label="low-pass only")  # fmt: skip
        _paper_flat(ax, paper, "rf", sigma_colour=sigma_colour)
        rfs = sorted(pd.concat([ms["rf"], flat["rf"]]).dropna().astype(int).unique())
        shown = sorted({*rfs, *paper["rf"].dropna().astype(int)})
        ax.set(xscale="log", xlabel="receptive field RF (coefficients of scale j)", ylabel="output PSNR (dB)",
               title=f"{dataset}: denoising vs neighbourhood")  # fmt: skip
        ax.set_xticks(shown, [str(rf) for rf in shown])
        ax.minorticks_off()
        if nll is not None:
            _rf_nll_panel(row[1], nll[nll["dataset"] == dataset], dataset, rfs)
    _figure_legend(fig, axes[0][0])
    return fig


def _rf_nll_panel(ax, rows: pd.DataFrame, dataset: str, rfs: list[int]) -> None:
    _require(rows, ["rf", "nll_bits_per_dim"], "multiscale nll")
    rows = rows.sort_values("rf")
    # the standard error of the mean: the spread over images would hide differences between RFs
    sem = rows["nll_std_bits_per_dim"] / np.sqrt(rows["n_images"]) if "n_images" in rows else None
    ax.errorbar(rows["rf"].astype(int), rows["nll_bits_per_dim"], color=colour("energy"), marker="o",
                yerr=sem, capsize=2, label="multi-scale energy (± s.e.m.)")  # fmt: skip
    if "exact_bits_per_dim" in rows and rows["exact_bits_per_dim"].notna().any():
        exact = rows["exact_bits_per_dim"].dropna().iloc[0]
        ax.axhline(exact, color=EXACT_COLOUR, linestyle="--", label="exact")
    ax.set(xscale="log", xlabel="receptive field RF (coefficients of scale j)", ylabel="NLL (bits/dim)",
           title=f"{dataset}: multi-scale NLL vs neighbourhood")  # fmt: skip
    ax.set_xticks(rfs, [str(rf) for rf in rfs])
    ax.minorticks_off()
    _legend(ax)


# ----------------------------------------------------------------------------------- make + save


def save_figure(fig: Figure, out: Path, sources: Mapping[Path, str] | None = None) -> list[Path]:
    """Write `out` (.png) and the same figure as .pdf beside it, each atomically; `sources` (table ->
    sha256) are recorded in the files' metadata, so a figure names exactly the tables it drew."""
    out = Path(out)
    if out.suffix != ".png":
        raise ValueError(f"figure output must be a .png path (a .pdf is written beside it), got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    provenance = "; ".join(f"{p} sha256={h}" for p, h in (sources or {}).items())
    written = []
    with matplotlib.rc_context(STYLE):
        for path in (out, out.with_suffix(".pdf")):
            key = "Source" if path.suffix == ".png" else "Subject"  # a PNG text chunk, a PDF info entry
            with atomic.replacing(path) as tmp:
                fig.savefig(tmp, format=path.suffix[1:], metadata={key: provenance} if provenance else None)
            written.append(path)
    return written


def _read_table(path: Path, sources: dict[Path, str] | None = None) -> pd.DataFrame:
    """The table at `path`; its sha256 is added to `sources` (what was read, for provenance)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table not found: {path}")
    if sources is not None:
        sources[path] = atomic.sha256_file(path)
    return pd.read_csv(path)


def sibling(table: Path, suffix: str) -> Path:
    """The study's companion file: results/tables/NAME.csv -> NAME_summary.csv, NAME_extremes.npy."""
    table = Path(table)
    return table.with_name(f"{table.stem}{suffix}")


FIGURES: dict[str, Callable[..., Figure]] = {
    "nll": nll_figure,
    "denoising": denoising_figure,
    "generalization": generalization_figure,
    "dimensionality": dimensionality_figure,
    "content": content_figure,
    "toy": toy_figure,
    "multiscale_denoising": multiscale_denoising_figure,
    "rf_ablation": rf_ablation_figure,
}


def make_figure(
    name: str,
    table: Path,
    out: Path,
    summary: Path | None = None,
    images: Path | None = None,
    nll: Path | None = None,
    affine: Path | None = None,
) -> list[Path]:
    """Draw figure `name` from its table(s) and write out (.png) + .pdf. generalization and content
    also read a summary table (default: the table's _summary.csv sibling); content reads its image
    array and its affine sweep (default: the _extremes.npy and _affine.csv siblings) when they exist;
    rf_ablation the multi-scale NLL table `nll` when given."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r} (known: {sorted(FIGURES)})")
    read: dict[Path, str] = {}
    with matplotlib.rc_context(STYLE):
        main = _read_table(table, read)
        if name == "generalization":
            fig = generalization_figure(main, _read_table(summary or sibling(table, "_summary.csv"), read))
        elif name == "content":
            arr = Path(images) if images else sibling(table, "_extremes.npy")
            if images and not arr.is_file():
                raise FileNotFoundError(f"image array not found: {arr}")
            imgs = np.load(arr) if arr.is_file() else None
            if imgs is not None:
                read[arr] = atomic.sha256_file(arr)
            sweep = Path(affine) if affine else sibling(table, "_affine.csv")
            sweep = _read_table(sweep, read) if affine or sweep.is_file() else None
            fig = content_figure(
                main, _read_table(summary or sibling(table, "_summary.csv"), read), imgs, sweep
            )
        elif name == "rf_ablation":
            fig = rf_ablation_figure(main, None if nll is None else _read_table(nll, read))
        else:
            fig = FIGURES[name](main)
    return save_figure(fig, out, read)
