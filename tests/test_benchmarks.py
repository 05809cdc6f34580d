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


def test_speed_rejects_a_bad_case(speed):
    with pytest.raises(SystemExit):
        speed.main(["--cases", "huge:32:64", "--figures", "step"])


def test_gpu_script_runs_on_cpu_tiny(capsys):
    gpu = _module("gpu")
    gpu.main(["--device", "cpu", "--tiny", "--reps", "1", "--nll-batches", "1", "--threads", "1"])
    rows = _lines(capsys)
    figures = [(r["figure"], r["precision"]) for r in rows]
    assert figures == [(f, p) for f in ("step", "nll", "layout") for p in ("fp32", "bf16")]
    for r in rows:
        assert r["device"] == "cpu" and r["channels"] == 3
        if r["figure"] == "nll":
            assert r["nll_images_per_s"] > 0 and r["nll_peak_mb"] > 0
        else:
            assert r["energy_step_s"] > 0 and r["denoiser_step_s"] > 0 and r["energy_over_denoiser"] > 0
            assert r["energy_peak_mb"] > 0


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
