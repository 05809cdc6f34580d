"""`image-density train` / `nll` end to end on a tiny config, exit codes, and the tidy-table upsert."""

import csv
import os
import threading

import pytest
import yaml

from _train_helpers import TINY_UNET
from image_density import cli
from image_density.checkpoint import load_model, load_verified
from image_density.tables import read_rows, upsert_rows
from image_density.train import EXIT_INTERRUPTED, EXIT_NONFINITE, Interrupted, NonFiniteLoss

UNET = TINY_UNET
TRAIN = {"steps": 2, "batch": 4, "t_min": 1.0e-4, "t_max": 100.0, "ckpt_every": 1, "log_every": 1}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    cfg = {
        "seed": 0,
        "results": str(root / "results"),
        "datasets": {"field": {"kind": "gaussian_field", "size": 4, "n_train": 16, "n_test": 6}},
        "energy": {
            "datasets": ["field"],
            "unet": UNET,
            "train": TRAIN,
            "likelihood": {"t_max": 100.0, "logz_images": 8, "logz_draws": 2},
        },
        "generalization": {
            "dataset": "field",
            "n": [2, 4],
            "unet": UNET,
            "train": TRAIN,
            "likelihood": {"t_max": 100.0, "logz_images": 8, "logz_draws": 1},
        },
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["prepare", "--config", str(path), "--dataset", "field"]) == 0
    return root, path


def run(*args) -> int:
    return cli.main([str(a) for a in args])


def test_train_then_nll(project):
    root, cfg = project
    out, state = root / "results/models/field/energy", root / "results/state/field/energy"
    assert (
        run(
            "train",
            "--config",
            cfg,
            "--model",
            "energy",
            "--dataset",
            "field",
            "--out",
            out,
            "--ckpt-dir",
            state,
            "--no-progress",
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "model.pt"]
    assert (state / "checkpoint.pt").exists()
    model, info = load_model(out / "model.pt")
    assert info["meta"]["name"] == "energy" and info["step"] == 2
    assert info["model_spec"]["arch"] == "energy_unet" and info["config"]["energy.train"]["steps"] == 2
    assert hasattr(model, "energy")

    # Snakemake deletes the declared outputs before a rerun: the state folder brings them back
    for p in out.iterdir():
        p.unlink()
    assert (
        run(
            "train",
            "--config",
            cfg,
            "--model",
            "energy",
            "--dataset",
            "field",
            "--out",
            out,
            "--ckpt-dir",
            state,
            "--no-progress",
        )
        == 0
    )
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    table = root / "results/tables/nll.csv"
    for split in ("test", "train", "test"):
        assert (
            run(
                "nll",
                "--config",
                cfg,
                "--model-path",
                out / "model.pt",
                "--dataset",
                "field",
                "--split",
                split,
                "--table",
                table,
            )
            == 0
        )
    columns, rows = read_rows(table)
    assert [(r["model"], r["split"]) for r in rows] == [("energy", "test"), ("energy", "train")]
    assert {
        "n_images",
        "nll_bits_per_dim",
        "nll_std_bits_per_dim",
        "exact_bits_per_dim",
        "log_z_nats",
        "energy_form",
    } <= set(columns)
    assert rows[0]["n_images"] == "6" and float(rows[0]["exact_bits_per_dim"]) < 0  # continuous field
    with open(table.parent / "nll_per_image/field_energy_test.csv") as f:
        per_image = list(csv.DictReader(f))
    assert len(per_image) == 6 and float(per_image[0]["nll_nats"]) == pytest.approx(
        float(per_image[0]["nll_bits_per_dim"]) * 16 * 0.6931471805599453
    )


def test_generalization_model_and_denoiser(project, capsys):
    root, cfg = project
    out = root / "results/models/field/energy-A2"
    assert (
        run(
            "train",
            "--config",
            cfg,
            "--model",
            "energy",
            "--dataset",
            "field",
            "--subset",
            "A",
            "--n",
            2,
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    meta = load_verified(out / "model.pt")["meta"]
    assert meta["name"] == "energy-A2" and meta["section"] == "generalization"
    table = root / "gen.csv"
    assert (
        run("nll", "--config", cfg, "--model-path", out / "model.pt", "--dataset", "field", "--table", table)
        == 0
    )
    assert read_rows(table)[1][0]["model"] == "energy-A2"

    den = root / "results/models/field/denoiser"
    assert (
        run(
            "train",
            "--config",
            cfg,
            "--model",
            "denoiser",
            "--dataset",
            "field",
            "--out",
            den,
            "--no-progress",
        )
        == 0
    )
    assert (
        run("nll", "--config", cfg, "--model-path", den / "model.pt", "--dataset", "field", "--table", table)
        == 2
    )
    assert "has no energy" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--subset", "A"], "give both --subset and --n"),
        (["--subset", "B", "--n", "3"], "--n in [2, 4]"),
        (["--dataset", "nope"], "not in energy.datasets"),
    ],
)
def test_bad_arguments_fail_before_work(project, capsys, args, message):
    root, cfg = project
    base = {"--dataset": "field"}
    flags = ["--config", cfg, "--model", "energy", "--out", root / "bad", *args]
    if "--dataset" not in args:
        flags += ["--dataset", base["--dataset"]]
    assert run("train", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (root / "bad").exists()


@pytest.mark.parametrize(
    "error, code",
    [
        (Interrupted(3, "ck.pt"), EXIT_INTERRUPTED),
        (NonFiniteLoss("non-finite loss at step 3"), EXIT_NONFINITE),
    ],
)
def test_exit_codes(project, monkeypatch, capsys, error, code):
    root, cfg = project

    def fail(*a, **k):
        raise error

    monkeypatch.setattr("image_density.plan.train_from_config", fail)
    with pytest.raises(SystemExit) as exc:
        run("train", "--config", cfg, "--model", "energy", "--dataset", "field", "--out", root / "x")
    assert exc.value.code == code and "step 3" in capsys.readouterr().err


def test_upsert_replaces_by_key_and_keeps_order(tmp_path):
    path = tmp_path / "t.csv"
    upsert_rows(
        path,
        [{"dataset": "a", "split": "test", "v": 1.5}, {"dataset": "b", "split": "test", "v": 2}],
        ["dataset", "split"],
    )
    upsert_rows(path, [{"dataset": "a", "split": "test", "v": 0.1, "extra": "x"}], ["dataset", "split"])
    columns, rows = read_rows(path)
    assert columns == ["dataset", "split", "v", "extra"]
    assert [(r["dataset"], r["v"], r["extra"]) for r in rows] == [("a", "0.1", "x"), ("b", "2", "")]
    with pytest.raises(ValueError, match="lack key columns"):
        upsert_rows(path, [{"dataset": "c"}], ["dataset", "split"])


def test_concurrent_upserts_lose_nothing(tmp_path):
    path = tmp_path / "t.csv"
    threads = [
        threading.Thread(target=upsert_rows, args=(path, [{"k": i, "v": i}], ["k"])) for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(r["k"]) for r in read_rows(path)[1]) == list(range(16))


@pytest.mark.parametrize(
    "error, requeued", [(Interrupted(3, "ck.pt"), True), (NonFiniteLoss("nan at step 3"), False)]
)
def test_only_an_interrupted_training_requeues_its_slurm_job(project, monkeypatch, tmp_path, error, requeued):
    # a fake scontrol on PATH records its arguments; the job id comes from SLURM's environment
    root, cfg = project
    calls = tmp_path / "calls"
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}:{os.environ['PATH']}")

    def fail(*a, **k):
        raise error

    monkeypatch.setattr("image_density.plan.train_from_config", fail)
    train = ["train", "--config", cfg, "--model", "energy", "--dataset", "field", "--out", root / "x"]
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(SystemExit):
        run(*train, "--requeue", "1")  # not under SLURM: nothing to requeue
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with pytest.raises(SystemExit):
        run(*train)  # --requeue 0 (the default, and every rule's outside the SLURM profile)
    assert not calls.exists()
    with pytest.raises(SystemExit) as exc:
        run(*train, "--requeue", "1")
    assert exc.value.code == (EXIT_INTERRUPTED if requeued else EXIT_NONFINITE)
    assert (calls.read_text() if calls.exists() else "") == ("requeue 4242\n" if requeued else "")
