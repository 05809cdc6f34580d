# Params and target lists shared by every rules file; no rules here (snakemake --lint).
import hashlib
import json
import os
import re
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from image_density.config import RESUMABLE_CHANGES, ConfigError, validate_config

# A `--configfile` replaces params/demo.yaml rather than being merged into it (Snakemake's default
# merge would mix demo keys into e.g. a paper run). Decided from the command line, not from
# --replace-workflow-config, because SLURM job steps re-read the params without that flag.
RAW = (
    workflow.config_settings.overwrite_config
    if workflow.overwrite_configfiles
    else config
)
PARAMS_SOURCE = (
    ", ".join(map(str, workflow.overwrite_configfiles)) or "params/demo.yaml"
)
# Typed validation first: its errors name every bad key, the value given and the rule.
try:
    CFG = validate_config(RAW, PARAMS_SOURCE)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
# From here on `config` is the validated params with every default filled in, exactly what the
# CLI reads from PARAMS_FILE; the schema check catches a schema left stale by config.py.
config.clear()
config.update(CFG.model_dump(mode="json"))
validate(config, "../schemas/params.schema.json", set_default=False)

R = CFG.results
# The resolved params, for the CLI. Rewritten atomically and only when they change: every SLURM job
# step re-parses this file and would otherwise race to rewrite it. Not a declared input: a rule
# reruns when its own `params: spec=` changes, not whenever any param does.
PARAMS_FILE = R / "config" / "params.resolved.yaml"


def write_resolved(path, params):
    text = yaml.safe_dump(params, sort_keys=False)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


write_resolved(PARAMS_FILE, config)


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",  # config.Name: no slashes
    model="energy|denoiser",
    subset="A|B",
    n=r"\d+",
    split="train|test",


def spec(model, *fields):
    """A rule's `params: spec=`: the settings a job depends on (all of `model`, or its `fields`;
    defaults included), so that editing them, and only them, reruns the job (Snakemake's `params`
    rerun trigger)."""
    return model.model_dump_json(include=set(fields) or None)


def _resume_relevant(tree):
    """A dumped settings tree without the keys a resumed run may change (train steps, intervals)."""
    if isinstance(tree, dict):
        return {
            k: _resume_relevant(v)
            for k, v in tree.items()
            if k not in RESUMABLE_CHANGES
        }
    return tree


def ckpt_dir(path, *settings):
    """<results>/checkpoints/<path>/<key>: one training's resumable state, in a folder keyed by the
    settings a checkpoint must share with the run resuming it (`settings`: config models or plain
    values, minus checkpoint's RESUMABLE_CHANGES). A rerun after preemption, or with more steps,
    finds the same folder and resumes; a changed lr or UNet trains afresh in a new folder and the old
    state stays on disk (train.py refuses to mix two trainings in one folder)."""
    tree = [
        _resume_relevant(s.model_dump(mode="json") if hasattr(s, "model_dump") else s)
        for s in (CFG.seed, *settings)
    ]
    key = hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]
    return f"{R}/checkpoints/{path}/{key}"


def data_files(dataset):
    """The files `image-density prepare` writes for one dataset (data/store.py)."""
    return {split: f"{R}/data/{dataset}/{split}.npy" for split in ("train", "test")} | {
        "meta": f"{R}/data/{dataset}/meta.json"
    }


def raw_data(wildcards):
    """The user's files behind a dataset (`path:` of imagenet64, celeba, array, image_folder), so
    that a wrong path fails when the DAG is built, not in a job; generated data has none.
    """
    path = getattr(CFG.datasets[wildcards.dataset], "path", None)
    return [str(path)] if path is not None else []


def launcher(wildcards, resources):
    """`torchrun` over the job's GPUs when it has more than one (train.py does the multi-process
    part), else the plain CLI; GPUs come from the profile's set-resources, never from rules.
    """
    n = int(resources.get("gpu", 0) or 0)
    if n > 1:
        return f"torchrun --standalone --nproc_per_node {n} -m image_density.cli"
    return "image-density"


# multiscale.smk: a network lives in <results>/models/multiscale/<dataset>/<family>/<net>/,
# net = lowpass, <j>-rf<R> or flat-rf<R>
MS = CFG.multiscale


def ms_model(dataset, family, net):
    return f"{R}/models/multiscale/{dataset}/{family}/{net}/model.pt"


def ms_nets(dataset, family, rfs=None, flat=True):
    """Folder names of one dataset's networks of `family` (of receptive fields `rfs`, default all;
    the flat denoisers too with `flat`)."""
    if MS is None or (family == "energy" and MS.energy is None):
        return []
    rfs = MS.rf if rfs is None else rfs
    nets = ["lowpass"] + [
        f"{j}-rf{rf}" for rf in rfs for j in range(MS.levels_of(dataset))
    ]
    return nets + (
        [f"flat-rf{rf}" for rf in rfs] if flat and family == "denoiser" else []
    )


def ms_models(dataset, family, rfs=None, flat=True):
    return [
        ms_model(dataset, family, net) for net in ms_nets(dataset, family, rfs, flat)
    ]


def ms_train_spec(wildcards):
    """The settings a network depends on: its family's section and the dataset's J."""
    own = (
        spec(MS, "train", "noise_grid")
        if wildcards.family == "denoiser"
        else MS.energy.model_dump_json(exclude={"likelihood"})
    )
    common = spec(MS, "cnn", "wavelet", "normalization")
    return f"{own} {common} levels={MS.levels_of(wildcards.dataset)}"


def ms_settings(wildcards):
    """ms_train_spec's settings as values, for ckpt_dir."""
    own = (
        [MS.train, MS.noise_grid]
        if wildcards.family == "denoiser"
        else [MS.energy.model_dump(mode="json", exclude={"likelihood"})]
    )
    return [*own, MS.cnn, MS.wavelet, MS.normalization, MS.levels_of(wildcards.dataset)]


def ms_outputs(pattern, rf=True):
    """`pattern` formatted for every dataset (and RF) of multiscale:."""
    if MS is None:
        return []
    rfs = MS.rf if rf else [None]
    return [pattern.format(dataset=d, rf=r) for d in MS.datasets for r in rfs]


# the report's categories (`report(..., category=)` of the figures)
PAPER1, PAPER2 = "Paper 1: energy models", "Paper 2: multi-scale models"

# studies.smk: paper 1's studies evaluate the energy models and plain denoisers of energy.datasets
ENERGY_DATASETS = CFG.energy.datasets if CFG.energy else []
GEN = CFG.generalization


def study_spec(name):
    """The settings a study job depends on: its `studies:` section, the batch (it orders the noise
    draws) and the seed of its randomness."""
    return f"{spec(CFG.studies, 'batch', name)} seed={CFG.seed}"


def one_of(names):
    """A wildcard constraint matching exactly these names: `content_{dataset}.csv` must not also read
    as dataset `<name>_summary` when a rule asks for `content_<name>_summary.csv`."""
    return "|".join(re.escape(name) for name in names) or "(?!)"
