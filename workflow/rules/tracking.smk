# MLflow: every trained model and every evaluation as a run, logged after the computation from the
# files the jobs wrote (src/image_density/tracking.py). The store is $MLFLOW_TRACKING_URI, else
# sqlite:///mlflow.db in the working directory (the repository root): `mlflow ui` there shows them.
# Experiments: energy, generalization, multiscale (one run per trained network; generalization also
# gets its study's run), and one per study or evaluation (nll, denoising, dimensionality, content,
# toy, multiscale_denoising, multiscale_nll, superres, synthesis, metrics).
# Importing mlflow costs ~2 s a process and a run ~25 ms, so each job logs a group of runs in one
# process (`image-density track --runs JSON`; the runs and their files in catalogue.smk's TRACKED). A
# job reruns when any of its files changes, then re-logs only the runs whose files (or the git
# commit, or the params) changed: the others are recognized by their inputs' hash and left as they
# are. Its output, <results>/tracking/<group>.json, lists the run ids. Local jobs: seconds, no GPU.
# The runs one `snakemake` invocation logs are children of one parent run per experiment, named
# `pipeline <id>`: the id is made when the run starts (the Snakefile's onstart calls
# start_pipeline_run) and reaches the local tracking jobs through their environment. Energy models
# and denoisers are also logged as MLflow models and registered (<model>-<dataset>); alias `best`
# marks each dataset's energy model of lowest test NLL (common.smk's energy_runs).
from image_density.tracking import start_pipeline_run


localrules:
    track,


# one job per group of TRACKED that has runs
rule track:
    input:
        unpack(lambda w: track_inputs(TRACKED[w.group])),
    output:
        json=f"{R}/tracking/{{group}}.json",
    log:
        f"{R}/logs/tracking/{{group}}.log",
    wildcard_constraints:
        group=one_of([group for group, runs in TRACKED.items() if runs]),
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        runs=lambda w: json.dumps(TRACKED[w.group]),
    shell:
        "image-density track --config {params.cfg:q} --runs {params.runs:q}"
        " --out {output.json:q} > {log:q} 2>&1"


rule tracking:
    input:
        [f"{R}/tracking/{group}.json" for group, runs in TRACKED.items() if runs],
