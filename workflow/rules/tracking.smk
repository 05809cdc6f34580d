# MLflow: every trained model and every evaluation as a run, logged after the computation from the
# files the jobs wrote (src/image_density/tracking.py). The store is $MLFLOW_TRACKING_URI, else
# sqlite:///mlflow.db in the working directory (the repository root): `mlflow ui` there shows them.
# Experiments: energy, generalization, multiscale (one run per trained network; generalization also
# gets its study's run), and one per study or evaluation (nll, denoising, dimensionality, content,
# toy, multiscale_denoising, multiscale_nll, superres, synthesis, metrics).
# Importing mlflow costs ~2 s a process and a run ~25 ms, so each job logs a group of runs in one
# process (`image-density track --runs JSON`; the runs and their files in common.smk's TRACKED). A
# job reruns when any of its files changes, then re-logs only the runs whose files (or the git
# commit, or the params) changed: the others are recognized by their inputs' hash and left as they
# are. Its output, <results>/tracking/<group>.json, lists the run ids. Local jobs: seconds, no GPU.


localrules:
    track_energy,
    track_generalization,
    track_multiscale,
    track_studies,


rule track_energy:
    input:
        **track_inputs(TRACKED["energy"]),
    output:
        json=f"{R}/tracking/energy.json",
    log:
        f"{R}/logs/tracking/energy.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        runs=json.dumps(TRACKED["energy"]),
    shell:
        "image-density track --config {params.cfg:q} --runs {params.runs:q}"
        " --out {output.json:q} > {log:q} 2>&1"


rule track_generalization:
    input:
        **track_inputs(TRACKED["generalization"]),
    output:
        json=f"{R}/tracking/generalization.json",
    log:
        f"{R}/logs/tracking/generalization.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        runs=json.dumps(TRACKED["generalization"]),
    shell:
        "image-density track --config {params.cfg:q} --runs {params.runs:q}"
        " --out {output.json:q} > {log:q} 2>&1"


rule track_multiscale:
    input:
        **track_inputs(TRACKED["multiscale"]),
    output:
        json=f"{R}/tracking/multiscale.json",
    log:
        f"{R}/logs/tracking/multiscale.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        runs=json.dumps(TRACKED["multiscale"]),
    shell:
        "image-density track --config {params.cfg:q} --runs {params.runs:q}"
        " --out {output.json:q} > {log:q} 2>&1"


rule track_studies:
    input:
        **track_inputs(TRACKED["studies"]),
    output:
        json=f"{R}/tracking/studies.json",
    log:
        f"{R}/logs/tracking/studies.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        runs=json.dumps(TRACKED["studies"]),
    shell:
        "image-density track --config {params.cfg:q} --runs {params.runs:q}"
        " --out {output.json:q} > {log:q} 2>&1"


rule tracking:
    input:
        [f"{R}/tracking/{group}.json" for group, runs in TRACKED.items() if runs],
