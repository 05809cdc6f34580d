"""Paper 1's studies against ground truth (the exact GaussianEnergy of a Gaussian field), and the
`study` command end to end on untrained tiny models."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from _train_helpers import TINY_UNET
from image_density import cli, units
from image_density.checkpoint import save_model
from image_density.config import GaussianFieldData, load_config
from image_density.data import GaussianField, load_prepared, prepare_dataset
from image_density.data.store import Prepared
from image_density.models import GaussianEnergy, build_model, unet_model_spec
from image_density.noise import t_grid
from image_density.studies.content import (
    affine_sweep,
    content_study,
    detail_l1_l2,
    fit_gumbel,
    participation_ratio,
)
from image_density.studies.denoising import PAPER_TABLE1, denoising_study
from image_density.studies.dimensionality import dimensionality_study
from image_density.studies.generalization import generalization_study
from image_density.studies.nll import StudyModel, nll_study
from image_density.tables import read_rows

SIZE = 8
D = SIZE * SIZE


@pytest.fixture(scope="module", params=[1.0, 3.0], ids=["periodic", "modulated"])
def field(request):
    """(covariance eigenvalues, exact model) of a periodic field, and of a non-periodic one (std_ratio
    3: the dense eigenbasis of GaussianEnergy.field)."""
    f = GaussianField(
        GaussianFieldData(kind="gaussian_field", size=SIZE, n_train=1, n_test=1, std_ratio=request.param)
    )
    s = None if f.modulation is None else torch.from_numpy(f.modulation)
    g = GaussianEnergy.field(torch.from_numpy(f.eigenvalues), 0.5, s)
    return g.eigenvalues, g


def exact(model: GaussianEnergy, name: str = "exact") -> StudyModel:
    return StudyModel(name, model, model.log_z(), 0.0, "exact")


def test_d_eff_and_log_p_t_match_the_gaussian_truth(field):
    lam, g = field
    gen = torch.Generator().manual_seed(0)
    x = g.sample(600, gen)
    t = t_grid(1e-6, 1e2, 6)
    log_p_x = units.log_p_db_per_dim(exact(g).log_p_nats(x), D).numpy()
    table = dimensionality_study(
        [exact(g, "wiener")],
        x,
        t,
        dataset="f",
        draws=2,
        log_p_x_db=log_p_x,
        n_extremes=2,
        eigenvalues=lam,
        generator=gen,
    )
    mc = table[(table.model == "wiener") & (table.images == "test")]
    truth = table[table.model == "exact"]
    assert len(mc) == len(truth) == len(t)
    lam_flat = lam.flatten().double()
    want = np.array([(lam_flat / (lam_flat + tt)).sum().item() for tt in t.tolist()])
    np.testing.assert_allclose(truth.d_eff, want, rtol=1e-12)
    # Monte Carlo d_eff and E log p_t within 5 standard errors of the exact curves
    assert np.all(np.abs(mc.d_eff.to_numpy() - want) < 5 * mc.d_eff_sem.to_numpy())
    assert np.all(np.abs(mc.log_p_t_db.to_numpy() - truth.log_p_t_db.to_numpy()) < 5 * mc.log_p_t_db_sem)
    assert mc.d_eff.iloc[0] == pytest.approx(D, rel=0.02) and mc.d_eff.iloc[-1] < 1
    # extremes: the most probable image first, each a row of x
    most = table[table.images == "most_probable_1"]
    assert len(most) == len(t) and most["index"].iloc[0] == int(np.argmax(log_p_x))
    assert set(table.images) == {
        "test",
        "most_probable_1",
        "most_probable_2",
        "least_probable_1",
        "least_probable_2",
    }
    assert (table[table.source == "paper"].d_eff_fraction <= 1).all()


def test_denoising_of_identical_exact_models_is_identical_and_wiener(field):
    lam, g = field
    gen = torch.Generator().manual_seed(1)
    x = g.sample(400, gen)
    psnrs = [90, 30, 15, 0, -30]
    table = denoising_study([exact(g, "a"), exact(g, "b")], x, psnrs, dataset="f", draws=2, generator=gen)
    a, b = table[table.model == "a"], table[table.model == "b"]
    np.testing.assert_array_equal(a.psnr_out.to_numpy(), b.psnr_out.to_numpy())
    lam_flat = lam.flatten().double()
    for p, mse in zip(psnrs, a.mse, strict=True):
        t = units.psnr_to_t(p)
        wiener_mse = (lam_flat * t / (lam_flat + t)).mean().item()  # the exact MMSE per pixel
        assert mse == pytest.approx(wiener_mse, rel=0.03)
    assert list(a.psnr_in) == psnrs and a.n_images.iloc[0] == 400
    paper = table[table.source == "paper"]
    assert sorted(paper.model.unique()) == ["denoiser", "energy"]
    assert paper[paper.model == "energy"].psnr_out.tolist() == PAPER_TABLE1["energy"]


class _FixedError(torch.nn.Module):
    """A 'denoiser' whose error on image i is the constant e_i: MSE_i = e_i^2 at every t."""

    def __init__(self, errors: torch.Tensor):
        super().__init__()
        self.errors = errors

    def denoise(self, y, t):
        return self.x + self.errors[:, None, None, None]


def test_denoising_psnr_is_of_the_mean_mse_as_the_release_with_the_per_image_mean_beside_it():
    x = torch.zeros(2, 1, 4, 4)
    m = _FixedError(torch.tensor([0.1, 0.01]))
    m.x = x
    table = denoising_study([StudyModel("fixed", m, network="unet-release/t/release")], x, [20.0],
                            dataset="f")  # fmt: skip
    row = table[table.model == "fixed"].iloc[0]
    # by hand: MSEs 1e-2 and 1e-4 -> mean 5.05e-3 -> 22.967 dB; per-image PSNRs 20 and 40 -> 30 dB
    assert row.mse == pytest.approx(5.05e-3)
    assert row.psnr_out == pytest.approx(-10 * np.log10(5.05e-3)) and row.psnr_out == pytest.approx(
        22.967, abs=1e-3
    )
    assert row.psnr_out_per_image_mean == pytest.approx(30.0)
    assert row.network == "unet-release/t/release"


def test_table1_rows_belong_to_a_colour_imagenet64_panel_only():
    x = torch.zeros(1, 1, 4, 4)
    m = _FixedError(torch.tensor([0.1]))
    m.x = x
    other = denoising_study([StudyModel("e", m)], x, [0.0], dataset="gray")
    assert set(other[other.source == "paper"].dataset) == {"colour ImageNet64 (paper)"}
    mine = denoising_study([StudyModel("e", m)], x, [0.0], dataset="imagenet64", paper_data=True)
    paper = mine[mine.source == "paper"]
    assert set(paper.dataset) == {"imagenet64"} and set(paper.data) == {"colour ImageNet64 (paper)"}


def test_generalization_of_identical_models_has_no_difference(field):
    _, g = field
    gen = torch.Generator().manual_seed(2)
    x = g.sample(60, gen)
    sets = {"A": x[:20], "B": x[20:40], "test": x[40:]}
    scatter, summary = generalization_study(
        {10: (exact(g, "A10"), exact(g, "B10"))},
        lambda n, w: (np.arange(20), sets[w]),
        dataset="f",
        t_min=1e-4,
        t_max=1e2,
        loss_draws=2,
        generator=gen,
    )
    assert len(scatter) == 60 and (scatter.delta_db == 0).all()
    ours = summary[summary.source == "ours"]
    assert list(ours.images) == ["A", "B", "test"]
    assert (ours.mean_abs_delta_db == 0).all() and (ours.rms_delta_db == 0).all()
    np.testing.assert_allclose(ours.pearson_r, 1.0, rtol=1e-12)
    np.testing.assert_array_equal(ours.loss_A, ours.loss_B)  # same t and noise for both models
    # the exact model's dual score loss: E[l_DSM] = mean_k lambda_k / (lambda_k + t) < 1, l_TSM >= 0
    assert (ours.loss_A > 0).all() and (ours.loss_A < 2).all()
    # the paper's numbers are of colour ImageNet64 models: not beside a study on other data
    assert not (summary.source == "paper").any()
    _, with_paper = generalization_study(
        {10: (exact(g, "A10"), exact(g, "B10"))}, lambda n, w: (np.arange(20), sets[w]), dataset="f",
        t_min=1e-4, t_max=1e2, loss_draws=1, generator=gen, paper_data=True,
    )  # fmt: skip
    paper = with_paper[with_paper.source == "paper"]
    assert paper.n.max() == 100_000 and set(paper.data) == {"colour ImageNet64 (paper)"}


def test_generalization_sees_memorization(field):
    """N = 1: each model a narrow Gaussian around its own training image prefers that image."""
    lam, g = field
    x = g.sample(10, torch.Generator().manual_seed(3))
    a, b = (GaussianEnergy(lam * 0.01, mean=x[i], eigenvectors=g.eigenvectors) for i in (0, 1))
    sets = {"A": x[:1], "B": x[1:2], "test": x[2:]}
    _, summary = generalization_study(
        {1: (exact(a, "A1"), exact(b, "B1"))},
        lambda n, w: (np.arange(len(sets[w])), sets[w]),
        dataset="f",
        t_min=1e-4,
        t_max=1e2,
        loss_draws=1,
        generator=torch.Generator().manual_seed(0),
    )
    ours = summary[summary.source == "ours"].set_index("images")
    delta = ours.mean_log_p_A_db - ours.mean_log_p_B_db
    assert delta["A"] > 5 and delta["B"] < -5  # dB/dim
    assert ours.loc["A", "mean_abs_delta_db"] == pytest.approx(abs(delta["A"]))
    assert math.isnan(ours.loc["A", "pearson_r"])  # one image: no correlation
    assert ours.loc["test", "loss_A"] > ours.loc["A", "loss_A"]  # the memorizer's test loss is worse


def _prepared(tmp_path, name, spec):
    prepare_dataset(spec, tmp_path / name, name=name)
    return load_prepared(tmp_path / name)


def test_nll_gaussian_baseline_equals_the_exact_entropy(tmp_path):
    n_train, n_test = 20_000, 4_000
    spec = GaussianFieldData(kind="gaussian_field", size=SIZE, n_train=n_train, n_test=n_test)
    data = _prepared(tmp_path, "field", spec)
    learned = pd.DataFrame(
        [
            {
                "dataset": "field",
                "model": "energy",
                "split": "test",
                "n_images": 10,
                "nll_bits_per_dim": -1.0,
                "nll_std_bits_per_dim": 0.1,
                "log_z_nats": 3.0,
            }
        ]
    )
    table = nll_study(learned, {"field": data}, batch_size=4096, device="cpu")
    assert set(table.columns) >= {
        "dataset",
        "model",
        "split",
        "source",
        "nll_bits_per_dim",
        "exact_bits_per_dim",
        "paper_bits_per_dim",
    }
    assert "uniform" not in set(table.model)  # continuous data: no 8-bit baseline
    exact_bits = GaussianField(spec).entropy_bits_per_dim()
    assert table.exact_bits_per_dim.notna().all() and np.allclose(table.exact_bits_per_dim, exact_bits)
    test = table[(table.model == "gaussian") & (table.split == "test")].iloc[0]
    sem = test.nll_std_bits_per_dim / math.sqrt(n_test)
    # fitted mean and covariance: expected excess of the test NLL ~ d (d + 3) / (2 N) nats
    bias = D * (D + 3) / (2 * n_train) / (D * math.log(2))
    assert abs(test.nll_bits_per_dim - exact_bits) < 4 * sem + 2 * bias
    energy = table[table.model == "energy"].iloc[0]
    assert energy.source == "ours" and pd.isna(energy.paper_bits_per_dim)


def test_nll_study_on_8bit_data_has_uniform_baseline_and_paper_anchor(tmp_path):
    rng = np.random.default_rng(0)
    arr = {s: rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8) for s, n in (("train", 2000), ("test", 500))}
    data = Prepared(
        tmp_path, arr["train"], arr["test"], {"kind": "imagenet64", "quantized": True, "shape": [1, 4, 4]}
    )
    learned = pd.DataFrame(
        [
            {"dataset": "gray", "model": m, "split": "test", "nll_bits_per_dim": 4.5}
            for m in ("energy", "energy-A10")
        ]
    )
    table = nll_study(learned, {"gray": data}, baseline_images=1500, device="cpu").set_index(
        ["model", "split"]
    )
    assert table.loc[("uniform", "test"), "nll_bits_per_dim"] == 8.0
    assert table.loc[("energy", "test"), "paper_bits_per_dim"] == 4.20
    assert pd.isna(table.loc[("energy-A10", "test"), "paper_bits_per_dim"])
    # iid uniform pixels: the best Gaussian has variance 1/12, cross-entropy 1/2 log2(2 pi e / 12) bits
    want = 8 + 0.5 * math.log2(2 * math.pi * math.e / 12)
    assert table.loc[("gaussian", "test"), "nll_bits_per_dim"] == pytest.approx(want, abs=0.05)
    assert table.loc[("gaussian", "train"), "n_images"] == 1500


def test_nll_gaussian_baseline_refuses_a_singular_covariance(tmp_path):
    data = _prepared(tmp_path, "f", GaussianFieldData(kind="gaussian_field", size=SIZE, n_train=20, n_test=4))
    with pytest.raises(ValueError, match="singular.*baseline_images.*> 64"):
        nll_study(pd.DataFrame(), {"f": data}, device="cpu")


def test_gumbel_fit_recovers_loc_and_scale():
    v = stats.gumbel_r.rvs(loc=9.57, scale=3.17, size=20_000, random_state=np.random.default_rng(0))
    loc, scale = fit_gumbel(v)
    assert loc == pytest.approx(9.57, abs=0.08) and scale == pytest.approx(3.17, rel=0.03)


def test_content_study_ranks_extremes_and_measures_content():
    gen = torch.Generator().manual_seed(0)
    x = 0.5 + 0.1 * torch.randn(200, 1, SIZE, SIZE, generator=gen)
    log_p = stats.gumbel_r.rvs(loc=4.0, scale=0.5, size=200, random_state=np.random.default_rng(1))
    res = content_study(x, log_p, dataset="f", model="energy", n_extremes=3, wavelet_levels=2,
                        participation_levels=2)  # fmt: skip
    per, summary = res.per_image, res.summary.set_index("source")
    assert per.loc[per["rank"] == 1, "index"].item() == int(np.argmax(log_p))
    assert sorted(per["rank"]) == list(range(1, 201))
    assert (per.extreme == "most").sum() == 3 and (per.extreme == "least").sum() == 3
    np.testing.assert_allclose(res.extremes[0], x[int(np.argmax(log_p))].numpy())
    np.testing.assert_allclose(res.extremes[3], x[int(np.argmin(log_p))].numpy())
    assert res.extremes.shape == (6, 1, SIZE, SIZE)
    assert summary.loc["ours", "gumbel_scale"] == pytest.approx(0.5, rel=0.2)
    assert summary.loc["paper", "gumbel_loc"] == 9.57
    np.testing.assert_allclose(per.pixel_std, x.flatten(1).double().std(1, correction=0).numpy())
    np.testing.assert_allclose(per.participation_ratio, participation_ratio(x, 2))
    assert np.isfinite(summary.loc["ours", "spearman_participation_ratio"])


def test_participation_ratio_by_hand():
    """Haar, averaging normalization (each level's coefficients halved, the low-pass a local mean):
    a 2 x 2 image [[a, b], [c, d]] has one level: low-pass (a+b+c+d)/4 and details (a+b-c-d)/4,
    (a-b+c-d)/4, (a-b-c+d)/4 (signs aside)."""
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)  # every coefficient +-1/4
    assert participation_ratio(x, 1) == pytest.approx([1.0])  # all four equal: not sparse at all
    y = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)  # only the low-pass: 1/n
    assert participation_ratio(y, 1) == pytest.approx([0.25])
    z = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]], dtype=torch.float64)  # low 1/2, one detail 1/2
    assert participation_ratio(z, 1) == pytest.approx([(0.5 + 0.5) ** 2 / (4 * 0.5)])
    # two levels of a 4 x 4 image: the low-pass of the low-pass, its 3 details, 12 finest details;
    # an image constant on 2 x 2 blocks [[1, 0], [0, 0]] has no finest detail: 4 equal coefficients
    w = torch.kron(torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64), torch.ones(2, 2))
    assert participation_ratio(w[None, None], 2) == pytest.approx([4 / 16])
    with pytest.raises(ValueError, match="studies.content.participation_levels"):
        participation_ratio(x, 2)


def test_affine_sweep_of_a_gaussian_is_its_closed_form():
    """log p(a x + b) under N(0, s^2 I): -(a x + b)^2 / (2 s^2) - log(2 pi s^2) / 2 per dimension."""
    s2 = 0.04
    x = torch.tensor([[[[0.1, -0.2]]], [[[0.3, 0.0]]]], dtype=torch.float64)

    def log_p(y):
        return (-(y**2).flatten(1).sum(1) / (2 * s2) - y[0].numel() / 2 * math.log(2 * math.pi * s2)).double()

    table = affine_sweep(log_p, x, [0.5, 2.0], [0.0, 0.1], index=np.array([7, 9]))
    assert len(table) == 8 and set(table["index"]) == {7, 9}
    row = table[(table["index"] == 9) & (table.a == 2.0) & (table.b == 0.1)].iloc[0]
    y = np.array([0.7, 0.1])
    expected = (-(y**2).sum() / (2 * s2) - math.log(2 * math.pi * s2)) / 2  # nats per dimension
    assert row.log_p_db == pytest.approx(expected * 10 / math.log(10))


def test_detail_l1_l2():
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(300, 1, 16, 16, generator=gen, dtype=torch.float64)
    spike = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    spike[..., 5, 9] = 1.0
    flat = torch.full((1, 1, 16, 16), 0.3, dtype=torch.float64)
    s = detail_l1_l2(torch.cat([noise, spike, flat]), levels=2)
    # white Gaussian noise: E|d| / sqrt(E d^2) = sqrt(2 / pi); a spike: few non-zero details
    assert s[:300].mean() == pytest.approx(math.sqrt(2 / math.pi), abs=0.01)
    assert s[300] < 0.3 and math.isnan(s[301])
    with pytest.raises(ValueError, match="studies.content.wavelet_levels"):
        detail_l1_l2(noise[:1, :, :12, :12], levels=3)


# --------------------------------------------------------------------------------- the command

UNET = TINY_UNET
TRAIN = {"steps": 1, "batch": 4, "t_min": 1.0e-4, "t_max": 100.0}
LIKELIHOOD = {"t_max": 100.0, "logz_images": 8, "logz_draws": 1}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Params, a prepared field, and untrained model files in the layout `train` writes."""
    root = tmp_path_factory.mktemp("studies")
    raw = {
        "seed": 0,
        "results": str(root / "results"),
        "datasets": {"field": {"kind": "gaussian_field", "size": SIZE, "n_train": 100, "n_test": 12}},
        "energy": {"datasets": ["field"], "unet": UNET, "train": TRAIN, "likelihood": LIKELIHOOD},
        "generalization": {
            "dataset": "field",
            "n": [2, 4],
            "unet": UNET,
            "train": TRAIN,
            "likelihood": LIKELIHOOD,
        },
        "studies": {
            "batch": 8,
            "denoising": {"psnrs": [30, 0], "n_images": 6},
            "generalization": {"n_images": 3, "loss_draws": 1},
            "dimensionality": {
                "t_min": 1e-4,
                "t_max": 10.0,
                "n_t": 3,
                "n_images": 5,
                "draws": 1,
                "n_extremes": 1,
            },
            "content": {"n_extremes": 2, "wavelet_levels": 2, "participation_levels": 2, "affine_images": 3},
        },
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert cli.main(["prepare", "--config", str(path), "--dataset", "field"]) == 0
    data = load_prepared(cfg.results / "data/field")
    models = {}
    torch.manual_seed(0)
    for name, arch, subset, n in [
        ("energy", "energy_unet", None, None),
        ("denoiser", "denoiser_unet", None, None),
        *[(f"energy-{s}{n}", "energy_unet", s, n) for n in (2, 4) for s in "AB"],
    ]:
        spec = unet_model_spec(arch, 1, cfg.energy.unet)
        meta = {
            "name": name,
            "model": arch.split("_")[0],
            "dataset": "field",
            "subset": subset,
            "n": n,
            "shape": list(data.shape),
            "data_sha256": data.meta["sha256"]["train.npy"],
        }
        net = build_model(spec)
        with torch.no_grad():  # untrained, but not the zero-initialized output layer: log p varies
            for w in net.parameters():
                w.add_(0.1 * torch.randn_like(w))
        models[name] = save_model(
            cfg.results / "models" / name / "model.pt",
            weights=net.state_dict(),
            model_spec=spec,
            config=cfg.model_dump(mode="json"),
            meta=meta,
            step=0,
        )
    return root, path, models


def run(*args) -> int:
    return cli.main([str(a) for a in args])


def test_study_command_writes_every_table(project):
    root, cfg, models = project
    tables = root / "results/tables"
    assert (
        run(
            "nll",
            "--config",
            cfg,
            "--model-path",
            models["energy"],
            "--dataset",
            "field",
            "--table",
            tables / "nll.csv",
        )
        == 0
    )
    assert (
        run("study", "nll", "--config", cfg, "--table", tables / "nll.csv", "--out", tables / "nll_study.csv")
        == 0
    )
    nll_rows = pd.read_csv(tables / "nll_study.csv")
    assert {("energy", "test"), ("gaussian", "test"), ("gaussian", "train")} <= set(
        zip(nll_rows.model, nll_rows.split, strict=True)
    )

    out = tables / "denoising.csv"
    assert (
        run(
            "study",
            "denoising",
            "--config",
            cfg,
            "--models",
            models["energy"],
            models["denoiser"],
            "--out",
            out,
        )
        == 0
    )
    den = pd.read_csv(out)
    assert set(den.model) == {"energy", "denoiser", "wiener"} and set(den.source) == {
        "ours",
        "exact",
        "paper",
    }
    assert den[den.source == "ours"].n_images.eq(6).all()
    # every row says which network produced it (layout separate, the default embedding and norm)
    assert set(den[den.source == "ours"].network) == {"unet-separate/t/release"}
    assert set(den[den.source == "exact"].network) == {"exact"}

    out = tables / "generalization.csv"
    gen_models = [models[f"energy-{s}{n}"] for n in (2, 4) for s in "AB"]
    assert run("study", "generalization", "--config", cfg, "--models", *gen_models, "--out", out) == 0
    scatter, summary = pd.read_csv(out), pd.read_csv(tables / "generalization_summary.csv")
    assert len(scatter) == (2 + 2 + 3) + (3 + 3 + 3)  # A's, B's (at most n_images = 3) and test images
    assert set(summary[summary.source == "ours"].n) == {2, 4}

    out = tables / "dimensionality.csv"
    assert (
        run(
            "study",
            "dimensionality",
            "--config",
            cfg,
            "--models",
            models["energy"],
            models["denoiser"],
            "--out",
            out,
        )
        == 0
    )
    dim = pd.read_csv(out)
    assert set(dim.source) == {"ours", "exact", "paper"}
    assert dim[dim.model == "denoiser"].log_p_t_db.isna().all()
    assert dim[(dim.model == "energy") & (dim.source == "ours")].log_p_t_db.notna().all()

    out = tables / "content.csv"
    assert run("study", "content", "--config", cfg, "--models", models["energy"], "--out", out) == 0
    assert len(pd.read_csv(out)) == 12
    assert np.load(tables / "content_extremes.npy").shape == (4, 1, SIZE, SIZE)
    assert len(read_rows(tables / "content_summary.csv")[1]) == 2
    assert len(read_rows(tables / "content_affine.csv")[1]) == 3 * 6 * 3  # images x a x b


@pytest.mark.parametrize(
    "args, message",
    [
        (["denoising"], "needs --models"),
        (["content", "--models", "energy", "denoiser"], "takes one energy model"),
        (["generalization", "--models", "energy-A2"], "lack model A or B"),
        (["generalization", "--models", "energy"], "is not a generalization model"),
        (["nll"], "needs --table"),
        (["denoising", "--models", "energy", "--dataset", "nope"], "not a key of datasets"),
    ],
)
def test_study_command_errors(project, capsys, args, message):
    root, cfg, models = project
    args = [models.get(a, a) for a in args]
    assert run("study", *args, "--config", cfg, "--out", root / "bad.csv") == 2
    assert message in capsys.readouterr().err
    assert not (root / "bad.csv").exists()


def test_study_toy_command_needs_no_models_or_data(tmp_path):
    raw = {
        "datasets": {},
        "studies": {"toy": {"d": 8, "steps": 3, "batch": 8, "hidden": 4, "n_test": 16, "logz_images": 8}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "tables" / "toy.csv"
    assert run("study", "toy", "--config", tmp_path / "params.yaml", "--out", out) == 0
    table, levels = pd.read_csv(out), pd.read_csv(tmp_path / "tables" / "toy_summary.csv")
    assert set(table.method) == {"closed_form", "single", "dual"} and len(table) == 3 * 16
    assert set(zip(levels.method, levels.sigma, strict=True)) == {
        (m, s) for m in ("closed_form", "single", "dual") for s in (1.0, 4.0)
    }
