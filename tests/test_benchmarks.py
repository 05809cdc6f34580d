"""benchmarks/speed.py and benchmarks/gpu.py in their tiny modes: they run, and every line is a
JSON figure with sane values (the real measurements are in the issue-8 report)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

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
