"""Where the workflow keeps resumable training state: a folder per training, keyed by the settings a
checkpoint must share with the run resuming it (common.smk `ckpt_dir`, from jobs.checkpoint_key)."""

from __future__ import annotations

import re

import pytest
import yaml

from _workflow_helpers import TINY, snakemake

pytestmark = pytest.mark.workflow


def _ckpt_dirs(tmp_path, name: str, edit) -> set[str]:
    """--ckpt-dir of every planned training job, for the tiny params changed by `edit`."""
    raw = yaml.safe_load(TINY.read_text())
    edit(raw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = snakemake("-n", "-p", "all", "--configfile", str(path), workdir=tmp_path / name)
    assert res.returncode == 0, res.stdout
    return set(re.findall(r"--ckpt-dir '?([^' ]+)", res.stdout))


def test_more_steps_resume_other_settings_train_afresh_beside_the_old_state(tmp_path):
    def more_steps(raw):
        raw["energy"]["train"]["steps"] *= 2
        raw["multiscale"]["train"]["ckpt_every"] = 1

    def other_lr(raw):
        raw["energy"]["train"]["lr"] = 0.123

    def other_seed(raw):  # the evaluations' seed; a training draws from its train.seed
        raw["seed"] = 7

    base = _ckpt_dirs(tmp_path, "base", lambda raw: None)
    energy = {d for d in base if "/checkpoints/energy/" in d or "/checkpoints/denoiser/" in d}
    assert energy and len(base) > len(energy)  # multi-scale networks too
    assert _ckpt_dirs(tmp_path, "steps", more_steps) == base  # a longer run resumes
    assert _ckpt_dirs(tmp_path, "seed", other_seed) == base
    changed = _ckpt_dirs(tmp_path, "lr", other_lr)
    assert changed - base and {d.rsplit("/", 1)[0] for d in changed - base} == {
        d.rsplit("/", 1)[0] for d in energy
    }  # exactly the energy/denoiser trainings move to new folders; the others keep theirs
