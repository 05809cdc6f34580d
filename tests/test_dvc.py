"""`dvc repro` / `dvc push` / `dvc pull` for real, on a copy of the working tree with tiny params.

The copy is a fresh git repository holding the files a clone would have (tracked + untracked, not
ignored), with tests/params_tiny.yaml as its params/demo.yaml, so dvc.yaml runs unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from _workflow_helpers import BIN, ROOT, TINY, env
from image_density import jobs

pytestmark = pytest.mark.workflow

OUTS = tuple(
    f"results/{out}"
    for out in ("raw", "data", "models", "checkpoints", "nll", "multiscale", "studies", "tables", "figures")
)


def run(repo: Path, *cmd: str, timeout: float = 300) -> str:
    res = subprocess.run(
        cmd, cwd=repo, env=env(), timeout=timeout, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}"
    return res.stdout


def dvc(repo: Path, *args: str, timeout: float = 300) -> str:
    return run(repo, str(BIN / "dvc"), *args, timeout=timeout)


def digests(repo: Path) -> dict[str, str]:
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for out in OUTS
        for p in sorted((repo / out).rglob("*"))
        if p.is_file()
    }


def copy_tree(dest: Path, *extra: str) -> Path:
    """The files a clone of the working tree would have (tracked + untracked, not ignored) and `extra`."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in [*filter(None, files), *extra]:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


# the job kinds (jobs.JOBS) each stage's Snakemake targets run
STAGE_JOBS = {
    "data": ["prepare_data"],
    "energy": ["train", "train_generalization"],
    "evaluate": ["nll"],
    "multiscale": [j for j in jobs.JOBS if j.startswith(("train_scale_", "multiscale_"))],
    "studies": [j for j in jobs.JOBS if j.startswith("study_")],
}


def test_stage_params_cover_what_their_jobs_read():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    staged = [kind for kinds in STAGE_JOBS.values() for kind in kinds]
    assert sorted(staged) == sorted(jobs.JOBS), "every job kind in exactly one stage"
    for stage, kinds in STAGE_JOBS.items():
        (listed,) = [sections for entry in stages[stage]["params"] for sections in entry.values()]
        read = {k[0] for kind in kinds for k in jobs.keys(kind, "any", checks=True)}
        assert read <= set(listed), f"stage {stage} reads {sorted(read - set(listed))} not in its params"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fresh clone of the working tree, reproduced once."""
    dest = copy_tree(tmp_path_factory.mktemp("clone"))
    params = yaml.safe_load(TINY.read_text())
    assert {"energy", "generalization", "multiscale", "studies"} <= set(params)  # every stage has work
    (dest / "params" / "demo.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(dest, "git", "init", "-q")
    out = dvc(dest, "repro", timeout=900)  # the whole tiny pipeline
    for stage in ("raw", "data", "energy", "evaluate", "multiscale", "studies", "tracking", "report"):
        assert f"Running stage '{stage}'" in out, out
    return dest


def test_repro_then_nothing_to_do(repo):
    for name in ("tables/nll.csv", "tables/nll_study.csv", "tables/multiscale_nll.csv", "figures/toy.png",
                 "metrics.json", "report.html"):  # fmt: skip
        assert (repo / "results" / name).is_file(), name
    assert (repo / "dvc.lock").is_file()
    assert (repo / "mlflow.db").is_file() and (repo / "results/tracking/energy.json").is_file()
    again = dvc(repo, "repro")
    assert "Running stage" not in again and "Data and pipelines are up to date." in again, again


def test_param_change_reruns_only_what_depends_on_it(repo):
    before = digests(repo)
    params_file = repo / "params" / "demo.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["energy"]["train"]["steps"] += 1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(repo, "repro")
    for stage in ("raw", "data", "multiscale"):
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    for stage in ("energy", "evaluate", "studies", "tracking", "report"):
        assert f"Running stage '{stage}'" in out, out
    after = digests(repo)
    changed = {k for k in before if before[k] != after.get(k)}
    assert any(k.startswith("results/models/energy/") for k in changed), changed
    assert {"results/tables/nll.csv", "results/tables/nll_study.csv", "results/figures/nll.png"} <= changed
    # Snakemake reran only the jobs whose settings changed: data, the generalization and multi-scale
    # models, and the studies that do not read the energy models stay
    kept = ("results/data/", "results/models/generalization/", "results/models/multiscale/",
            "results/tables/toy", "results/tables/generalization", "results/tables/multiscale_")  # fmt: skip
    assert not any(k.startswith(kept) for k in changed), changed
    assert "Data and pipelines are up to date." in dvc(repo, "status")


def test_a_new_seed_reruns_the_evaluations_and_retrains_nothing(repo):
    # the top-level seed is the evaluations' (jobs.JOBS): the stages holding evaluations rerun them,
    # and none retrains a model (a seed in the checkpoint keys once did, from the studies stage,
    # leaving the lock entries of the energy and multiscale stages stale)
    before = digests(repo)
    params_file = repo / "params" / "demo.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["seed"] = params.get("seed", 0) + 1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(repo, "repro")
    for stage in ("evaluate", "multiscale", "studies"):
        assert f"Running stage '{stage}'" in out, out
    for stage in ("raw", "data", "energy"):
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    assert "rule train" not in out and "rule train_scale" not in out, out
    after = digests(repo)
    owned = ("results/data/", "results/models/", "results/checkpoints/")
    assert {k: v for k, v in before.items() if k.startswith(owned)} == {
        k: v for k, v in after.items() if k.startswith(owned)
    }
    assert "Data and pipelines are up to date." in dvc(repo, "status")  # no stale lock entry


def test_raw_data_pointer_is_versioned(repo):
    manifest = json.loads((repo / "results/raw/manifest.json").read_text())
    params = yaml.safe_load((repo / "params/demo.yaml").read_text())
    assert set(manifest["datasets"]) == set(params["datasets"])
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert [o["path"] for o in lock["stages"]["raw"]["outs"]] == ["results/raw/manifest.json"]
    assert "results/raw/manifest.json" in [d["path"] for d in lock["stages"]["data"]["deps"]]


def test_plots_show_the_nll_table(repo):
    out = dvc(repo, "plots", "show", "--json")
    assert '"nll_bits_per_dim"' in out and '"errors"' not in out, out


def test_metrics_show_the_headline_numbers(repo):
    shown = json.loads(dvc(repo, "metrics", "show", "--json"))
    metrics = shown[""]["data"]["results/metrics.json"]["data"]
    name = yaml.safe_load((repo / "params/demo.yaml").read_text())["energy"]["datasets"][0]
    assert isinstance(metrics["nll"][name]["energy_test_bits_per_dim"], float), metrics
    assert {"denoising", "generalization", "toy", "multiscale_denoising", "multiscale_nll"} <= set(metrics)


def test_push_then_pull_in_a_fresh_clone_leaves_snakemake_nothing_to_do(repo, tmp_path):
    before = digests(repo)
    assert any(k.startswith("results/checkpoints/") and k.endswith("checkpoint.pt") for k in before)
    dvc(repo, "push")
    assert (repo / "dvc-storage" / "files").is_dir()  # the remote of .dvc/config, inside the clone
    # a new clone: the repository's files, its dvc.lock and params, the remote where it is shared
    clone = tmp_path / "clone"
    for name in (
        "dvc.lock",
        "params/demo.yaml",
        *(str(p.relative_to(repo)) for p in (repo / ".dvc").glob("config*")),
    ):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, clone / name)
    copy_tree(clone)
    shutil.copy2(repo / "params/demo.yaml", clone / "params/demo.yaml")
    run(clone, "git", "init", "-q")
    dvc(clone, "remote", "modify", "--local", "local", "url", str(repo / "dvc-storage"))
    dvc(clone, "pull")
    assert digests(clone) == before  # data, models, checkpoints, tables, figures
    assert "Data and pipelines are up to date." in dvc(clone, "status")
    # every target but tracking (the MLflow store is local to a machine, not a DVC output). A pull
    # writes files in no particular order and a clone has no .snakemake metadata, so Snakemake would
    # take an input written after its output for a newer one: `--touch` (README) sets the times in
    # the order of the DAG without running anything
    targets = ("data", "energy", "evaluate", "multiscale", "studies", "figures", "metrics")
    run(clone, str(BIN / "snakemake"), "-c1", "--touch", *targets)
    assert digests(clone) == before  # nothing was rerun
    dry = run(clone, str(BIN / "snakemake"), "-n", *targets)
    assert "Nothing to be done" in dry, dry
