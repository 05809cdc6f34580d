"""Figures build from small hand-made tables (the studies' columns), write PNG + PDF, and never
import torch."""

import hashlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from image_density import cli, figures


def nll_table() -> pd.DataFrame:
    rows = [
        ("field", m, s, v, src, -1.52, None)
        for s in ("train", "test")
        for m, v, src in (("energy", -1.48, "ours"), ("gaussian", -1.51, "baseline"))
    ]
    rows += [
        ("gray64", m, s, v, src, None, 4.20 if (m == "energy" and s == "test") else None)
        for s in ("train", "test")
        for m, v, src in (
            ("energy", 4.4, "ours"),
            ("gaussian", 5.1, "baseline"),
            ("uniform", 8.0, "baseline"),
        )
    ]
    cols = [
        "dataset",
        "model",
        "split",
        "nll_bits_per_dim",
        "source",
        "exact_bits_per_dim",
        "paper_bits_per_dim",
    ]
    return pd.DataFrame(rows, columns=cols)


def denoising_table() -> pd.DataFrame:
    psnr_in = np.array([90.0, 30.0, 0.0, -30.0])
    out = np.array([90.1, 35.0, 19.0, 12.0])
    rows = [
        pd.DataFrame(
            {"dataset": "field", "model": m, "source": src, "psnr_in": psnr_in, "psnr_out": out + shift}
        )
        for m, src, shift in (("energy", "ours", 0.05), ("denoiser", "ours", 0.0), ("wiener", "exact", 0.2))
    ]
    rows.append(
        pd.DataFrame(
            {
                "dataset": "field",
                "model": ["energy", "denoiser"],
                "source": "paper",
                "psnr_in": [30.0, 30.0],
                "psnr_out": [35.67, 35.58],
            }
        )
    )
    return pd.concat(rows, ignore_index=True)


def generalization_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    scatter, summary = [], []
    for n in (1, 10, 100):
        for which in ("A", "B", "test"):
            a = rng.normal(10, 3, 20)
            b = a + rng.normal(0, 5 / n, 20)
            scatter.append(
                pd.DataFrame(
                    {
                        "n": n,
                        "images": which,
                        "index": np.arange(20),
                        "log_p_A_db": a,
                        "log_p_B_db": b,
                        "delta_db": a - b,
                    }
                )
            )
            summary.append(
                {
                    "n": n,
                    "images": which,
                    "source": "ours",
                    "mean_abs_delta_db": 5 / n,
                    "pearson_r": 1 - 0.1 / n,
                    "loss_A": 0.3 + 0.1 * (which == "test"),
                    "loss_B": 0.3 + 0.1 * (which == "test"),
                }
            )
    summary += [
        {
            "n": 100_000,
            "images": "A and B",
            "source": "paper",
            "mean_abs_delta_db": 0.11,
            "pearson_r": 0.9987,
        },
        {
            "n": 1000,
            "images": "A and B",
            "source": "paper",
            "mean_abs_delta_db_lo": 0.23,
            "mean_abs_delta_db_hi": 0.33,
            "pearson_r_lo": 0.98,
            "pearson_r_hi": 0.99,
        },
    ]
    return pd.concat(scatter, ignore_index=True), pd.DataFrame(summary)


def dimensionality_table() -> pd.DataFrame:
    t = np.logspace(-6, 3, 10)
    frames = []
    for model, source, images, scale in [
        ("energy", "ours", "test", 1.0),
        ("energy", "ours", "most_probable_1", 0.5),
        ("denoiser", "ours", "test", 1.1),
        ("exact", "exact", "test", 1.0),
    ]:
        frac = scale / (1 + t / 1e-2)
        frames.append(
            pd.DataFrame(
                {
                    "model": model,
                    "source": source,
                    "images": images,
                    "t": t,
                    "d_eff_fraction": np.minimum(frac, 1),
                    "dataset": "field",
                    "log_p_t_db": np.nan if model == "denoiser" else -5 * np.log10(t + 1e-2),
                }
            )
        )
    frames.append(
        pd.DataFrame(
            {
                "model": "energy",
                "source": "paper",
                "images": "test",
                "t": [1e-12, 1e-2],
                "d_eff_fraction": [1.0, 0.19],
                "log_p_t_db": np.nan,
                "dataset": "paper",
            }
        )
    )
    return pd.concat(frames, ignore_index=True)


def rng_lp(n: int) -> np.ndarray:
    return np.random.default_rng(1).normal(10, 2, n)


def content_tables() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    lp = rng.gumbel(9.6, 3.2, 100)
    rank = np.empty(100, int)
    rank[np.argsort(-lp)] = np.arange(1, 101)
    extreme = np.where(rank <= 3, "most", np.where(rank > 97, "least", ""))
    per = pd.DataFrame(
        {
            "index": np.arange(100),
            "log_p_db": lp,
            "rank": rank,
            "participation_ratio": rng.uniform(0.1, 0.6, 100),
            "pixel_std": rng.uniform(0, 0.3, 100),
            "extreme": extreme,
        }
    )
    summary = pd.DataFrame(
        [
            {
                "source": "ours",
                "gumbel_loc": 9.5,
                "gumbel_scale": 3.1,
                "spearman_participation_ratio": -0.8,
                "spearman_pixel_std": 0.5,
            },
            {"source": "paper", "gumbel_loc": 9.57, "gumbel_scale": 3.17},
        ]
    )
    return per, summary, rng.uniform(0, 1, (6, 1, 8, 8)).astype(np.float32)


def toy_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frames = []
    for method, offset in (("closed_form", 0.0), ("single", 0.7), ("dual", 0.02)):
        for sigma in (1.0, 4.0):
            r = sigma**2 * rng.uniform(0.9, 1.1, 30)
            frames.append(
                pd.DataFrame(
                    {
                        "method": method,
                        "sigma": sigma,
                        "r": r,
                        "nll_bits_per_dim": np.log2(sigma) + 2 + offset * sigma + 0.1 * r,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def _check_written(paths, out):
    assert paths == [out, out.with_suffix(".pdf")]
    with Image.open(out) as img:
        assert img.format == "PNG" and min(img.size) > 200
    assert out.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.parametrize("name", ["nll", "denoising", "dimensionality", "toy"])
def test_single_table_figures(tmp_path, name):
    table = {
        "nll": nll_table,
        "denoising": denoising_table,
        "dimensionality": dimensionality_table,
        "toy": toy_table,
    }[name]()
    table.to_csv(tmp_path / f"{name}.csv", index=False)
    out = tmp_path / "figs" / f"{name}.png"
    _check_written(figures.make_figure(name, tmp_path / f"{name}.csv", out), out)


def test_nll_figure_shows_exact_and_paper():
    fig = figures.nll_figure(nll_table())
    ax_train, ax_test = fig.axes
    labels = set(ax_test.get_legend_handles_labels()[1])
    assert {"energy", "gaussian", "uniform", "exact", "paper (ImageNet64)"} <= labels
    assert ax_test.get_ylabel() == "" and ax_train.get_ylabel() == "NLL (bits/dim)"


def test_generalization_and_content_figures_read_their_companions(tmp_path):
    scatter, summary = generalization_tables()
    scatter.to_csv(tmp_path / "generalization.csv", index=False)
    summary.to_csv(tmp_path / "generalization_summary.csv", index=False)
    out = tmp_path / "generalization.png"
    _check_written(figures.make_figure("generalization", tmp_path / "generalization.csv", out), out)

    per, summary, images = content_tables()
    per.to_csv(tmp_path / "content.csv", index=False)
    summary.to_csv(tmp_path / "content_summary.csv", index=False)
    np.save(tmp_path / "content_extremes.npy", images)
    out = tmp_path / "content.png"
    _check_written(figures.make_figure("content", tmp_path / "content.csv", out), out)
    fig = figures.content_figure(per, summary, images)
    assert sum(len(ax.images) for ax in fig.axes) == 6  # the extreme images, 2 rows of 3
    assert "log p vs pixel std" in fig.axes[2].get_title()  # no sweep: our contrast measure
    affine = pd.DataFrame({"index": np.repeat([0, 1], 6), "a": np.tile([0.5, 1.0, 2.0], 4),
                           "b": np.tile(np.repeat([0.0, 0.1], 3), 2), "log_p_db": rng_lp(12)})  # fmt: skip
    affine.to_csv(tmp_path / "content_affine.csv", index=False)
    _check_written(figures.make_figure("content", tmp_path / "content.csv", out), out)
    fig = figures.content_figure(per, summary, images, affine)
    assert "log p(a x + b)" in fig.axes[2].get_title() and len(fig.axes[2].lines) == 2  # one per b


def test_a_figure_names_the_tables_it_drew_with_their_sha256(tmp_path):
    per, summary, images = content_tables()
    per.to_csv(tmp_path / "content.csv", index=False)
    summary.to_csv(tmp_path / "content_summary.csv", index=False)
    np.save(tmp_path / "content_extremes.npy", images)
    out = tmp_path / "content.png"
    figures.make_figure("content", tmp_path / "content.csv", out)
    with Image.open(out) as img:
        source = img.text["Source"]
    for name in ("content.csv", "content_summary.csv", "content_extremes.npy"):
        digest = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert f"{tmp_path / name} sha256={digest}" in source


def test_figure_command_and_errors(tmp_path, capsys):
    nll_table().to_csv(tmp_path / "nll.csv", index=False)
    out = tmp_path / "nll.png"
    assert cli.main(["figure", "nll", "--table", str(tmp_path / "nll.csv"), "--out", str(out)]) == 0
    assert out.exists() and out.with_suffix(".pdf").exists()
    assert (
        cli.main(["figure", "nll", "--table", str(tmp_path / "nll.csv"), "--out", str(tmp_path / "x.jpg")])
        == 2
    )
    assert ".png" in capsys.readouterr().err
    pd.DataFrame({"dataset": ["a"]}).to_csv(tmp_path / "bad.csv", index=False)
    assert cli.main(["figure", "nll", "--table", str(tmp_path / "bad.csv"), "--out", str(out)]) == 2
    assert "lacks columns" in capsys.readouterr().err
    assert cli.main(["figure", "content", "--table", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_figures_do_not_import_torch():
    code = "import sys, image_density.figures; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def multiscale_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `denoise` table (multi-scale and flat per RF, low-pass only without RF, and paper rows of
    another dataset, as studies.multiscale.paper_rows) and the `multiscale-nll` table, of one dataset."""
    nets = [("multiscale", 5), ("multiscale", 9), ("flat", 5), ("flat", 9), ("lowpass-only", None)]
    rows = [
        {"dataset": "faces", "model": model, "rf": rf, "sigma": s, "psnr_in": 20 * np.log10(255 / s),
         "psnr_out": 30 - s / 20 + (rf or 0) / 10 + (1 if model == "multiscale" else 0)}
        for s in (20.0, 60.0)
        for model, rf in nets
    ] + [
        {"dataset": "celeba160 gray (paper)", "model": "flat", "rf": rf, "sigma": s, "source": "paper",
         "psnr_in": 20 * np.log10(255 / s), "psnr_out": 31 - s / 20 + rf / 40}
        for s in (20.0, 60.0)
        for rf in (5, 43)
    ]  # fmt: skip
    nll = pd.DataFrame({"dataset": "faces", "model": ["multiscale-rf5", "multiscale-rf9"], "split": "test",
                        "rf": [5, 9], "nll_bits_per_dim": [4.1, 3.9], "nll_std_bits_per_dim": [0.2, 0.2],
                        "exact_bits_per_dim": [3.5, 3.5]})  # fmt: skip
    return pd.DataFrame(rows).astype({"rf": "Int64"}), nll


def test_multiscale_figures(tmp_path):
    den, nll = multiscale_tables()
    den.to_csv(tmp_path / "multiscale_denoising.csv", index=False)
    nll.to_csv(tmp_path / "multiscale_nll.csv", index=False)
    table = tmp_path / "multiscale_denoising.csv"
    out = tmp_path / "multiscale_denoising.png"
    _check_written(figures.make_figure("multiscale_denoising", table, out), out)
    fig = figures.multiscale_denoising_figure(pd.read_csv(table))
    labels = {text.get_text() for text in fig.legends[0].get_texts()}
    expected = {"multi-scale RF 5", "flat RF 9", "low-pass only", "noisy input", "paper: flat (CelebA-160)"}
    assert expected <= labels
    assert len(fig.axes) == 2  # one dataset's row: the paper's rows are stars on it, not a panel
    # the ablation: PSNR vs RF, and with the NLL table its panel (the exact NLL dashed)
    for nll_path, panels in ((tmp_path / "multiscale_nll.csv", 2), (None, 1)):
        out = tmp_path / f"rf_ablation_{panels}.png"
        _check_written(figures.make_figure("rf_ablation", table, out, nll=nll_path), out)
        fig = figures.rf_ablation_figure(pd.read_csv(table), None if nll_path is None else nll)
        assert len(fig.axes) == panels
        # the paper's RF 43 on the axis beside ours (its claim: multi-scale small RF ~ flat RF 43)
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["5", "9", "43"]
    assert fig.axes[0].get_xlabel().startswith("receptive field")


def test_figure_command_knows_every_figure():
    assert set(cli.FIGURE_NAMES) == set(figures.FIGURES)


def test_denoising_stars_only_on_the_panel_of_their_data():
    table = denoising_table()
    table = pd.concat([table, table[table.source != "paper"].assign(dataset="gray")], ignore_index=True)
    fig = figures.denoising_figure(table)
    panels = {ax.get_title().split(":")[0]: ax for ax in fig.axes if "output PSNR" in ax.get_title()}
    starred = {name for name, ax in panels.items() if any(len(c.get_offsets()) for c in ax.collections)}
    assert set(panels) == {"field", "gray"} and starred == {"field"}
    assert "paper: energy net (colour ImageNet64)" in panels["field"].get_legend_handles_labels()[1]
