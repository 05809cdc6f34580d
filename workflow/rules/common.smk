# Params and target lists shared by every rules file; no rules here (snakemake --lint).
import json
import re
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

from image_density import atomic, jobs
from image_density.config import ConfigError, read_params, validate_config
from image_density.multiscale.nets import Net
from image_density.studies import registry
from image_density.studies.registry import STUDIES

# A `--configfile` replaces params/demo.yaml rather than being merged into it (Snakemake's default
# merge would mix demo keys into e.g. a paper run). Decided from the command line, not from
# --replace-workflow-config, because SLURM job steps re-read the params without that flag.
RAW = (
    workflow.config_settings.overwrite_config
    if workflow.overwrite_configfiles
    else config
)


def typed(value):
    """A `--config` value as a params file's YAML would type it: Snakemake reads a nested one
    (energy={'train': {'steps': 6}}) with YAML's BaseLoader, which leaves every scalar as text.
    """
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return yaml.safe_load(value) if isinstance(value, str) and value else value


# top-level values were typed by Snakemake itself (int, float, bool, else text): left as they are
update_config(
    RAW,
    {
        k: typed(v)
        for k, v in workflow.config_settings.config.items()
        if isinstance(v, dict | list)
    },
)
PARAMS_SOURCE = (
    ", ".join(map(str, workflow.overwrite_configfiles)) or "params/demo.yaml"
)
# Typed validation first: its errors name every bad key, the value given and the rule. Snakemake's
# YAML reader keeps the last of a key given twice: each params file is read once more by the strict
# reader, which names the file and line of a duplicate key (and a file that is not UTF-8).
try:
    for params_file in workflow.overwrite_configfiles or workflow.configfiles:
        read_params(params_file)
    CFG = validate_config(RAW, PARAMS_SOURCE)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
# From here on `config` is the validated params with every default filled in, exactly what the
# CLI reads from PARAMS_FILE; the schema check catches a schema left stale by config.py.
config.clear()
config.update(CFG.model_dump(mode="json"))
validate(config, "../schemas/params.schema.json", set_default=False)

R = CFG.results
# The resolved params, for the CLI: one file per params file (`--configfile`'s name, demo by
# default), so that two scales sharing a results folder never overwrite each other's. Written when a
# run starts (the Snakefile's onstart: never by a dry run, a parse, or a SLURM job step, which runs
# without hooks), atomically and only when they change, so a dry run of other params leaves running
# jobs' file alone.
# Not a declared input: a job reruns when its own `params: spec=` changes, not whenever any param does.
PARAMS_NAME = "+".join(Path(f).stem for f in workflow.overwrite_configfiles) or "demo"
PARAMS_FILE = R / "config" / f"{PARAMS_NAME}.resolved.yaml"


def write_resolved(path, params):
    text = yaml.safe_dump(params, sort_keys=False)
    if not (path.is_file() and path.read_text() == text):
        atomic.write_text(path, text)


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",  # config.Name: no slashes
    model="energy|denoiser",
    subset="A|B",
    n=r"\d+",
    split="train|test",


def _job(job, w):
    return job(w) if callable(job) else job


def trigger(job):
    """A rule's `params: spec=`: the settings job kind `job` (jobs.JOBS, or a function of the
    wildcards naming one) reads, so that editing them, and only them, reruns the job (Snakemake's
    `params` rerun trigger)."""
    return lambda w: jobs.trigger(_job(job, w), config, w.get("dataset"))


def ckpt_dir(job, path):
    """<results>/checkpoints/<path>/<key>: one training's resumable state (`path` formatted with the
    wildcards), in a folder keyed by what the training reads but a resumed run may change
    (jobs.checkpoint_key). A rerun after preemption, or with more steps, finds the same folder and
    resumes; a changed lr or UNet trains afresh in a new folder and the old state stays on disk
    (train.py refuses to mix two trainings in one folder)."""

    def folder(w):
        key = jobs.checkpoint_key(_job(job, w), config, w.get("dataset"))
        return f"{R}/checkpoints/{path.format(**dict(w.items()))}/{key}"

    return folder


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


def retry_attempt(wildcards, attempt):
    """A training's `resources: attempt=`, handed to `--attempt`: Snakemake retries every failed job
    (`retries:` of the SLURM profile), and the CLI turns a retry of a training that failed for good
    (NaN, bad input) into an immediate failure (cli._refuse_retry). Not a request to the cluster.
    """
    return attempt


# multiscale.smk: a network lives in <results>/models/multiscale/<dataset>/<family>/<net>/,
# net = Net.folder: lowpass, <j>-rf<R> or flat-rf<R>
MS = CFG.multiscale


def ms_model(dataset, family, net):
    return f"{R}/models/multiscale/{dataset}/{family}/{net}/model.pt"


def ms_nets(dataset, family, rfs=None, flat=True):
    """Folder names of one dataset's networks of `family` (of receptive fields `rfs`, default all;
    the flat denoisers too with `flat`)."""
    if MS is None or (family == "energy" and MS.energy is None):
        return []
    rfs = MS.rf if rfs is None else rfs
    nets = [Net(family, "lowpass")]
    nets += [Net(family, j, rf) for rf in rfs for j in range(MS.levels_of(dataset))]
    nets += (
        [Net(family, "flat", rf) for rf in rfs] if flat and family == "denoiser" else []
    )
    return [net.folder for net in nets]


def ms_models(dataset, family, rfs=None, flat=True):
    return [
        ms_model(dataset, family, net) for net in ms_nets(dataset, family, rfs, flat)
    ]


def ms_job(w):
    """The job kind of a multi-scale training (jobs.JOBS)."""
    return f"train_scale_{w.family}"


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


def study_outputs(name, dataset=None):
    """A study rule's outputs (studies.registry): `table`, then each companion by its suffix's stem
    (_summary.csv -> summary)."""
    files = [f"{R}/tables/{f}" for f in registry.outputs(name, dataset)]
    keys = ["table"] + [c.strip("_").split(".")[0] for c in STUDIES[name].companions]
    return dict(zip(keys, files))


def one_of(names):
    """A wildcard constraint matching exactly these names: `content_{dataset}.csv` must not also read
    as dataset `<name>_summary` when a rule asks for `content_<name>_summary.csv`."""
    return "|".join(re.escape(name) for name in names) or "(?!)"
