"""MLflow tracking: files -> one run per job, history kept on rerun, many jobs writing one sqlite store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from image_density import tracking
from image_density.cli import main


def write_curves(path: Path, n: int, scale: float = 1.0) -> Path:
    rows = [{"step": 10 * i, "loss": scale / (i + 1), "dsm": 0.5 * i, "phase": "train"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


# ----------------------------------------------------------------------------------- pure parts


def test_flatten_select_and_params_as_written():
    tree = {"energy": {"train": {"lr": 5e-4, "steps": 10}, "unet": {"widths": [8, 16]}}, "seed": 0}
    assert tracking.flatten(tree) == {
        "energy.train.lr": 5e-4,
        "energy.train.steps": 10,
        "energy.unet.widths": [8, 16],
        "seed": 0,
    }
    assert tracking.select(tree, ["energy.train"]) == {"energy": {"train": {"lr": 5e-4, "steps": 10}}}
    assert tracking.select(tree, []) == tree
    with pytest.raises(ValueError, match=r"no key 'energy.trian'.*\['train', 'unet'\]"):
        tracking.select(tree, ["energy.trian"])
    assert tracking.param_values(tree)["energy.unet.widths"] == "[8, 16]"


def test_read_curves_keeps_numbers_and_names_bad_lines(tmp_path):
    points = tracking.read_curves(write_curves(tmp_path / "m.jsonl", 3))
    assert [p[0] for p in points] == [0, 10, 20]
    assert points[1][2] == {"loss": 0.5, "dsm": 0.5}  # the string field is left out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0, "loss": 1}\n{"loss": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: each line needs an integer 'step'"):
        tracking.read_curves(bad)


def test_final_metrics_flattened_numbers_only(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"nll": {"field16": {"bits_per_dim": 4.2}}, "note": "x", "ok": True}))
    assert tracking.read_final_metrics(path) == {"nll.field16.bits_per_dim": 4.2}


def test_folder_hash_sees_names_and_contents(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "x.npy").write_bytes(b"123")
    assert tracking.file_sha256(a) == tracking.file_sha256(b)
    assert tracking.dataset_tags(a) == {"dataset.a.sha256": tracking.file_sha256(a)}  # no meta.json
    (b / "x.npy").rename(b / "y.npy")
    assert tracking.file_sha256(a) != tracking.file_sha256(b)


def test_parse_runs_names_the_bad_run_and_key():
    runs = tracking.parse_runs([
        {"experiment": "e", "run_name": "a", "sections": ["energy.train", ["datasets", "a.b"]],
         "curves": "m.jsonl", "metrics_key": ["nll", "a.b"], "tables": ["t.csv"], "params": {"n": 1}},
        {"experiment": "e", "run_name": "b"},
    ])  # fmt: skip
    assert runs[0].sections == ("energy.train", ("datasets", "a.b")) and runs[0].tables == (Path("t.csv"),)
    assert runs[0].curves == Path("m.jsonl") and runs[1].curves is None
    good = {"experiment": "e", "run_name": "a"}
    with pytest.raises(ValueError, match=r"runs\[1\]: unknown keys \['curve'\]"):
        tracking.parse_runs([good, {"experiment": "e", "run_name": "b", "curve": "m.jsonl"}])
    with pytest.raises(ValueError, match=r"runs\[0\]\.tables: expected a list of paths"):
        tracking.parse_runs([{"experiment": "e", "run_name": "a", "tables": "t.csv"}])
    with pytest.raises(ValueError, match=r"runs\[1\]: run e/a is listed twice"):
        tracking.parse_runs([{"experiment": "e", "run_name": "a"}] * 2)


def test_metrics_subtree_and_keys_with_dots(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"nll": {"a.b": {"bits": 4.2, "x": None}}, "toy": {"dual": {"err": 0.1}}}))
    assert tracking.read_final_metrics(path, ["nll", "a.b"]) == {"bits": 4.2}
    assert tracking.read_final_metrics(path, "toy") == {"dual.err": 0.1}
    with pytest.raises(ValueError, match=r"no key 'nll.c' in metrics file .*\['a.b'\]"):
        tracking.read_final_metrics(path, ["nll", "c"])


def test_meta_file_name_agrees_with_the_data_store():
    from image_density.data.store import META

    assert tracking.DATA_META == META


def test_importing_the_package_does_not_import_mlflow():
    code = "import sys, image_density.cli, image_density.tracking; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# ------------------------------------------------------------------------------ against MLflow


def test_run_round_trip_and_history_on_rerun(tmp_path, uri):
    from mlflow import MlflowClient

    curves = write_curves(tmp_path / "metrics.jsonl", 50)
    table = tmp_path / "nll.csv"
    table.write_text("model,dataset,split,bits_per_dim\nenergy,field16,test,4.2\n")
    figure = tmp_path / "curve.png"
    figure.write_bytes(b"\x89PNG fake")
    kwargs = dict(
        params={"train": {"lr": 0.001, "widths": [8, 16]}},
        curves=curves,
        metrics={"bits_per_dim": 4.2},
        tables=[table],
        figures=[figure],
        tags={"dataset.field16.sha256": "abc"},
        uri=uri,
    )
    first = tracking.log_run("energy", "field16-energy", **kwargs)
    c = MlflowClient(uri)
    run = c.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "field16-energy"
    assert run.data.params == {"train.lr": "0.001", "train.widths": "[8, 16]"}
    assert run.data.metrics["bits_per_dim"] == 4.2
    assert run.data.tags["dataset.field16.sha256"] == "abc"
    history = c.get_metric_history(first.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(10 * i, 1 / (i + 1)) for i in range(50)]
    paths = {f.path for d in ("tables", "figures", "curves") for f in c.list_artifacts(first.run_id, d)}
    assert paths == {"tables/nll.csv", "figures/curve.png", "curves/metrics.jsonl"}

    again = tracking.log_run("energy", "field16-energy", **kwargs)
    assert again.reused and again.run_id == first.run_id

    write_curves(curves, 50, scale=2.0)  # the job was rerun and wrote new curves
    second = tracking.log_run("energy", "field16-energy", **kwargs)
    assert not second.reused and second.run_id != first.run_id
    # history kept: both runs active, newest first, each with its own curves
    active = tracking.find_runs(c, first.experiment_id, "field16-energy")
    assert [r.info.run_id for r in active] == [second.run_id, first.run_id]
    assert c.get_metric_history(second.run_id, "loss")[0].value == 2.0
    assert c.get_metric_history(first.run_id, "loss")[0].value == 1.0
    # the experiment opens on runs and charts in MLflow 3's UI
    tags = c.get_experiment(first.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_cli_track_default_store_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tmp_path / "tiny.yaml"
    params.write_text("datasets:\n  g: {kind: gaussian_field, size: 8, n_train: 4, n_test: 2}\n")
    data = tmp_path / "results" / "data" / "g"
    data.mkdir(parents=True)
    (data / "train.npy").write_bytes(b"fake")
    (data / "meta.json").write_text(json.dumps({"sha256": {"train.npy": "ab12"}}))
    curves = write_curves(tmp_path / "metrics.jsonl", 5)
    marker = tmp_path / "results" / "tracking" / "g.json"
    args = ["track", "--config", str(params), "--experiment", "energy", "--run-name", "g-energy"]
    args += ["--curves", str(curves), "--section", "datasets.g", "--dataset", str(data)]
    args += ["--param", "model=energy", "--tag", "study=nll", "--out", str(marker)]
    assert main(args) == 0

    record = json.loads(marker.read_text())
    assert record["tracking_uri"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    from mlflow import MlflowClient

    run = MlflowClient(record["tracking_uri"]).get_run(record["run_id"])
    assert run.data.params["model"] == "energy"
    assert run.data.params["datasets.g.size"] == "8"
    assert not any(k.startswith("seed") for k in run.data.params)  # only the chosen section
    tags = run.data.tags
    assert tags["study"] == "nll" and len(tags["config_sha256"]) == 64
    assert tags["dataset.g.train.npy.sha256"] == "ab12"  # as listed in meta.json, not hashed again
    assert tags["dataset.g.sha256"] == tracking.dataset_tags(data)["dataset.g.sha256"]


def test_cli_track_many_runs_in_one_call(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tmp_path / "tiny.yaml"
    params.write_text("datasets:\n  g.v2: {kind: gaussian_field, size: 8, n_train: 4, n_test: 2}\n")
    data = tmp_path / "data" / "g.v2"
    data.mkdir(parents=True)
    (data / "meta.json").write_text(json.dumps({"sha256": {"train.npy": "ab12"}}))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"nll": {"g.v2": {"bits": 4.2}}}))
    runs = [
        {"experiment": "energy", "run_name": "g.v2-energy", "sections": [["datasets", "g.v2"]],
         "curves": str(write_curves(tmp_path / "m.jsonl", 5)), "datasets": [str(data)], "params": {"n": 3}},
        {"experiment": "nll", "run_name": "g.v2", "metrics": str(metrics), "metrics_key": ["nll", "g.v2"],
         "tables": [str(metrics)], "sections": ["seed"]},
    ]  # fmt: skip
    marker = tmp_path / "results" / "tracking" / "all.json"
    args = ["track", "--config", str(params), "--runs", json.dumps(runs), "--out", str(marker)]
    assert main(args) == 0
    records = json.loads(marker.read_text())
    assert [(r["experiment"], r["run_name"], r["reused"]) for r in records] == [
        ("energy", "g.v2-energy", False), ("nll", "g.v2", False)]  # fmt: skip
    from mlflow import MlflowClient

    c = MlflowClient(records[0]["tracking_uri"])
    energy, nll = (c.get_run(r["run_id"]).data for r in records)
    assert energy.params["datasets.g.v2.size"] == "8" and energy.params["n"] == "3"  # the key with a dot
    assert energy.tags["dataset.g.v2.train.npy.sha256"] == "ab12" and "config_sha256" in energy.tags
    assert len(c.get_metric_history(records[0]["run_id"], "loss")) == 5
    assert nll.metrics == {"bits": 4.2} and nll.params == {"seed": "0"}
    assert main(args) == 0  # the same files again: both runs left as they are
    assert [r["reused"] for r in json.loads(marker.read_text())] == [True, True]
    assert main([*args, "--experiment", "x"]) == 2
    assert "--runs lists every run: leave out --experiment" in capsys.readouterr().err


def test_cli_track_missing_input_fails_before_touching_the_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tmp_path / "tiny.yaml"
    params.write_text("datasets:\n  g: {kind: gaussian_field, size: 8, n_train: 4, n_test: 2}\n")
    args = ["track", "--config", str(params), "--experiment", "e", "--run-name", "r"]
    assert main([*args, "--curves", "nope/metrics.jsonl"]) == 2
    assert "nope/metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


LAUNCHER = textwrap.dedent(
    """
    import os, sys, traceback
    from pathlib import Path
    from image_density import tracking
    import mlflow.entities, mlflow.tracking  # imported once, then forked: the jobs start together

    tracking._METRICS_PER_BATCH = 20  # many small transactions: as much contention as possible
    uri, folder, n_jobs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    pids = []
    for i in range(n_jobs):
        pid = os.fork()
        if pid == 0:  # one job
            code = 0
            try:
                curves = folder / f"m{i}.jsonl"
                tracking.log_run("concurrency", f"job{i}", params={"job": i}, curves=curves, uri=uri)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    sys.exit(f"job exit codes {codes}" if any(codes) else 0)
    """
)


def test_eight_jobs_log_to_one_new_sqlite_store_at_once(tmp_path, uri):
    """A fresh store (its tables created under the race), 8 processes x 200 steps x 2 curves, written in
    batches of 20 points: every run and every point arrives."""
    n_jobs, n_steps = 8, 200
    for i in range(n_jobs):
        write_curves(tmp_path / f"m{i}.jsonl", n_steps, scale=i + 1)
    cmd = [sys.executable, "-c", LAUNCHER, uri, str(tmp_path), str(n_jobs)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr

    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("concurrency")
    runs = c.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"job{i}" for i in range(n_jobs))
    for r in runs:
        i = int(r.data.params["job"])
        assert r.info.status == "FINISHED"
        assert len(c.get_metric_history(r.info.run_id, "dsm")) == n_steps
        loss = sorted((m.step, m.value) for m in c.get_metric_history(r.info.run_id, "loss"))
        assert loss == [(10 * s, (i + 1) / (s + 1)) for s in range(n_steps)]


def test_live_run_logs_while_training_and_a_resumed_attempt_continues(tmp_path, uri):
    from mlflow import MlflowClient

    log, state = tmp_path / "checkpoint.metrics.jsonl", tmp_path / "mlflow_run.json"
    log.write_text("")
    live = tracking.LiveRun(log, state, "training", "energy/g", params={"train": {"lr": 0.1}},
                            tags={"mlflow.source.git.commit": "abc"}, every_s=0.05, uri=uri)  # fmt: skip
    c = MlflowClient(uri)
    with live:
        with open(log, "a") as f:
            for step in (1, 2):
                f.write(json.dumps({"step": step, "loss": 1.0 / step, "time": 0.1}) + "\n")
            f.write('{"step": 3, "lo')  # a line being written: not read yet
            f.flush()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # logged while the "training" still runs
            if live.run_id and len(c.get_metric_history(live.run_id, "loss")) == 2:
                break
            time.sleep(0.05)
        run = c.get_run(live.run_id)
        assert run.info.status == "RUNNING"
        with open(log, "a") as f:
            f.write('ss": 0.3, "time": 0.2}\n')
    run = c.get_run(live.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"train.lr": "0.1"}
    assert run.data.tags["mlflow.source.git.commit"] == "abc"
    assert (
        c.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    )
    assert [(m.step, m.value) for m in c.get_metric_history(live.run_id, "loss")] == [
        (1, 1.0),
        (2, 0.5),
        (3, 0.3),
    ]
    # a resumed attempt: the log cut back to the checkpoint's step 2, then steps 3-4 again
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4)))
    again = tracking.LiveRun(log, state, "training", "energy/g", params={}, tags={}, every_s=0.05, uri=uri)
    with again:
        time.sleep(0.3)
    assert again.run_id == live.run_id
    assert [m.step for m in c.get_metric_history(live.run_id, "loss")] == [1, 2, 3, 4]


def test_live_run_never_fails_the_training_when_the_store_is_down(tmp_path, capsys):
    log = tmp_path / "checkpoint.metrics.jsonl"
    log.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    down = "sqlite:////proc/no-such-dir/mlflow.db"  # a store that cannot be opened
    start = time.monotonic()
    with tracking.LiveRun(
        log, tmp_path / "s.json", "training", "x", params={}, tags={}, every_s=0.05, uri=down
    ):
        time.sleep(0.5)
    assert time.monotonic() - start < 5
    assert f"live logging to {down} failed" in capsys.readouterr().out


# ------------------------------------------- pipeline parents, models, registry, inputs, moving


def test_best_version_is_the_lowest_score_newest_on_ties():
    assert tracking.best_version([("1", 4.2), ("2", 3.9), ("3", 5.0)]) == "2"
    assert tracking.best_version([("1", 3.9), ("2", 3.9)]) == "2"
    assert tracking.best_version([]) is None


def _model_file(path: Path, seed: int) -> Path:
    import torch

    from _train_helpers import TINY_UNET
    from image_density.checkpoint import save_model
    from image_density.models import build_model

    torch.manual_seed(seed)
    spec = {"arch": "energy_unet", "channels": 1, **TINY_UNET}
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_model(path, weights=build_model(spec).state_dict(), model_spec=spec)


def test_models_registered_best_aliased_datasets_as_inputs_under_one_parent(tmp_path, uri, monkeypatch):
    import mlflow
    import numpy as np
    import torch
    from mlflow import MlflowClient

    from image_density.checkpoint import load_model

    data = tmp_path / "data" / "g"
    data.mkdir(parents=True)
    (data / "meta.json").write_text(
        json.dumps({"sha256": {"train.npy": "ab12"}, "shape": [1, 8, 8], "n_train": 4})
    )
    records = []
    for i, nll in enumerate([4.2, 3.9, 5.0]):  # three pipeline invocations, each a new model
        model = _model_file(tmp_path / f"m{i}" / "model.pt", seed=i)
        metrics = tmp_path / f"metrics{i}.json"
        metrics.write_text(json.dumps({"nll": {"g": {"energy_test_bits_per_dim": nll}}}))
        spec = tracking.RunSpec(
            "energy", "g-energy", model=model, registered_model="energy-g", metrics=metrics,
            metrics_key=("nll", "g"), best_by="energy_test_bits_per_dim", datasets=(data,),
        )  # fmt: skip
        other = tracking.RunSpec("energy", "g-denoiser", params={"lr": i})
        records.append(tracking.log_runs([spec, other], {}, pipeline=f"inv{i}", uri=uri))
    c = MlflowClient(uri)
    # one parent per invocation and experiment, holding that invocation's runs
    for i, (run, other) in enumerate(records):
        parent = c.get_run(c.get_run(run.run_id).data.tags["mlflow.parentRunId"])
        assert (
            parent.info.run_name == f"pipeline inv{i}"
            and parent.data.tags["pipeline.invocation"] == f"inv{i}"
        )
        assert c.get_run(other.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    parents = c.search_runs([records[0][0].experiment_id], "tags.`pipeline.role` = 'parent'")
    assert len(parents) == 3
    # versions 1..3; alias best on the lowest NLL (version 2)
    versions = {str(v.version) for v in c.search_model_versions("name = 'energy-g'")}
    assert versions == {"1", "2", "3"}
    best = c.get_model_version_by_alias("energy-g", "best")
    assert str(best.version) == "2" and best.run_id == records[1][0].run_id
    assert best.source.startswith("mlflow-artifacts:/energy/")  # relative to the store
    # the dataset as the run's input, its digest from the listed sha256
    inputs = c.get_run(records[0][0].run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [
        ("g", tracking.dataset_tags(data)["dataset.g.sha256"][:32])
    ]
    # the registered model loads offline and denoises as the model file does
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model("models:/energy-g@best")
    y = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    t = np.array([0.1, 0.5], dtype=np.float32)
    net, _ = load_model(tmp_path / "m1" / "model.pt")
    want = net.denoise(torch.from_numpy(y), torch.from_numpy(t)).detach().numpy()
    np.testing.assert_allclose(loaded.predict({"y": y, "t": t}), want, rtol=1e-5, atol=1e-6)


def test_the_store_folder_moves_with_its_artifacts(tmp_path):
    import shutil

    from mlflow import MlflowClient

    store = tmp_path / "a"
    figure = tmp_path / "curve.png"
    figure.write_bytes(b"\x89PNG fake figure")
    rec = tracking.log_run("nll", "g", figures=[figure], uri=f"sqlite:///{store / 'mlflow.db'}")
    moved = tmp_path / "b"
    shutil.move(store, moved)
    c = MlflowClient(f"sqlite:///{moved / 'mlflow.db'}")  # a plain client: the plugin resolves it
    assert c.get_experiment(rec.experiment_id).artifact_location == "mlflow-artifacts:/nll"
    got = Path(c.download_artifacts(rec.run_id, "figures/curve.png", str(tmp_path / "dl")))
    assert got.read_bytes() == figure.read_bytes()
    assert not store.exists()
