"""`dvc repro` / `dvc push` / `dvc pull` for real, on a copy of the working tree with tiny params.

The copy is a fresh git repository holding the files a clone would have (tracked + untracked, not
ignored), with tests/params_tiny.yaml as its params/demo.yaml, so dvc.yaml runs unchanged.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from _workflow_helpers import BIN, ROOT, TINY, env

pytestmark = pytest.mark.workflow

OUTS = ("results/data", "results/models", "results/nll", "results/tables")


def run(repo: Path, *cmd: str, timeout: float = 300) -> str:
    res = subprocess.run(
        cmd, cwd=repo, env=env(), timeout=timeout, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}"
    return res.stdout


def dvc(repo: Path, *args: str) -> str:
    return run(repo, str(BIN / "dvc"), *args)


def digests(repo: Path) -> dict[str, str]:
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for out in OUTS
        for p in sorted((repo / out).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fresh clone of the working tree, reproduced once."""
    dest = tmp_path_factory.mktemp("clone")
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    params = yaml.safe_load(TINY.read_text())
    # dvc.yaml names this section; the smallest one there is: one A/B pair, two steps
    params.setdefault(
        "generalization",
        {
            "dataset": params["energy"]["datasets"][0],
            "n": [1],
            "unet": params["energy"]["unet"],
            "train": {"steps": 2, "batch": 2, "ckpt_every": 2},
        },
    )
    (dest / "params" / "demo.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(dest, "git", "init", "-q")
    out = dvc(dest, "repro")
    assert "Running stage 'data'" in out and "Running stage 'evaluate'" in out, out
    return dest


def test_repro_then_nothing_to_do(repo):
    assert (repo / "results/tables/nll.csv").is_file()
    assert (repo / "dvc.lock").is_file()
    again = dvc(repo, "repro")
    assert "Running stage" not in again and "Data and pipelines are up to date." in again, again


def test_param_change_reruns_only_what_depends_on_it(repo):
    before = digests(repo)
    params_file = repo / "params" / "demo.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["energy"]["train"]["steps"] += 1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(repo, "repro")
    assert "Stage 'data' didn't change, skipping" in out, out
    assert "Running stage 'energy'" in out and "Running stage 'evaluate'" in out, out
    after = digests(repo)
    changed = {k for k in before if before[k] != after.get(k)}
    assert any(k.startswith("results/models/energy/") for k in changed), changed
    assert "results/tables/nll.csv" in changed
    # Snakemake reran only the jobs whose settings changed: data and the generalization models stay
    kept = ("results/data/", "results/models/generalization/")
    assert not any(k.startswith(kept) for k in changed), changed
    assert "Data and pipelines are up to date." in dvc(repo, "status")


def test_plots_show_the_nll_table(repo):
    out = dvc(repo, "plots", "show", "--json")
    assert '"nll_bits_per_dim"' in out and '"errors"' not in out, out


def test_push_delete_pull_gives_identical_files(repo):
    before = digests(repo)
    assert before
    dvc(repo, "push")
    assert (repo / "dvc-storage" / "files").is_dir()  # the remote of .dvc/config, inside the clone
    shutil.rmtree(repo / ".dvc" / "cache")
    for out in OUTS:
        shutil.rmtree(repo / out)
    dvc(repo, "pull")
    assert digests(repo) == before
    assert "Data and pipelines are up to date." in dvc(repo, "status")
