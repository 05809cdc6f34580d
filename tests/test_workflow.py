"""The Snakemake workflow for real: plans for demo/paper params, lint/format clean, a tiny run.

Every run uses a temporary working directory (`--directory`), so nothing is written to the repo.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess

import pandas as pd
import pytest
import yaml

from _workflow_helpers import BIN, ROOT, TINY, env, report, snakemake
from image_density.config import load_config
from image_density.studies.metrics import SECTIONS

pytestmark = pytest.mark.workflow


def _planned_data(out: str) -> set[str]:
    """Dataset names of the prepare_data jobs in a dry-run's output."""
    return {
        line.split("dataset=")[1].split(",")[0].strip()
        for line in out.splitlines()
        if "wildcards: dataset=" in line
    }


def test_demo_plans_with_the_default_configfile(tmp_path):
    # exactly `snakemake -n all` in a checkout: the Snakefile's `configfile: params/demo.yaml`
    (tmp_path / "params").symlink_to(ROOT / "params")
    res = snakemake("-n", "all", workdir=tmp_path)
    assert res.returncode == 0, res.stdout
    demo = load_config(ROOT / "params/demo.yaml")
    assert _planned_data(res.stdout) == set(demo.datasets)
    assert not (tmp_path / "results").exists()  # a dry run writes nothing, not even the params


@pytest.fixture
def paper_workdir(tmp_path):
    """A working directory where the `path:` keys of params/paper.yaml exist (empty stand-ins)."""
    for spec in load_config(ROOT / "params/paper.yaml").datasets.values():
        if getattr(spec, "path", None) is not None:
            (tmp_path / spec.path).mkdir(parents=True, exist_ok=True)
    return tmp_path


def test_paper_plans(paper_workdir):
    res = snakemake("-n", "all", "--configfile", str(ROOT / "params/paper.yaml"), workdir=paper_workdir)
    assert res.returncode == 0, res.stdout
    paper = load_config(ROOT / "params/paper.yaml")
    assert _planned_data(res.stdout) == set(paper.datasets)  # and none of demo.yaml's
    planned = set(re.findall(r"^rule (\w+):", res.stdout, re.M))
    assert {"study_nll", "study_generalization", "figure_content", "figure_rf_ablation", "metrics"} <= planned


def test_slurm_profile_plans_paper_scale(paper_workdir):
    # `snakemake --profile slurm all` as typed from the repo root: the profile parses (valid plugin
    # option names), selects params/paper.yaml and asks for GPUs for training only
    res = snakemake("--profile", "slurm", "-n", "-p", "all", workdir=paper_workdir)
    assert res.returncode == 0, res.stdout
    assert "params/paper.yaml" in res.stdout
    # trainings requeue their job when interrupted; nothing else does
    commands = [line for line in res.stdout.splitlines() if "image-density" in line and "--attempt" in line]
    assert commands and all("--requeue 1" in line for line in commands), commands
    assert _planned_data(res.stdout) == set(load_config(ROOT / "params/paper.yaml").datasets)
    profile = yaml.safe_load((ROOT / "slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert "gpu" not in profile["default-resources"]
    assert profile["set-resources"]["train"]["gpu"] >= 1


def test_missing_raw_data_fails_before_any_job(tmp_path):
    res = snakemake("-n", "all", "--configfile", str(ROOT / "params/paper.yaml"), workdir=tmp_path)
    assert res.returncode != 0
    assert "MissingInputException" in res.stdout and "data/raw/" in res.stdout


def test_configfile_replaces_demo_and_reaches_the_cli(tmp_path):
    # --configfile replaces params/demo.yaml (no demo dataset leaks in); --config still overrides
    res = snakemake("-n", "all", "--configfile", str(TINY), "--config", "seed=7", workdir=tmp_path)
    assert res.returncode == 0, res.stdout
    assert _planned_data(res.stdout) == set(load_config(TINY).datasets)
    assert not (tmp_path / "results").exists()
    # a run writes them for the jobs, in a file of their own (named after the params file) that a run
    # of other params in the same results folder leaves alone
    tiny = load_config(TINY)
    target = f"results/data/{next(iter(tiny.datasets))}/meta.json"
    res = snakemake("-c1", target, "--configfile", str(TINY), "--config", "seed=7", workdir=tmp_path)
    assert res.returncode == 0, report(res, tmp_path)
    resolved = load_config(tmp_path / f"results/config/{TINY.stem}.resolved.yaml")
    assert resolved.seed == 7
    assert resolved.model_dump(exclude={"seed"}) == tiny.model_dump(exclude={"seed"})
    other = tmp_path / "other.yaml"
    other.write_text(TINY.read_text())
    res = snakemake("-c1", target, "--configfile", str(other), "--forcerun", target, workdir=tmp_path)
    assert res.returncode == 0, report(res, tmp_path)
    assert load_config(tmp_path / "results/config/other.resolved.yaml").seed == tiny.seed
    assert load_config(tmp_path / f"results/config/{TINY.stem}.resolved.yaml").seed == 7


def test_bad_params_give_the_typed_error_before_any_job(tmp_path):
    bad = yaml.safe_load(TINY.read_text())
    bad["datasets"]["field8"]["n_trian"] = 5
    bad["energy"]["datasets"] = ["nope"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    res = snakemake("-c1", "all", "--configfile", str(tmp_path / "bad.yaml"), workdir=tmp_path)
    assert res.returncode != 0
    assert "invalid params in" in res.stdout
    assert "datasets.field8.n_trian = 5: unknown key" in res.stdout
    assert not (tmp_path / "results").exists()


def test_multi_gpu_training_launches_torchrun(tmp_path):
    res = snakemake(
        "energy", "-n", "-p", "--configfile", str(TINY), "--set-resources", "train:gpu=2", workdir=tmp_path
    )
    assert res.returncode == 0, res.stdout
    assert "torchrun --standalone --nproc_per_node 2 -m image_density.cli train" in res.stdout


def test_lint_is_clean(tmp_path):
    (tmp_path / "params").symlink_to(ROOT / "params")
    res = snakemake("--lint", workdir=tmp_path)
    assert res.returncode == 0 and "Congratulations" in res.stdout, res.stdout


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(check):
    # pinned in pyproject.toml: another ruff version formats differently
    res = subprocess.run([str(BIN / "ruff"), *check, str(ROOT)], timeout=60, text=True, capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_snakefmt_is_clean():
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    res = subprocess.run(
        [str(BIN / "snakefmt"), "--check", *map(str, files)],
        env=env(),
        timeout=60,
        text=True,
        capture_output=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_tiny_pipeline_runs_and_is_then_up_to_date(tmp_path):
    res = snakemake("-c2", "-p", "all", "--configfile", str(TINY), workdir=tmp_path, timeout=300)
    assert res.returncode == 0, report(res, tmp_path)
    assert "torchrun" not in res.stdout and "image-density train" in res.stdout  # no GPUs: no torchrun
    cfg = load_config(TINY)
    results = tmp_path / "results"
    for name in cfg.datasets:
        assert {"train.npy", "test.npy", "meta.json"} <= {p.name for p in (results / "data" / name).iterdir()}
    for model in ("energy", "denoiser"):
        for name in cfg.energy.datasets:
            assert (results / "models" / model / name / "model.pt").stat().st_size > 0
            # resumable state outside the declared outputs, so a rerun never loses it
            assert len(list((results / "checkpoints" / model / name).glob("*/checkpoint.pt"))) == 1
    with open(results / "tables/nll.csv") as f:
        assert {row["dataset"] for row in csv.DictReader(f)} == set(cfg.energy.datasets)
    # paper 2 and the multi-scale energies: one model per network, tables gathered over datasets
    ms = cfg.multiscale
    for family, net in [("denoiser", "lowpass"), ("denoiser", "flat-rf3"), ("energy", "0-rf3")]:
        ckpts = results / "checkpoints/multiscale" / ms.datasets[0] / family / net
        assert len(list(ckpts.glob("*/checkpoint.pt"))) == 1
    for table in ("multiscale_denoising", "superres", "multiscale_nll"):
        with open(results / f"tables/{table}.csv") as f:
            rows = list(csv.DictReader(f))
        ours = [row for row in rows if row.get("source") != "paper"]
        assert {row["dataset"] for row in ours} == set(ms.datasets)
        # paper 2's flat denoisers, once however many datasets carry them (collect --dedupe)
        assert len(rows) - len(ours) == (20 if table == "multiscale_denoising" else 0)
    assert (results / "multiscale" / ms.datasets[0] / "samples-rf3.png").stat().st_size > 0
    # paper 1's studies, both papers' figures (from the tables), the headline numbers, the report
    names = cfg.energy.datasets
    tables = ["nll_study", "denoising", "generalization", "generalization_summary", "toy", "toy_summary"]
    tables += [f"{study}_{name}" for name in names for study in ("dimensionality", "content")]
    for table in tables + [f"content_{name}_summary" for name in names]:
        assert len(pd.read_csv(results / f"tables/{table}.csv")) > 0, table
    figures = ["nll", "denoising", "generalization", "toy", "multiscale_denoising", "rf_ablation"]
    figures += [f"{study}_{name}" for name in names for study in ("dimensionality", "content")]
    for figure in figures:
        for suffix in (".png", ".pdf"):
            assert (results / "figures" / f"{figure}{suffix}").stat().st_size > 0, figure
    metrics = json.loads((results / "metrics.json").read_text())
    assert set(metrics) == {*SECTIONS, "sources"}, metrics
    # every table it summarized, with the sha256 of what it read
    assert all(metrics["sources"][p] == hashlib.sha256((tmp_path / p).read_bytes()).hexdigest()
               for p in metrics["sources"]), metrics["sources"]  # fmt: skip
    assert isinstance(metrics["nll"][names[0]]["energy_test_bits_per_dim"], float)
    html = snakemake("--report", "results/report.html", "--configfile", str(TINY), workdir=tmp_path)
    assert html.returncode == 0, html.stdout
    page = (results / "report.html").read_text()
    assert all(f"{figure}.png" in page for figure in figures) and "samples-rf3.png" in page
    assert "Single versus dual score matching" in page  # a caption, rendered
    assert "system-message" not in page and "ERROR/" not in html.stdout  # captions are valid rst
    _assert_tracked(tmp_path, cfg)
    again = snakemake("-n", "all", "--configfile", str(TINY), workdir=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout
    # editing the training params reruns the trainings (which resume) and what depends on them only
    more = snakemake(
        "-n", "all", "--configfile", str(TINY), "--config", "energy={'train': {'steps': 6}}", workdir=tmp_path
    )
    assert more.returncode == 0, more.stdout
    assert "params have changed since last execution:\n        train\n" in more.stdout, more.stdout
    assert "rule prepare_data:" not in more.stdout
    # the evaluations' seed reruns evaluations, never a training (which draws from its train.seed)
    reseeded = snakemake("-n", "all", "--configfile", str(TINY), "--config", "seed=7", workdir=tmp_path)
    assert reseeded.returncode == 0 and "rule study_nll:" in reseeded.stdout, reseeded.stdout
    assert not any(
        f"rule {r}:" in reseeded.stdout
        for r in ("train", "train_scale", "train_scale_lowpass", "train_generalization")
    )


def _assert_tracked(workdir, cfg):
    """workflow/rules/tracking.smk logged to the working directory's store: a run per trained model
    with its config section, dataset hash and full loss curve, and a run per evaluation."""
    from mlflow import MlflowClient

    from image_density import tracking

    c = MlflowClient(f"sqlite:///{workdir / tracking.DB_NAME}")

    def runs(experiment):
        exp = c.get_experiment_by_name(experiment)
        assert exp is not None, experiment
        newest_last = c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
        parents = [r for r in newest_last if r.data.tags.get("pipeline.role") == "parent"]
        children = [r for r in newest_last if r not in parents]
        # one snakemake invocation: every run a child of the experiment's one parent run
        assert len(parents) == 1, (experiment, parents)
        assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {parents[0].info.run_id}
        return {r.info.run_name: r for r in children}  # the newest run of each name (history kept)

    names, gen, models = cfg.energy.datasets, cfg.generalization, workdir / "results" / "models"
    trained = {
        "energy": {f"{d}-{m}": models / m / d for d in names for m in ("energy", "denoiser")},
        "generalization": {f"{gen.dataset}-{s}{n}": models / "generalization" / gen.dataset / f"{s}{n}"
                           for n in gen.n for s in "AB"},
        "multiscale": {"-".join(p.parent.relative_to(models / "multiscale").parts): p.parent
                       for p in (models / "multiscale").glob("*/*/*/model.pt")},
    }  # fmt: skip
    assert len(trained["multiscale"]) == 5  # lowpass, 0-rf3, flat-rf3; energy lowpass, 0-rf3
    for experiment, folders in trained.items():
        logged = runs(experiment)
        assert set(folders) <= set(logged) and set(logged) - set(folders) <= {"study"}, logged
        for name, folder in folders.items():
            run = logged[name]
            assert run.info.status == "FINISHED"
            assert any(k.startswith(("energy.", "generalization.", "multiscale.")) for k in run.data.params)
            assert "config_sha256" in run.data.tags
            assert any(k.startswith("dataset.") and k.endswith(".sha256") for k in run.data.tags)
            curve = [p for p in tracking.read_curves(folder / "metrics.jsonl") if "loss" in p[2]]
            assert len(c.get_metric_history(run.info.run_id, "loss")) == len(curve) > 0, name
    # energy models and denoisers registered, the data as the runs' input, alias best on the energies
    for d in names:
        for m in ("energy", "denoiser"):
            (version,) = c.search_model_versions(f"name = '{m}-{d}'")
            assert version.run_id == runs("energy")[f"{d}-{m}"].info.run_id
        best = c.get_model_version_by_alias(f"energy-{d}", "best")
        assert float(best.tags["score"]) == runs("nll")[d].data.metrics["energy_test_bits_per_dim"]
        (data,) = runs("energy")[f"{d}-energy"].inputs.dataset_inputs
        assert data.dataset.name == d
    evaluations = {"nll", "denoising", "dimensionality", "content", "toy", "generalization",
                   "multiscale_denoising", "multiscale_nll", "superres", "synthesis", "metrics"}  # fmt: skip
    for experiment in evaluations:
        assert runs(experiment), experiment
    nll = runs("nll")["study"]
    assert set(nll.data.metrics) >= {f"{names[0]}.energy_test_bits_per_dim"}, nll.data.metrics
    assert [f.path for f in c.list_artifacts(nll.info.run_id, "figures")] == ["figures/nll.png"]
    samples = runs("synthesis")[cfg.multiscale.datasets[0]]
    assert [f.path for f in c.list_artifacts(samples.info.run_id, "figures")] == ["figures/samples-rf3.png"]
