# Params and target lists shared by every rules file; no rules here (snakemake --lint).
import hashlib
import json
import re
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

from image_density import atomic
from image_density.config import (
    RESUMABLE_CHANGES,
    ConfigError,
    read_params,
    validate_config,
)
from image_density.tracking import subtree

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
    # not the top-level `seed`: it seeds the evaluations, a training draws from its own train.seed;
    # keyed by it, a new evaluation seed retrained every model (under DVC, from the `studies` stage,
    # leaving the lock entries of the `energy` and `multiscale` stages stale)
    tree = [
        _resume_relevant(s.model_dump(mode="json") if hasattr(s, "model_dump") else s)
        for s in settings
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


def retry_attempt(wildcards, attempt):
    """A training's `resources: attempt=`, handed to `--attempt`: Snakemake retries every failed job
    (`retries:` of the SLURM profile), and the CLI turns a retry of a training that failed for good
    (NaN, bad input) into an immediate failure (cli._refuse_retry). Not a request to the cluster.
    """
    return attempt


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


def ms_sections(family):
    """The fields of multiscale: a network of `family` depends on (dotted, below multiscale:), besides
    its dataset's J: one list for the rerun trigger, the checkpoint key and the MLflow params.
    """
    own = ["train", "epochs", "intensity_scaling", "noise_grid"]
    if family == "energy":
        own = [
            f"energy.{k}"
            for k in sorted(set(type(MS.energy).model_fields) - {"likelihood"})
        ]
    return [*own, "cnn", "wavelet", "normalization"]


def ms_settings(wildcards):
    """ms_sections' values and the dataset's J, for ckpt_dir and ms_train_spec."""
    values = [
        subtree(config["multiscale"], path) for path in ms_sections(wildcards.family)
    ]
    return [*values, MS.levels_of(wildcards.dataset)]


def ms_train_spec(wildcards):
    """The settings a network depends on (Snakemake's `params` rerun trigger)."""
    return json.dumps(ms_settings(wildcards), sort_keys=True)


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


# tracking.smk: the runs each tracking job logs, as `image-density track --runs` takes them; the
# job's inputs are the files they name (track_inputs), so a rerun of a model reruns its tracking
def track_run(experiment, run_name, **files):
    """One run of `image-density track --runs` (tracking.RunSpec's keys); empty keys left out."""
    return {"experiment": experiment, "run_name": run_name} | {
        k: v for k, v in files.items() if v
    }


def data_dir(dataset):
    return str(Path(data_files(dataset)["meta"]).parent)


def dataset_section(dataset):
    """The params of one dataset, as key parts: a dataset's name may hold dots."""
    return ["datasets", dataset]


def model_run(experiment, name, folder, dataset, sections, params):
    """A trained model in `folder`: its config sections (and the dataset's), the curves of its
    metrics.jsonl, the dataset's sha256 as tags."""
    return track_run(
        experiment,
        name,
        sections=[*sections, dataset_section(dataset), "seed"],
        params=params,
        curves=f"{folder}/metrics.jsonl",
        datasets=[data_dir(dataset)],
    )


def energy_runs():
    """model_run's; each model file logged as an MLflow model, registered as <model>-<dataset>,
    the energy models scored by their test NLL (the registry's alias `best`: the lowest).
    """
    sections = ["energy.unet", "energy.train"]
    runs = []
    for d in ENERGY_DATASETS:
        for m in ("energy", "denoiser"):
            folder = f"{R}/models/{m}/{d}"
            run = model_run("energy", f"{d}-{m}", folder, d, sections, {"model": m})
            run |= {"model": f"{folder}/model.pt", "registered_model": f"{m}-{d}"}
            if m == "energy":
                run |= {
                    "metrics": f"{R}/metrics.json",
                    "metrics_key": ["nll", d],
                    "best_by": "energy_test_bits_per_dim",
                }
            runs.append(run)
    return runs


def generalization_runs():
    sections = ["generalization.unet", "generalization.train"]
    d = GEN.dataset
    return [
        model_run(
            "generalization",
            f"{d}-{s}{n}",
            f"{R}/models/generalization/{d}/{s}{n}",
            d,
            sections,
            {"model": "energy", "subset": s, "n": n},
        )
        for n in GEN.n
        for s in "AB"
    ]


def multiscale_runs():
    """One run per network, with ms_sections and its J."""
    families = ["denoiser"] + (["energy"] if MS.energy is not None else [])
    return [
        model_run(
            "multiscale",
            f"{d}-{family}-{net}",
            f"{R}/models/multiscale/{d}/{family}/{net}",
            d,
            [
                *(f"multiscale.{p}" for p in ms_sections(family)),
                ["multiscale", "levels", d],
            ],
            {"family": family, "net": net},
        )
        for d in MS.datasets
        for family in families
        for net in ms_nets(d, family)
    ]


def eval_run(experiment, name, key=None, **files):
    """An evaluation; `key`: its section of metrics.json as final metrics ([]: all of it)."""
    metrics = f"{R}/metrics.json" if key is not None else None
    return track_run(experiment, name, metrics=metrics, metrics_key=key, **files)


def study_sections(name):
    return [f"studies.{name}", "studies.batch", "seed"]


def study_runs():
    """The evaluations: per study its tables, figures (PNG) and section of metrics.json."""
    tables, figures, ms = f"{R}/tables", f"{R}/figures", f"{R}/multiscale"
    runs = [
        eval_run(
            "toy",
            "study",
            ["toy"],
            sections=study_sections("toy"),
            tables=[f"{tables}/toy.csv", f"{tables}/toy_summary.csv"],
            figures=[f"{figures}/toy.png"],
        ),
        eval_run("metrics", "headline", [], artifacts=[f"{R}/metrics.json"]),
    ]
    for d in ENERGY_DATASETS:
        runs.append(
            eval_run(
                "nll",
                d,
                ["nll", d],
                sections=["energy.likelihood", dataset_section(d)],
                tables=[f"{R}/nll/{d}/test.csv", f"{R}/nll/{d}/test.per_image.csv"],
                datasets=[data_dir(d)],
            )
        )
    if CFG.energy:
        runs.append(
            eval_run(
                "nll",
                "study",
                ["nll"],
                sections=study_sections("nll"),
                tables=[f"{tables}/nll.csv", f"{tables}/nll_study.csv"],
                figures=[f"{figures}/nll.png"],
            )
        )
        runs.append(
            eval_run(
                "denoising",
                "study",
                ["denoising"],
                sections=study_sections("denoising"),
                tables=[f"{tables}/denoising.csv"],
                figures=[f"{figures}/denoising.png"],
            )
        )
    for d in ENERGY_DATASETS:
        runs.append(
            eval_run(
                "dimensionality",
                d,
                sections=study_sections("dimensionality"),
                tables=[f"{tables}/dimensionality_{d}.csv"],
                figures=[f"{figures}/dimensionality_{d}.png"],
            )
        )
        runs.append(
            eval_run(
                "content",
                d,
                ["content", d],
                sections=study_sections("content"),
                tables=[
                    f"{tables}/content_{d}.csv",
                    f"{tables}/content_{d}_summary.csv",
                    f"{tables}/content_{d}_affine.csv",
                ],
                figures=[f"{figures}/content_{d}.png"],
            )
        )
    if GEN:
        runs.append(
            eval_run(
                "generalization",
                "study",
                ["generalization"],
                sections=study_sections("generalization"),
                tables=[
                    f"{tables}/generalization.csv",
                    f"{tables}/generalization_summary.csv",
                ],
                figures=[f"{figures}/generalization.png"],
            )
        )
    if MS:
        runs.append(
            eval_run(
                "multiscale_denoising",
                "study",
                ["multiscale_denoising"],
                sections=["multiscale.sigmas", "multiscale.eval_images", "seed"],
                tables=[f"{tables}/multiscale_denoising.csv"],
                figures=[
                    f"{figures}/multiscale_denoising.png",
                    f"{figures}/rf_ablation.png",
                ],
            )
        )
    for d in MS.datasets if MS else []:
        runs.append(
            eval_run(
                "synthesis",
                d,
                sections=["multiscale.sampler", "seed"],
                figures=[f"{ms}/{d}/samples-rf{rf}.png" for rf in MS.rf],
            )
        )
        runs.append(
            eval_run(
                "superres",
                d,
                ["superres", d],
                sections=["multiscale.sampler", "multiscale.superres_images", "seed"],
                tables=[f"{ms}/{d}/superres-rf{rf}.csv" for rf in MS.rf],
                figures=[f"{ms}/{d}/superres-rf{rf}.png" for rf in MS.rf],
            )
        )
        if MS.energy:
            runs.append(
                eval_run(
                    "multiscale_nll",
                    d,
                    ["multiscale_nll", d],
                    sections=["multiscale.energy.likelihood", "multiscale.eval_images"],
                    tables=[f"{ms}/{d}/nll_test.csv"],
                    datasets=[data_dir(d)],
                )
            )
    return runs


def track_inputs(runs):
    """A tracking job's inputs: every file its runs log (a data folder: its meta.json)."""
    single = {k: [r[k] for r in runs if k in r] for k in ("curves", "metrics", "model")}
    lists = {
        k: [p for r in runs for p in r.get(k, [])]
        for k in ("tables", "figures", "artifacts")
    }
    data = [f"{p}/meta.json" for r in runs for p in r.get("datasets", [])]
    named = {**single, **lists, "data": data}
    return {k: sorted(set(v)) for k, v in named.items() if v}


TRACKED = {
    "energy": energy_runs() if CFG.energy else [],
    "generalization": generalization_runs() if GEN else [],
    "multiscale": multiscale_runs() if MS else [],
    "studies": study_runs(),
}
