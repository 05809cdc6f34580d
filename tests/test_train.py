"""The training loop: bit-identical resume, lr halving, EMA, NaN stop, SIGTERM, metrics, t and flips."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _train_helpers import SPEC, dual_score, fresh_model, make_images, source, tiny_spec
from image_density.checkpoint import CheckpointError, load_verified
from image_density.train import EXIT_INTERRUPTED, NonFiniteLoss, lr_at, step_generator, train

HELPERS = Path(__file__).with_name("_train_helpers.py")


def weights(path):
    return load_verified(path, kind="model")["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def read_metrics(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_resume_after_crash_is_bit_identical(tmp_path):
    images = make_images()
    spec = tiny_spec(steps=6, ckpt_every=2, ema=0.5, hflip=True)
    full = train(fresh_model(), dual_score, source(images), spec, tmp_path / "full", SPEC, progress=False)

    calls = []

    def crash(idx):
        calls.append(1)
        if len(calls) == 5:  # inside step 5, after the checkpoint of step 4
            raise RuntimeError("node died")

    with pytest.raises(RuntimeError, match="node died"):
        train(fresh_model(), dual_score, source(images, crash), spec, tmp_path / "cut", SPEC, progress=False)
    assert load_verified(tmp_path / "cut/checkpoint.pt")["step"] == 4
    resumed = train(
        fresh_model(seed=123), dual_score, source(images), spec, tmp_path / "cut", SPEC, progress=False
    )

    assert resumed.resumed_from == 4 and resumed.step == 6
    assert same(weights(full.model_path), weights(resumed.model_path))
    a, b = read_metrics(full.metrics_path), read_metrics(resumed.metrics_path)
    assert [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if k != "time"} == {k: v for k, v in rb.items() if k != "time"}


def test_outputs_metrics_and_extension(tmp_path):
    images = make_images()
    res = train(
        fresh_model(),
        dual_score,
        source(images),
        tiny_spec(steps=4, log_every=3),
        tmp_path,
        SPEC,
        config={"seed": 0},
        meta={"data_sha256": "abc", "name": "energy"},
        progress=False,
    )
    model = load_verified(res.model_path, kind="model")
    assert model["step"] == 4 and model["model_spec"] == SPEC and model["meta"]["name"] == "energy"
    rows = read_metrics(res.metrics_path)
    assert [r["step"] for r in rows] == [3, 4]  # every log_every, and the last step
    assert {"step", "lr", "time", "loss", "dsm", "tsm", "grad_norm"} <= rows[0].keys()
    # a finished run reruns without training; more steps continue from the checkpoint
    again = train(
        fresh_model(),
        dual_score,
        source(images),
        tiny_spec(steps=4, log_every=3),
        tmp_path,
        SPEC,
        meta={"data_sha256": "abc"},
        progress=False,
    )
    assert again.resumed_from == 4 and same(weights(again.model_path), model["model"])
    more = train(
        fresh_model(),
        dual_score,
        source(images),
        tiny_spec(steps=5, log_every=3),
        tmp_path,
        SPEC,
        meta={"data_sha256": "abc"},
        progress=False,
    )
    assert more.step == 5 and [r["step"] for r in read_metrics(more.metrics_path)] == [3, 4, 5]
    with pytest.raises(CheckpointError, match="past train.steps"):
        train(fresh_model(), dual_score, source(images), tiny_spec(steps=3), tmp_path, SPEC, progress=False)
    with pytest.raises(CheckpointError, match="sha256"):
        train(
            fresh_model(),
            dual_score,
            source(images),
            tiny_spec(steps=6),
            tmp_path,
            SPEC,
            meta={"data_sha256": "other"},
            progress=False,
        )
    with pytest.raises(CheckpointError, match="another network"):
        train(
            fresh_model(),
            dual_score,
            source(images),
            tiny_spec(steps=6),
            tmp_path,
            {**SPEC, "width": 8},
            progress=False,
        )


def test_lr_halving():
    spec = tiny_spec(lr=0.1, lr_halve_every=3)
    assert [lr_at(spec, s) for s in range(7)] == [0.1] * 3 + [0.05] * 3 + [0.025]


def test_lr_in_metrics(tmp_path):
    res = train(
        fresh_model(),
        dual_score,
        source(make_images()),
        tiny_spec(lr=0.1, lr_halve_every=2),
        tmp_path,
        SPEC,
        progress=False,
    )
    assert [r["lr"] for r in read_metrics(res.metrics_path)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]


def test_ema_weights_in_model_file(tmp_path):
    w0 = fresh_model().state_dict()
    res = train(
        fresh_model(),
        dual_score,
        source(make_images()),
        tiny_spec(steps=1, ema=0.9),
        tmp_path,
        SPEC,
        progress=False,
    )
    w1 = load_verified(tmp_path / "checkpoint.pt")["model"]  # raw weights after one step
    ema = weights(res.model_path)
    for k in w0:
        torch.testing.assert_close(ema[k], 0.9 * w0[k] + 0.1 * w1[k])
    assert not torch.equal(ema["out.weight"], w1["out.weight"])


def test_nan_stops_with_step_and_terms_and_keeps_checkpoint(tmp_path):
    calls = []

    def objective(model, x, t, generator):
        calls.append(1)
        terms = dual_score(model, x, t, generator)
        if len(calls) == 3:
            terms["tsm"] = terms["tsm"] * float("nan")
            terms["loss"] = terms["dsm"] + terms["tsm"]
        return terms

    with pytest.raises(NonFiniteLoss) as err:
        train(
            fresh_model(),
            objective,
            source(make_images()),
            tiny_spec(ckpt_every=2),
            tmp_path,
            SPEC,
            progress=False,
        )
    msg = str(err.value)
    assert "step 3" in msg and "tsm=nan" in msg and "dsm=" in msg and "checkpoint.pt" in msg
    state = load_verified(tmp_path / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "model.pt").exists()


def test_t_range_flips_and_per_step_streams(tmp_path):
    seen = []

    def objective(model, x, t, generator):
        seen.append((x.clone(), t.clone()))
        return dual_score(model, x, t, generator)

    images = make_images(n=4)
    train(
        fresh_model(),
        objective,
        source(images),
        tiny_spec(steps=40, batch=8, t_min=1e-3, t_max=1.0, hflip=True, ckpt_every=100, log_every=100),
        tmp_path,
        SPEC,
        progress=False,
    )
    t = torch.cat([s[1] for s in seen])
    assert t.min() >= 1e-3 and t.max() <= 1.0
    assert abs(t.log().mean().item() - 0.5 * math.log(1e-3)) < 0.5  # log-uniform: mean log t at the middle
    x = torch.cat([s[0] for s in seen]) * 255
    plain = torch.from_numpy(images).float()
    is_plain = (x[:, None] == plain[None]).flatten(2).all(-1).any(1)
    is_flip = (x[:, None] == plain.flip(-1)[None]).flatten(2).all(-1).any(1)
    assert (is_plain | is_flip).all() and is_plain.any() and is_flip.any()
    a, b = step_generator(0, 0, 5, 0), step_generator(0, 1, 5, 0)
    assert not torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))  # ranks differ


def test_sigterm_checkpoints_and_exits_with_requeue_code(tmp_path):
    env = {"PYTHONPATH": str(HELPERS.parent), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, str(HELPERS), str(tmp_path / "cut"), "6"]
    out = subprocess.run([*run, "3"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == EXIT_INTERRUPTED, out.stderr
    assert "step 3" in out.stdout
    assert load_verified(tmp_path / "cut/checkpoint.pt")["step"] == 3
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    full = train(
        fresh_model(),
        dual_score,
        source(make_images()),
        tiny_spec(ckpt_every=100),
        tmp_path / "full",
        SPEC,
        progress=False,
    )  # what the helper script runs
    assert same(weights(tmp_path / "cut/model.pt"), weights(full.model_path))
    assert np.isfinite([r["loss"] for r in read_metrics(tmp_path / "cut/metrics.jsonl")]).all()
