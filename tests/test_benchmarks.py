"""benchmarks/speed.py and benchmarks/gpu.py in their tiny modes: they run, and every line is a
JSON figure with sane values (the real measurements are in the issue-8 report); the claim benchmark
end to end on a tiny params file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from image_density.config import load_config

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _lines(capsys) -> list[dict]:
    out = capsys.readouterr().out.strip().splitlines()
    assert out, "no output"
    return [json.loads(line) for line in out]  # every line is one JSON object


@pytest.fixture(scope="module")
def speed():
    return _module("speed")


def test_speed_tiny(speed, capsys):
    speed.main(["--tiny", "--threads", "1", "--reps", "1"])
    rows = {r["figure"]: r for r in _lines(capsys)}
    assert set(rows) == {"step", "nll", "loader", "memory", "scaling"}
    for r in rows.values():
        assert r["machine"] and r["device"] == "cpu"
    step = rows["step"]
    assert step["threads"] == 1 and step["params"] > 0
    for key in ("forward_s", "forward_graph_s", "denoiser_step_s", "energy_loss_s", "energy_step_s"):
        assert step[key] > 0
    # the dual-score step does a forward, a VJP and backpropagates through both: more than a plain step
    assert step["energy_step_s"] > step["forward_graph_s"]
    assert step["energy_over_denoiser"] > 0
    nll = rows["nll"]
    assert nll["ode_nfe"] > 2 and nll["nll_over_ode"] > 1  # one forward pass beats an ODE solve
    loader = rows["loader"]
    assert loader["memmap"] and loader["loader_images_per_s"] > 0
    mem = rows["memory"]
    assert mem["measure"].startswith("VmHWM") and mem["energy_step_peak_mb"] >= mem["energy_step_base_mb"] > 0
    assert len(rows["scaling"]["energy_step_s"]) == len(rows["scaling"]["sizes"]) == 2


def test_speed_goals_tiny(speed, capsys, monkeypatch):
    """The goals figure's lines: every figure with a goal and a verdict (torch.compile replaced by the
    eager energy here: tests/test_likelihood.py checks the compiled NLL)."""
    monkeypatch.setattr(speed.likelihood, "compiled_energy", lambda model: model.energy)
    speed.main(["--tiny", "--figures", "goals", "--reps", "1"])
    rows = {r["name"]: r for r in _lines(capsys)}
    assert set(rows) == {
        "energy_step_s",
        "denoiser_step_s",
        "energy_over_denoiser",
        "forward_s",
        "backward_s",
        "nll_images_per_s",
        "nll_fast_minus_plain_bits_per_dim",
    }
    for r in rows.values():
        assert r["figure"] == "goals" and r["goal"] and isinstance(r["passed"], bool)
    e, dn = rows["energy_step_s"]["value"], rows["denoiser_step_s"]["value"]
    assert rows["energy_over_denoiser"]["value"] == pytest.approx(e / dn, rel=1e-2)
    assert rows["energy_step_s"]["passed"] == (e <= speed.RELEASE["energy_step_s"] / 3)
    assert rows["nll_fast_minus_plain_bits_per_dim"]["value"] == 0.0  # the same eager path twice
    assert rows["nll_fast_minus_plain_bits_per_dim"]["passed"]


def test_speed_rejects_a_bad_case(speed):
    with pytest.raises(SystemExit):
        speed.main(["--cases", "huge:32:64", "--figures", "step"])


def test_gpu_script_runs_on_cpu_tiny(capsys, monkeypatch):
    """Every figure but ddp (torch.compile replaced by the eager module: its compile takes minutes on
    the CPU; tests/test_likelihood.py checks the compiled NLL)."""
    gpu = _module("gpu")
    monkeypatch.setattr(gpu.torch, "compile", lambda fn, **kw: fn)
    gpu.main(["--device", "cpu", "--tiny", "--reps", "1", "--nll-batches", "1", "--threads", "1"])
    rows = _lines(capsys)
    figures = [(r["figure"], r.get("precision")) for r in rows]
    steps = [(f, p) for f in ("step", "compiled", "nll", "layout") for p in ("fp32", "bf16")]
    assert figures == [*steps, ("projection", None)]
    for r in rows:
        assert r["device"] == "cpu" and r["channels"] == 3
        if r["figure"] == "nll":
            assert r["nll_images_per_s"] > 0 and r["nll_compiled_images_per_s"] > 0 and r["nll_peak_mb"] > 0
        elif r["figure"] == "compiled":
            assert r["denoiser_step_s"] > 0 and "energy_step_s" not in r
        elif r["figure"] != "projection":
            assert r["energy_step_s"] > 0 and r["denoiser_step_s"] > 0 and r["energy_over_denoiser"] > 0
            assert r["energy_peak_mb"] > 0
    proj = rows[-1]
    fp32 = [r for r in rows if r.get("precision") == "fp32" and r["figure"] in ("step", "layout")]
    assert proj["step_s"]["energy"] == min(r["energy_step_s"] for r in fp32)
    cfg = load_config(gpu.PAPER)  # an energy and a denoiser per dataset, an A and a B per generalization N
    plan = proj["plan"]
    assert plan["energy"]["trainings"] == plan["denoiser"]["trainings"] == len(cfg.energy.datasets)
    assert plan["generalization"]["trainings"] == 2 * len(cfg.generalization.n)
    assert plan["energy"]["steps"] == cfg.energy.train.steps
    expected = sum(v["trainings"] * v["steps"] * proj["step_s"][v["model"]] for v in plan.values()) / 3600
    assert proj["gpu_hours_total"] == pytest.approx(expected, rel=1e-2, abs=0.1)


@pytest.mark.slow
def test_gpu_script_ddp_figure_on_two_cpu_processes(capsys):
    gpu = _module("gpu")
    gpu.main(["--device", "cpu", "--tiny", "--figures", "ddp", "--ddp", "2", "--ddp-steps", "1"])
    (row,) = _lines(capsys)
    assert row["figure"] == "ddp" and row["processes"] == [1, 2] and row["backend"] == "gloo"
    assert row["images_per_s"]["1"] > 0 and row["images_per_s"]["2"] > 0
    assert row["efficiency"] == pytest.approx(row["speedup"] / 2, abs=1e-3)


def test_multiscale_claim_tiny(tmp_path):
    """Every table of the claim benchmark, the NLL per RF of the energies beside the denoising table."""
    train = {"steps": 2, "batch": 4, "ckpt_every": 2, "log_every": 1}
    params = {
        "seed": 0,
        "results": str(tmp_path / "results"),
        "datasets": {"p16": {"kind": "natural_patches", "size": 16, "n_train": 32, "n_test": 4}},
        "multiscale": {
            "datasets": ["p16"], "levels": 2, "rf": [3, 5],
            "cnn": {"channels": 4, "layers_lowpass": 3, "layers_conditional": 3},
            "train": train, "sampler": {"max_iter": 2, "n_samples": 2},
            "sigmas": [20, 100], "eval_images": 4, "superres_images": 1,
            "energy": {"lowpass": "cnn", "emb_features": 2, "emb_dim": 4,
                       "train": {**train, "t_min": 1e-4, "t_max": 100.0},
                       "likelihood": {"t_max": 100.0, "logz_images": 8, "logz_draws": 1}},
        },
    }  # fmt: skip
    cfg = tmp_path / "params.yaml"
    cfg.write_text(yaml.safe_dump(params))
    _module("multiscale_claim").main(["--config", str(cfg), "--ms-rf", "3"])
    tables = tmp_path / "results/tables"
    claim = pd.read_csv(tables / "claim.csv")
    assert sorted(claim["sigma"]) == [20, 100] and set(claim["rf"]) == {3} and set(claim["largest_rf"]) == {5}
    assert (claim["ms_minus_flat_same_rf"] == claim["multiscale"] - claim["flat_same_rf"]).all()
    nll = pd.read_csv(tables / "nll.csv")
    assert nll["model"].tolist() == ["multiscale-rf3"] and nll["split"].tolist() == ["test"]
    parts = nll["nll_lowpass_bits_per_dim"] + nll["nll_scale0_bits_per_dim"] + nll["nll_scale1_bits_per_dim"]
    assert nll["nll_bits_per_dim"].iloc[0] == pytest.approx(8 + parts.iloc[0])  # 8-bit patches: +8
    seconds = pd.read_csv(tables / "train_seconds.csv")
    assert {"denoiser-flat-rf5", "energy-lowpass", "energy-1-rf3"} <= set(seconds["model"])
    assert (tmp_path / "results/figures/rf_ablation.png").is_file()
    assert len(pd.read_csv(tables / "superres.csv")) == 1
