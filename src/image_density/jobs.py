"""What each kind of workflow job reads from the params: the one declaration from which the rerun
triggers (a rule's `params: spec=`), the checkpoint folder keys, the MLflow params of its runs and
the DVC params of its stage all derive (workflow/rules/*.smk, dvc.yaml).

A key is dotted text below the params' root; a part `{dataset}` stands for the job's dataset (a
dataset's name may hold dots, so keys are handled as lists of parts). `reads`: settings the job's
results depend on (editing one reruns the job); `checks`: lists a job only looks a name up in, to
refuse a request outside the plan (adding a dataset or an RF must not rerun every training).
`results` (where files go) is read by every job and is no setting. tests/test_workflow_jobs.py runs
the tiny pipeline and fails when a command reads a key its job does not declare.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from image_density.config import RESUMABLE_CHANGES

Key = tuple[str, ...]
LOCATION = ("results",)


@dataclass(frozen=True)
class Job:
    reads: tuple[str, ...]
    checks: tuple[str, ...] = ()


# paper 1's studies load the energies as the `nll` command does: normalized at likelihood.t_max,
# integrated over the training's [t_min, t_max]
_ENERGY_NLL = ("energy.likelihood", "energy.train.t_min", "energy.train.t_max")
_STUDY = ("studies.batch", "seed")  # the batch orders the noise draws; seed seeds them
_MS_NET = ("multiscale.cnn", "multiscale.wavelet", "multiscale.normalization", "multiscale.levels.{dataset}")

JOBS: dict[str, Job] = {
    "prepare_data": Job(("datasets.{dataset}",)),
    "train": Job(("energy.unet", "energy.train"), checks=("energy.datasets",)),
    "train_generalization": Job(
        ("generalization.unet", "generalization.train"),
        checks=("generalization.dataset", "generalization.n"),
    ),
    "train_scale_denoiser": Job(
        (
            "multiscale.train",
            "multiscale.epochs",
            "multiscale.intensity_scaling",
            "multiscale.noise_grid",
            "multiscale.noise_range",
            *_MS_NET,
        ),
        checks=("multiscale.datasets", "multiscale.rf"),
    ),  # fmt: skip
    "train_scale_energy": Job(
        (
            "multiscale.energy.emb_dim",
            "multiscale.energy.emb_features",
            "multiscale.energy.energy_form",
            "multiscale.energy.lowpass",
            "multiscale.energy.train",
            "multiscale.energy.unet",
            "multiscale.epochs",
            *_MS_NET,
        ),
        checks=("multiscale.datasets", "multiscale.rf"),
    ),  # fmt: skip
    "nll": Job((*_ENERGY_NLL, "seed"), checks=("energy.datasets",)),
    "multiscale_denoise": Job(("multiscale.sigmas", "multiscale.eval_images", *_STUDY)),
    "multiscale_sample": Job(("multiscale.sampler", "seed")),
    "multiscale_super_resolve": Job(("multiscale.sampler", "multiscale.superres_images", "seed")),
    "multiscale_nll": Job(("multiscale.energy.likelihood", "multiscale.eval_images", "seed")),
    "study_nll": Job(("studies.nll", "energy.datasets", "studies.batch")),
    **{
        f"study_{name}": Job((f"studies.{name}", *_STUDY, *_ENERGY_NLL), checks=("energy.datasets",))
        for name in ("denoising", "dimensionality", "content")
    },
    "study_generalization": Job(
        (
            "studies.generalization",
            *_STUDY,
            "generalization.likelihood",
            "generalization.train.t_min",
            "generalization.train.t_max",
        ),
        checks=("generalization.dataset", "generalization.n"),
    ),  # fmt: skip
    "study_toy": Job(("studies.toy", "seed")),
}


def _parts(key: str, dataset: str | None) -> Key:
    parts = key.split(".")
    if "{dataset}" in parts and dataset is None:
        raise ValueError(f"key {key!r} needs a dataset")
    return tuple(dataset if p == "{dataset}" else p for p in parts)


def keys(job: str, dataset: str | None = None, *, checks: bool = False) -> list[Key]:
    """The key paths job `job` reads (with `checks`: those it looks names up in too)."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r} (known: {', '.join(JOBS)})")
    declared = JOBS[job].reads + (JOBS[job].checks if checks else ())
    return [_parts(k, dataset) for k in declared]


def _value(tree: Any, key: Key) -> Any:
    node: Any = tree
    for part in key:
        if isinstance(node, Mapping):
            node = node.get(part)
        else:  # a config model: only this key is read (and an absent optional section reads as None)
            node = getattr(node, part, None)
    return node.model_dump(mode="json") if isinstance(node, BaseModel) else node


def settings(job: str, tree: Any, dataset: str | None = None) -> dict[str, Any]:
    """{dotted key: value} of what `job` reads, from the resolved params: a dumped tree (defaults
    filled in) or the Config itself, of which only these keys are read."""
    return {".".join(k): _value(tree, k) for k in keys(job, dataset)}


def trigger(job: str, tree: Mapping[str, Any], dataset: str | None = None) -> str:
    """A rule's `params: spec=`: Snakemake reruns a job when this text changes."""
    return json.dumps(settings(job, tree, dataset), sort_keys=True)


def _resume_relevant(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _resume_relevant(v) for k, v in value.items() if k not in RESUMABLE_CHANGES}
    return value


def checkpoint_key(job: str, tree: Mapping[str, Any], dataset: str | None = None) -> str:
    """The folder key of a training's resumable state: what it reads, minus the settings a resumed
    run may change (config.RESUMABLE_CHANGES: steps, intervals). A rerun with more steps finds the
    same folder and resumes; a changed lr trains afresh beside the old state."""
    tree_ = _resume_relevant(settings(job, tree, dataset))
    return hashlib.sha256(json.dumps(tree_, sort_keys=True).encode()).hexdigest()[:12]


def training_job(command: str, model: str, subset: str | None = None) -> str:
    """The job kind of a `train` / `train-scale` invocation."""
    if command == "train-scale":
        return f"train_scale_{model}"
    return "train" if subset is None else "train_generalization"


def undeclared(job: str, read: Sequence[Key], dataset: str | None = None) -> list[Key]:
    """The key paths in `read` that `job` declares neither as reads nor checks (a declared key covers
    everything below it; reading a whole section needs the section itself declared)."""
    declared = [*keys(job, dataset, checks=True), LOCATION]
    return [k for k in read if not any(k[: len(d)] == d for d in declared)]
