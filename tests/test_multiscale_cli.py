"""Multi-scale params, `train-scale` and the evaluation commands end to end on a tiny config."""

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from image_density import cli
from image_density.checkpoint import load_model
from image_density.config import ConfigError, load_config, validate_config
from image_density.models.cnn import BlindCNN, ConditionalCNN
from image_density.models.local_energy import LocalEnergyCNN, LocalEnergyModel
from image_density.multiscale.nets import Net, parse_scale
from image_density.multiscale.train import plan_scale
from image_density.multiscale.wavelets import decompose
from image_density.studies.multiscale import lowpass_only, write_png_grid

TRAIN = {"steps": 2, "batch": 4, "ckpt_every": 1, "log_every": 1}
PARAMS = {
    "seed": 0,
    "datasets": {"field": {"kind": "gaussian_field", "size": 16, "n_train": 24, "n_test": 6}},
    "multiscale": {
        "datasets": ["field"],
        "levels": {"field": 2},
        "rf": [3],
        "cnn": {"channels": 4, "layers_lowpass": 3, "layers_conditional": 3, "padding_mode": "circular"},
        "train": TRAIN,
        "sampler": {"max_iter": 3, "n_samples": 2},
        "sigmas": [20, 60],
        "eval_images": 4,
        "superres_images": 2,
        "energy": {
            "unet": {
                "widths": [2],
                "mid_width": 2,
                "convs_per_block": 1,
                "emb_features": 2,
                "emb_dim": 4,
                "layout": "separate",
            },
            "emb_features": 2,
            "emb_dim": 4,
            "train": {**TRAIN, "t_min": 1e-4, "t_max": 100.0},
            "likelihood": {"t_max": 100.0, "logz_images": 8, "logz_draws": 2},
        },
    },
}
NETS = [("denoiser", "lowpass", None), ("denoiser", "0", 3), ("denoiser", "1", 3), ("denoiser", "flat", 3),
        ("energy", "lowpass", None), ("energy", "0", 3), ("energy", "1", 3)]  # fmt: skip


def run(*args) -> int:
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("ms")
    cfg = root / "params.yaml"
    cfg.write_text(yaml.safe_dump({**PARAMS, "results": str(root / "results")}))
    assert run("prepare", "--config", cfg, "--dataset", "field") == 0
    models = {}
    for family, scale, rf in NETS:
        out = root / "models" / family / f"{scale}-{rf}"
        args = ["--rf", rf] if rf else []
        assert run("train-scale", "--config", cfg, "--dataset", "field", "--model", family, "--scale", scale,
                   *args, "--out", out, "--ckpt-dir", root / "state" / family / f"{scale}-{rf}",
                   "--no-progress") == 0  # fmt: skip
        models[family, scale] = out / "model.pt"
    return root, cfg, models


def test_train_scale_writes_rebuildable_models(project):
    root, _, models = project
    cond, info = load_model(models["denoiser", "0"])
    assert isinstance(cond, ConditionalCNN) and cond.rf == 3
    assert info["meta"]["scale"] == 0 and info["meta"]["sigma_max"] > 0 and info["step"] == 2
    energy, info = load_model(models["energy", "1"])
    assert isinstance(energy, LocalEnergyModel) and info["model_spec"]["padding_mode"] == "circular"
    assert info["model_spec"]["band_var"] > 0 and info["meta"]["levels"] == 2
    assert (root / "state/energy/1-3/checkpoint.pt").is_file()
    # rerunning resumes (nothing left to do) instead of training again
    assert run("train-scale", "--config", root / "params.yaml", "--dataset", "field", "--model", "energy",
               "--scale", "1", "--rf", 3, "--out", models["energy", "1"].parent,
               "--ckpt-dir", root / "state/energy/1-3", "--no-progress") == 0  # fmt: skip


def test_denoise_sample_super_resolve_and_nll_commands(project, capsys):
    root, cfg, models = project
    denoisers = [p for (family, _), p in models.items() if family == "denoiser"]
    energies = [p for (family, _), p in models.items() if family == "energy"]
    out = root / "out"
    assert run("denoise", "--config", cfg, "--models", *denoisers, "--out", out / "denoising.csv") == 0
    with open(out / "denoising.csv") as f:
        rows = list(csv.DictReader(f))
    paper = [r for r in rows if r["source"] == "paper"]  # paper 2's flat CelebA-160 denoisers
    assert len(paper) == 20 and {r["rf"] for r in paper} == {"5", "9", "13", "23", "43"}
    p43 = next(r for r in paper if r["rf"] == "43" and r["sigma"] == "100.0")
    assert float(p43["psnr_out"]) == 24.43 and float(p43["psnr_in"]) == pytest.approx(20 * np.log10(2.55))
    rows = [r for r in rows if r["source"] == "ours"]
    assert {(r["model"], r["rf"]) for r in rows} == {("multiscale", "3"), ("flat", "3"), ("lowpass-only", "")}
    assert {r["sigma"] for r in rows} == {"20.0", "60.0"}
    assert all(np.isfinite(float(r["psnr_out"])) for r in rows)
    assert float(rows[0]["psnr_in"]) == pytest.approx(20 * np.log10(255 / 20))

    assert run("sample", "--config", cfg, "--models", *denoisers, "--rf", 3, "--out", out / "s.png") == 0
    assert np.load(out / "s.npy").shape == (2, 2, 1, 16, 16)  # rows: multi-scale, flat
    assert Image.open(out / "s.png").size[0] > 2 * 16
    with open(out / "s.sampler.csv") as f:  # the sampler's trace: per model, sample and stage
        trace = list(csv.DictReader(f))
    stages = {(r["model"], r["stage"]) for r in trace}
    assert stages == {("multiscale-rf3", s) for s in ("lowpass", "scale1", "scale0")} | {("flat-rf3", "flat")}
    assert len(trace) == 4 * 2  # 2 samples each
    for r in trace:  # converged means the stop rule held (40 dB at sigma_L = 0.01); else it says why
        assert 1 <= int(r["iterations"]) <= 3
        assert (r["status"] == "converged") == (float(r["final_snr_db"]) >= 40), r

    assert run("super-resolve", "--config", cfg, "--models", *denoisers, "--rf", 3, "--out", out / "sr.png",
               "--table", out / "sr.csv") == 0  # fmt: skip
    grid = np.load(out / "sr.npy")
    assert grid.shape == (2, 2 + 3, 1, 16, 16)  # per image: original, low-pass only, 2 samples, mean
    x = torch.from_numpy(grid[:, 0])
    torch.testing.assert_close(
        torch.from_numpy(grid[:, 1]), lowpass_only(decompose(x, 2)[0], 2, "haar", "orthonormal")
    )
    with open(out / "sr.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["model"] == "multiscale-rf3" and float(row["psnr_lowpass_only"]) > 0
    with open(out / "sr.sampler.csv") as f:
        trace = list(csv.DictReader(f))
    assert len(trace) == 2 * 2 * 2 and {r["stage"] for r in trace} == {"scale0", "scale1"}  # images x draws
    not_converged = sum(r["status"] != "converged" for r in trace)
    assert int(row["n_capped"]) + int(row["n_diverged"]) == not_converged

    assert run("multiscale-nll", "--config", cfg, "--models", *energies, "--table", out / "nll.csv") == 0
    with open(out / "nll.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["model"] == "multiscale-rf3" and row["split"] == "test" and row["n_images"] == "4"
    parts = sum(
        float(row[k])
        for k in ("nll_lowpass_bits_per_dim", "nll_scale0_bits_per_dim", "nll_scale1_bits_per_dim")
    )
    assert float(row["nll_bits_per_dim"]) == pytest.approx(parts)  # continuous data: no +8
    assert float(row["exact_bits_per_dim"]) < 0  # the field's entropy
    # denoisers and energies do not mix
    assert run("multiscale-nll", "--config", cfg, "--models", *denoisers, "--table", out / "x.csv") == 2
    assert "takes energy networks" in capsys.readouterr().err


def test_plan_refusals_name_the_option(project):
    _, cfg_path, _ = project
    cfg = load_config(cfg_path)
    for args, message in [
        (("nope", "denoiser", 0, 3), "not in multiscale.datasets"),
        (("field", "denoiser", 2, 3), r"j in 0\.\.1"),
        (("field", "denoiser", 0, 5), r"one of multiscale.rf = \[3\]"),
        (("field", "denoiser", "lowpass", 3), "no --rf"),
        (("field", "energy", "flat", 3), "denoiser baseline"),
        (("field", "score", 0, 3), "--model must be"),
    ]:
        with pytest.raises(ConfigError, match=message):
            plan_scale(cfg, *args)
    with pytest.raises(ConfigError, match="--scale must be"):
        parse_scale("fine")
    no_energy = validate_config({**PARAMS, "multiscale": {**PARAMS["multiscale"], "energy": None}})
    with pytest.raises(ConfigError, match="multiscale.energy"):
        plan_scale(no_energy, "field", "energy", 0, 3)


@pytest.mark.parametrize(("net", "folder"), [
    (Net("denoiser", "lowpass"), "lowpass"),
    (Net("denoiser", "flat", 9), "flat-rf9"),
    (Net("energy", 2, 13), "2-rf13"),
])  # fmt: skip
def test_a_network_and_its_folder_round_trip(net, folder):
    assert net.folder == folder and Net.parse(net.family, folder) == net
    assert net.name == f"{net.family}-{folder}"  # its meta and MLflow name
    # the options `train-scale` takes for it plan that same network
    opts = net.cli_args.split()
    assert parse_scale(opts[1]) == net.scale and (int(opts[3]) if len(opts) > 2 else None) == net.rf


@pytest.mark.parametrize("folder", ["lowpass-rf3", "flat", "0-rf", "x-rf3", "0_rf3"])
def test_a_folder_that_is_no_network_is_refused(folder):
    with pytest.raises(ConfigError, match="no multi-scale network folder"):
        Net.parse("denoiser", folder)


def test_levels_per_dataset():
    raw = copy.deepcopy(PARAMS)
    raw["datasets"]["big"] = {"kind": "gaussian_field", "size": 16, "n_train": 4, "n_test": 2}
    raw["multiscale"]["datasets"] = ["field", "big"]
    raw["multiscale"]["energy"] = None
    raw["multiscale"]["levels"] = 2  # one number: every dataset
    assert validate_config(raw).multiscale.levels == {"field": 2, "big": 2}
    raw["multiscale"]["levels"] = {"field": 2, "big": 4}
    assert validate_config(raw).multiscale.levels_of("big") == 4
    for levels, message in [
        ({"field": 2}, r"multiscale\.levels: no entry for dataset 'big'"),
        ({"field": 2, "big": 3, "other": 1}, r"multiscale\.levels\.other: 'other' is not in"),
        (
            {"field": 5, "big": 3},
            r"multiscale\.datasets\.0: dataset 'field' has size 16, not divisible by 2\^5",
        ),
        ({"field": 0, "big": 3}, r"multiscale\.levels\.field = 0"),
    ]:
        raw["multiscale"]["levels"] = levels
        with pytest.raises(ConfigError, match=message):
            validate_config(raw)
    paper = load_config(Path(__file__).parents[1] / "params/paper.yaml").multiscale
    assert paper.levels == {"celeba160": 2, "celeba320": 3}


def test_png_grid(tmp_path):
    grid = np.linspace(0, 1, 2 * 3 * 1 * 4 * 4).reshape(2, 3, 1, 4, 4)
    write_png_grid(grid, tmp_path / "g.png", min_side=8, gap=1)
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape == (2 * 8 + 1, 3 * 8 + 3 - 1)  # zoom 2, 1-pixel gaps
    assert img[0, 0] == 0 and img[-1, -1] == 255 and img[8, 0] == 255  # gap rows are white
    with pytest.raises(ValueError, match="rows, columns"):
        write_png_grid(grid[0], tmp_path / "bad.png")


def test_circular_padding_makes_the_cnns_periodic():
    # cnn.padding_mode "circular" for periodic images (the Gaussian fields): shift-equivariant networks
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    shift = lambda v: torch.roll(v, (3, 5), dims=(2, 3))  # noqa: E731
    blind = BlindCNN(1, layers=3, width=4, rf=5, padding_mode="circular").eval()
    with torch.no_grad():
        torch.testing.assert_close(blind(shift(x)), shift(blind(x)))
    energy = LocalEnergyModel(LocalEnergyCNN(3, 1, layers=3, width=4, rf=5, padding_mode="circular"))
    torch.nn.init.normal_(energy.net.convs[-1].weight)
    d, t = torch.randn(2, 3, 8, 8), torch.full((2,), 0.1)
    with energy.bind(shift(x)):
        shifted = energy.energy(shift(d), t)
    with energy.bind(x):
        torch.testing.assert_close(shifted, energy.energy(d, t))


def test_epoch_schedule_is_the_releases_per_scale():
    # training.py: num_epochs = 500 * 4^j, lr halved every 50 * 4^j epochs; the low-pass is trained
    # on the coefficients of scale J - 1, the flat network on images (j = 0)
    from image_density.config import load_config
    from image_density.multiscale.train import epoch_train_spec, plan_scale

    cfg = load_config("params/paper.yaml")
    n_train, batch = 162_770, cfg.multiscale.train.batch  # CelebA's train partition
    per_epoch = -(-n_train // batch)  # 318
    for scale, rf, j in [("flat", 5, 0), (0, 5, 0), (1, 9, 1), ("lowpass", None, 1)]:
        plan = plan_scale(cfg, "celeba160", "denoiser", scale, rf)
        spec = epoch_train_spec(cfg, plan, n_train)
        assert (spec.steps, spec.lr_halve_every) == (500 * 4**j * per_epoch, 50 * 4**j * per_epoch)
        assert spec.batch == batch and spec.lr == cfg.multiscale.train.lr
    plan = plan_scale(cfg, "celeba320", "denoiser", "lowpass", None)
    assert epoch_train_spec(cfg, plan, 1000).steps == 500 * 4**2 * 2
    # without a schedule (the demo), train.steps as given
    demo = load_config("params/demo.yaml")
    plan = plan_scale(demo, "faces", "denoiser", 1, 9)
    assert epoch_train_spec(demo, plan, 80) == demo.multiscale.train


def test_a_band_of_zero_variance_is_refused_before_sampling():
    from image_density.studies.multiscale import ScaleModels, check_bands

    models = ScaleModels("denoiser", "flatland", 2, "haar", "orthonormal", (1, 8, 8))
    models.infos = {
        "denoiser-lowpass": {"meta": {"sigma_max": 2.0}},
        "denoiser-0-rf3": {"meta": {"sigma_max": 0.0}},  # its band was 0 on every training image
    }
    check_bands(models, ["denoiser-lowpass"])
    with pytest.raises(ValueError, match="flatland: denoiser-0-rf3 trained on a band of zero variance"):
        check_bands(models, ["denoiser-lowpass", "denoiser-0-rf3"])


@pytest.mark.parametrize("noise_range", ["band_max", "release"])
def test_a_band_of_zero_variance_is_refused_before_training(tmp_path, capsys, noise_range):
    """Images constant within each 2x2 block: the finest details are 0, the next ones are not."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(12, 4, 4), dtype=np.uint8).repeat(2, axis=1).repeat(2, axis=2)
    np.save(tmp_path / "blocks.npy", blocks)  # (12, 8, 8)
    params = copy.deepcopy(PARAMS)
    params.update(results=str(tmp_path / "results"), datasets={"blocks": {"kind": "array",
                  "path": str(tmp_path / "blocks.npy"), "test_fraction": 0.25}})  # fmt: skip
    params["multiscale"].update(datasets=["blocks"], levels=2, noise_range=noise_range)
    cfg = tmp_path / "params.yaml"
    cfg.write_text(yaml.safe_dump(params))
    assert run("prepare", "--config", cfg, "--dataset", "blocks") == 0
    train = ["train-scale", "--config", cfg, "--dataset", "blocks", "--model", "denoiser", "--no-progress"]
    assert run(*train, "--scale", "0", "--rf", 3, "--out", tmp_path / "m0") != 0
    assert "blocks: the band of denoiser-0-rf3 is 0 on the first 9 training images (zero variance)" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "m0").exists()  # refused before any work
    assert run(*train, "--scale", "1", "--rf", 3, "--out", tmp_path / "m1") == 0
