"""benchmarks/speed.py and benchmarks/gpu.py in their tiny modes: they run, and every line is a
JSON figure with sane values (the real measurements are in the issue-8 report)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

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
