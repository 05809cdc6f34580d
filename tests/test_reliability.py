"""Reliability through the CLI: a resume never mixes two trainings; a full disk or an unusable
destination gives one clear error naming the file and leaves no partial output; data changed after
`prepare` stops `train` and `nll` before any work.

A full disk is simulated with RLIMIT_FSIZE (writes past the limit fail with EFBIG, as on a full
disk; chmod would not stop root), in one subprocess that runs every case: this file run as a script.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _train_helpers import SPEC, TINY_UNET, dual_score, fresh_model, make_images, source, tiny_spec
from image_density import cli
from image_density.checkpoint import CheckpointError
from image_density.train import train

UNET = TINY_UNET
TRAIN = {"steps": 2, "batch": 4, "t_min": 1.0e-4, "t_max": 100.0, "ckpt_every": 1, "log_every": 1}
LIKELIHOOD = {"t_max": 100.0, "logz_images": 8, "logz_draws": 1}


def write_params(root: Path, **changes) -> Path:
    cfg = {
        "seed": 0,
        "results": str(root / "results"),
        "datasets": {"field": {"kind": "gaussian_field", "size": 4, "n_train": 16, "n_test": 6}},
        "energy": {"datasets": ["field"], "unet": UNET, "train": TRAIN, "likelihood": LIKELIHOOD},
        "generalization": {"dataset": "field", "n": [2, 4], "unet": UNET, "train": TRAIN,
                           "likelihood": LIKELIHOOD},
    }  # fmt: skip
    for section, values in changes.items():
        cfg[section]["train"] = {**cfg[section]["train"], **values}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A prepared dataset and a trained energy model (its state kept apart in `state`)."""
    root = tmp_path_factory.mktemp("project")
    cfg = write_params(root)
    assert cli.main(["prepare", "--config", str(cfg), "--dataset", "field"]) == 0
    assert run_train(cfg, root / "model", root / "state") == 0
    return root, cfg


def run_train(cfg, out, state, *extra) -> int:
    args = ["train", "--config", cfg, "--model", "energy", "--dataset", "field", "--out", out,
            "--ckpt-dir", state, "--no-progress", *extra]  # fmt: skip
    return cli.main([str(a) for a in args])


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------- 2. changed settings vs resume


CHANGES = [{"lr": 0.02}, {"batch": 8}, {"t_min": 1e-3}, {"t_max": 5.0}, {"seed": 1}, {"ema": 0.5},
           {"hflip": True}, {"lr_halve_every": 3}]  # fmt: skip


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: next(iter(c)))
def test_resume_with_other_train_settings_is_refused_naming_them(tmp_path, change):
    images = make_images()
    train(fresh_model(), dual_score, source(images), tiny_spec(steps=2), tmp_path, SPEC, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    ((key, new),) = change.items()
    old = tiny_spec().model_dump()[key]
    with pytest.raises(CheckpointError) as err:
        spec = tiny_spec(steps=4, **change)
        train(fresh_model(), dual_score, source(images), spec, tmp_path, SPEC, progress=False)
    msg = str(err.value)
    assert f"train.{key} {old!r} -> {new!r}" in msg and f"delete {tmp_path}" in msg
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # untouched, nothing trained


def test_more_steps_and_other_intervals_resume(tmp_path):
    images = make_images()
    train(fresh_model(), dual_score, source(images), tiny_spec(steps=2), tmp_path, SPEC, progress=False)
    spec = tiny_spec(steps=4, ckpt_every=3, log_every=2)
    res = train(fresh_model(), dual_score, source(images), spec, tmp_path, SPEC, progress=False)
    assert (res.resumed_from, res.step) == (2, 4)


def test_cli_refuses_a_changed_lr_or_subset_before_any_work(project, tmp_path, capsys):
    root, _ = project
    state = tmp_path / "state"
    shutil.copytree(root / "state", state)
    before = (state / "checkpoint.pt").read_bytes()
    cfg = write_params(tmp_path, energy={"lr": 1e-3, "steps": 3})
    data = ["--data", root / "results/data/field"]
    assert run_train(cfg, tmp_path / "out", state, *data) == 2
    err = capsys.readouterr().err
    assert "train.lr 0.0005 -> 0.001" in err and str(state) in err and "to train from scratch" in err
    assert (state / "checkpoint.pt").read_bytes() == before and not (tmp_path / "out").exists()
    # a generalization model resumed as another subset or N would mix two training sets
    gen = tmp_path / "gen"
    assert run_train(cfg, tmp_path / "A2", gen, *data, "--subset", "A", "--n", "2") == 0
    assert run_train(cfg, tmp_path / "A4", gen, *data, "--subset", "A", "--n", "4") == 2
    assert "n 2 -> 4" in capsys.readouterr().err and not (tmp_path / "A4").exists()


# ------------------------------------------------------- 3. full disk, unusable destinations


def _fsize_cases(cases: list[dict]) -> list[dict]:
    """In the subprocess: each case {"limit": bytes | None, "args": [...], "env": {...}} runs
    `image-density ARGS` with writes limited to `limit` bytes per file -> {"rc", "err"}."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    results = []
    for case in cases:
        err = io.StringIO()
        os.environ.update(case["env"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (case["limit"] or resource.RLIM_INFINITY, hard))
        try:
            with contextlib.redirect_stderr(err):
                rc = cli.main(case["args"])
        except BaseException as exc:  # an error that escaped the CLI's handling
            rc = f"{type(exc).__name__}: {exc}"
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
        results.append({"rc": rc, "err": err.getvalue()})
    return results


@pytest.fixture(scope="module")
def disk_full(project, tmp_path_factory):
    """Each writer of the pipeline with a disk that fills up under it; {case: (rc, stderr, folder)}."""
    root, cfg = project
    tmp = tmp_path_factory.mktemp("full")
    model, state = root / "model", root / "state"
    ckpt_size, model_size = (state / "checkpoint.pt").stat().st_size, (model / "model.pt").stat().st_size
    finished = tmp / "finished-state"  # at the last step: a rerun only writes metrics.jsonl + model.pt
    shutil.copytree(state, finished)
    store = tmp / "store"
    big = tmp / "big.bin"
    big.write_bytes(os.urandom(4 << 20))
    (tmp / "table.csv").write_text("dataset,value\nfield,1\n")
    track = ["track", "--config", cfg, "--experiment", "energy", "--run-name", "field-energy",
             "--curves", model / "metrics.jsonl"]  # fmt: skip
    train = ["train", "--config", cfg, "--model", "energy", "--dataset", "field", "--no-progress"]
    cases = {
        "prepare": (600, ["prepare", "--config", cfg, "--dataset", "field", "--out", tmp / "prepare/field"]),
        "checkpoint": (ckpt_size // 2, [*train, "--out", tmp / "checkpoint/out",
                                        "--ckpt-dir", tmp / "checkpoint/state"]),
        "model": (model_size // 2, [*train, "--out", tmp / "model/out", "--ckpt-dir", finished]),
        "nll": (200, ["nll", "--config", cfg, "--model-path", model / "model.pt", "--dataset", "field",
                      "--table", tmp / "nll/nll.csv"]),
        # a store with one run, then a rerun whose artifact does not fit; a new store that does not fit
        "track_first": (None, [*track, "--table", tmp / "table.csv", "--out", store / "ids.json"]),
        "track": (3 << 20, [*track, "--artifact", big, "--out", store / "ids.json"]),
        "track_store": (64 << 10, [*track, "--out", tmp / "track_store/ids.json"]),
    }  # fmt: skip
    uri = {name: f"sqlite:///{tmp / ('track_store' if name == 'track_store' else 'store') / 'mlflow.db'}"
           for name in cases}  # fmt: skip
    payload = [{"limit": limit, "args": [str(a) for a in args], "env": {"MLFLOW_TRACKING_URI": uri[name]}}
               for name, (limit, args) in cases.items()]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--fsize", json.dumps(payload)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.strip().splitlines()[-1])
    return {name: (r["rc"], r["err"], tmp / name) for name, r in zip(cases, results, strict=True)}


def test_disk_full_while_preparing_leaves_no_folder(disk_full):
    rc, err, folder = disk_full["prepare"]
    assert rc == 2 and f"cannot write {folder / 'field'}: File too large" in err, err
    assert files(folder) == []  # neither the dataset nor its temp folder, nor its lock


def test_disk_full_at_a_checkpoint_leaves_no_checkpoint_nor_model(disk_full):
    rc, err, folder = disk_full["checkpoint"]
    assert rc == 2 and f"cannot write {folder / 'state/checkpoint.pt'}: File too large" in err, err
    assert files(folder) == ["out", "state", "state/checkpoint.metrics.jsonl"]


def test_disk_full_at_the_model_file_leaves_neither_output(disk_full):
    rc, err, folder = disk_full["model"]
    assert rc == 2 and f"cannot write {folder / 'out/model.pt'}: File too large" in err, err
    assert files(folder) == ["out"]  # no metrics.jsonl without its model.pt, no temp file, no lock


def test_disk_full_at_the_nll_table_leaves_no_table(disk_full):
    rc, err, folder = disk_full["nll"]
    assert rc == 2 and "cannot write" in err and "nll_per_image/field_energy_test.csv" in err, err
    assert "File too large" in err and files(folder) == ["nll_per_image"]  # no table, no temp file


def test_disk_full_while_tracking_keeps_the_previous_run(disk_full):
    assert disk_full["track_first"][0] == 0, disk_full["track_first"][1]
    rc, err, folder = disk_full["track"]
    assert rc == 2 and f"cannot copy {folder.with_name('big.bin')} to " in err, err
    assert "File too large" in err
    store = folder.with_name("store")
    assert not (store / "ids.json.tmp").exists()
    with contextlib.closing(sqlite3.connect(store / "mlflow.db")) as db:
        runs = db.execute("SELECT status, lifecycle_stage FROM runs WHERE name = 'field-energy' "
                          "ORDER BY start_time").fetchall()  # fmt: skip
    # the first run stays the one finished, active run; the new one is marked failed
    assert runs == [("FINISHED", "active"), ("FAILED", "active")]
    ids = json.loads((store / "ids.json").read_text())  # written by the first call, unchanged
    assert ids["run_name"] == "field-energy"


def test_disk_full_while_creating_the_mlflow_store_is_named(disk_full):
    rc, err, folder = disk_full["track_store"]
    assert rc == 2, err
    assert f"cannot write the MLflow store sqlite:///{folder}/mlflow.db: disk I/O error" in err
    assert not (folder / "ids.json").exists()


def test_unusable_destinations_fail_before_any_work(project, tmp_path, capsys, monkeypatch):
    root, cfg = project
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main(["prepare", "--config", str(cfg), "--dataset", "field", "--out", str(blocker / "d")]) == 2
    assert f"File exists: '{blocker}'" in capsys.readouterr().err
    state = tmp_path / "state"
    assert run_train(cfg, blocker / "out", state, "--data", root / "results/data/field") == 2
    assert f"File exists: '{blocker}'" in capsys.readouterr().err  # making the folder of --out
    assert not (state / "checkpoint.pt").exists()  # refused before the first step

    calls = []
    monkeypatch.setattr("image_density.likelihood.log_z", lambda *a, **k: calls.append(1))
    args = ["nll", "--config", cfg, "--model-path", root / "model/model.pt", "--dataset", "field"]
    assert cli.main([str(a) for a in [*args, "--table", blocker / "nll.csv"]]) == 2
    assert str(blocker) in capsys.readouterr().err and calls == []


# ---------------------------------------------------------------- 5. data changed after prepare


def test_changed_data_stops_train_and_nll_before_any_work(project, tmp_path, capsys, monkeypatch):
    root, cfg = project

    def changed(split: str) -> Path:  # a copy of the prepared data, one bit of `split` flipped
        data = tmp_path / f"data-{split}"
        shutil.copytree(root / "results/data/field", data)
        with open(data / f"{split}.npy", "r+b") as f:
            f.seek(-1, 2)
            last = f.read(1)
            f.seek(-1, 2)
            f.write(bytes([last[0] ^ 1]))
        return data

    data = changed("train")
    assert run_train(cfg, tmp_path / "out", tmp_path / "state", "--data", data) == 2
    assert f"prepared dataset {data}: train.npy changed since it was prepared" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()

    calls = []
    monkeypatch.setattr("image_density.likelihood.log_z", lambda *a, **k: calls.append(1))
    table = tmp_path / "tables/nll.csv"
    args = ["nll", "--config", cfg, "--model-path", root / "model/model.pt", "--dataset", "field", "--data",
            changed("test"), "--train-data", root / "results/data/field", "--table", table]  # fmt: skip
    assert cli.main([str(a) for a in args]) == 2
    assert "test.npy changed since it was prepared" in capsys.readouterr().err
    assert calls == [] and files(table.parent) == []  # stopped before log Z, nothing written


def test_broken_meta_json_is_named(project, tmp_path, capsys):
    root, cfg = project
    data = tmp_path / "data"
    shutil.copytree(root / "results/data/field", data)
    meta = data / "meta.json"
    meta.write_text(meta.read_text()[:40])  # cut by a crash or a bad copy
    assert run_train(cfg, tmp_path / "out", tmp_path / "state", "--data", data) == 2
    assert f"prepared dataset {data}: meta.json is not valid JSON" in capsys.readouterr().err
    meta.write_text(json.dumps({"name": "field"}))
    assert run_train(cfg, tmp_path / "out", tmp_path / "state", "--data", data) == 2
    assert "meta.json lacks some of ['sha256'" in capsys.readouterr().err


if __name__ == "__main__" and sys.argv[1] == "--fsize":
    print(json.dumps(_fsize_cases(json.loads(sys.argv[2]))))
