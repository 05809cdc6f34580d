# Paper 1: per dataset of energy.datasets an energy model (dual score matching) and a plain
# denoiser; generalization models A/B on the first/last n training images. Resumable state lives in
# <results>/checkpoints/ (not a declared output, so Snakemake never deletes it): a rerun after a
# time limit or a failure resumes there.


rule train:
    input:
        **data_files("{dataset}"),
    output:
        model=f"{R}/models/{{model}}/{{dataset}}/model.pt",
        metrics=f"{R}/models/{{model}}/{{dataset}}/metrics.jsonl",
    log:
        f"{R}/logs/train/{{model}}/{{dataset}}.log",
    conda:
        "../envs/image-density.yaml"
    resources:
        attempt=retry_attempt,
        requeue=0,
    params:
        cfg=PARAMS_FILE,
        spec=trigger("train"),
        data=lambda w, input: Path(input.meta).parent,
        out=lambda w, output: Path(output.model).parent,
        ckpt=ckpt_dir("train", "{model}/{dataset}"),
        launch=launcher,
    shell:
        "exec {params.launch} train --config {params.cfg:q} --model {wildcards.model:q}"
        " --dataset {wildcards.dataset:q} --data {params.data:q} --out {params.out:q}"
        " --ckpt-dir {params.ckpt:q} --no-progress --attempt {resources.attempt}"
        " --requeue {resources.requeue} > {log:q} 2>&1"


rule train_generalization:
    input:
        **data_files("{dataset}"),
    output:
        model=f"{R}/models/generalization/{{dataset}}/{{subset}}{{n}}/model.pt",
        metrics=f"{R}/models/generalization/{{dataset}}/{{subset}}{{n}}/metrics.jsonl",
    log:
        f"{R}/logs/train_generalization/{{dataset}}/{{subset}}{{n}}.log",
    conda:
        "../envs/image-density.yaml"
    resources:
        attempt=retry_attempt,
        requeue=0,
    params:
        cfg=PARAMS_FILE,
        spec=trigger("train_generalization"),
        data=lambda w, input: Path(input.meta).parent,
        out=lambda w, output: Path(output.model).parent,
        ckpt=ckpt_dir("train_generalization", "generalization/{dataset}/{subset}{n}"),
        launch=launcher,
    shell:
        "exec {params.launch} train --config {params.cfg:q} --model energy"
        " --dataset {wildcards.dataset:q} --subset {wildcards.subset:q} --n {wildcards.n:q}"
        " --data {params.data:q} --out {params.out:q} --ckpt-dir {params.ckpt:q} --no-progress"
        " --attempt {resources.attempt} --requeue {resources.requeue} > {log:q} 2>&1"


rule energy:
    input:
        [
            f"{R}/models/{model}/{dataset}/model.pt"
            for model in ("energy", "denoiser")
            for dataset in (CFG.energy.datasets if CFG.energy else [])
        ],
        [
            f"{R}/models/generalization/{CFG.generalization.dataset}/{subset}{n}/model.pt"
            for subset in "AB"
            for n in (CFG.generalization.n if CFG.generalization else [])
        ],
