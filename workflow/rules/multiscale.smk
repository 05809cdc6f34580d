# Paper 2 (and beyond): per dataset of multiscale.datasets, paper 2's denoisers (the global low-pass
# CNN, a conditional CNN per scale j and RF, a flat baseline per RF) and, with multiscale.energy, the
# normalized energies (a UNet on x_J, a conditional energy per scale and RF); then denoising,
# synthesis, super-resolution and the multi-scale NLL. A network lives in
# <results>/models/multiscale/<dataset>/<family>/<net>/, net = lowpass, <j>-rf<R> or flat-rf<R>;
# resumable state in <results>/checkpoints/multiscale/ (not a declared output, as in energy.smk).
localrules:
    multiscale_denoising_table,
    superres_table,
    multiscale_nll_table,


rule train_scale:
    input:
        **data_files("{dataset}"),
    output:
        model=f"{R}/models/multiscale/{{dataset}}/{{family}}/{{net}}/model.pt",
        metrics=f"{R}/models/multiscale/{{dataset}}/{{family}}/{{net}}/metrics.jsonl",
    log:
        f"{R}/logs/train_scale/{{dataset}}/{{family}}/{{net}}.log",
    wildcard_constraints:
        family="denoiser|energy",
        net=Net.FOLDER,
    conda:
        "../envs/image-density.yaml"
    resources:
        attempt=retry_attempt,
        requeue=0,
    params:
        cfg=PARAMS_FILE,
        spec=trigger(ms_job),
        data=lambda w, input: Path(input.meta).parent,
        out=lambda w, output: Path(output.model).parent,
        ckpt=ckpt_dir(ms_job, "multiscale/{dataset}/{family}/{net}"),
        net=lambda w: Net.parse(w.family, w.net).cli_args,
        launch=launcher,
    shell:
        "exec {params.launch} train-scale --config {params.cfg:q} --dataset {wildcards.dataset:q}"
        " --model {wildcards.family:q} {params.net} --data {params.data:q} --out {params.out:q}"
        " --ckpt-dir {params.ckpt:q} --no-progress --attempt {resources.attempt}"
        " --requeue {resources.requeue} > {log:q} 2>&1"


rule multiscale_denoise:
    input:
        models=lambda w: ms_models(w.dataset, "denoiser"),
        data=data_files("{dataset}")["meta"],
    output:
        table=f"{R}/multiscale/{{dataset}}/denoising.csv",
    log:
        f"{R}/logs/multiscale_denoise/{{dataset}}.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("multiscale_denoise"),
        data=lambda w, input: Path(input.data).parent,
    shell:
        "image-density denoise --config {params.cfg:q} --models {input.models:q}"
        " --data {params.data:q} --out {output.table:q} > {log:q} 2>&1"


rule multiscale_sample:
    input:
        models=lambda w: ms_models(w.dataset, "denoiser", [int(w.rf)]),
    output:
        png=report(
            f"{R}/multiscale/{{dataset}}/samples-rf{{rf}}.png",
            caption="../report/samples.rst",
            category=PAPER2,
            subcategory="synthesis",
        ),
        npy=f"{R}/multiscale/{{dataset}}/samples-rf{{rf}}.npy",
        trace=f"{R}/multiscale/{{dataset}}/samples-rf{{rf}}.sampler.csv",
    log:
        f"{R}/logs/multiscale_sample/{{dataset}}/rf{{rf}}.log",
    wildcard_constraints:
        rf=r"\d+",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("multiscale_sample"),
    shell:
        "image-density sample --config {params.cfg:q} --models {input.models:q}"
        " --rf {wildcards.rf:q} --out {output.png:q} > {log:q} 2>&1"


rule multiscale_super_resolve:
    input:
        models=lambda w: ms_models(w.dataset, "denoiser", [int(w.rf)], flat=False),
        data=data_files("{dataset}")["meta"],
    output:
        png=report(
            f"{R}/multiscale/{{dataset}}/superres-rf{{rf}}.png",
            caption="../report/superres.rst",
            category=PAPER2,
            subcategory="super-resolution",
        ),
        npy=f"{R}/multiscale/{{dataset}}/superres-rf{{rf}}.npy",
        trace=f"{R}/multiscale/{{dataset}}/superres-rf{{rf}}.sampler.csv",
        table=f"{R}/multiscale/{{dataset}}/superres-rf{{rf}}.csv",
    log:
        f"{R}/logs/multiscale_super_resolve/{{dataset}}/rf{{rf}}.log",
    wildcard_constraints:
        rf=r"\d+",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("multiscale_super_resolve"),
        data=lambda w, input: Path(input.data).parent,
    shell:
        "image-density super-resolve --config {params.cfg:q} --models {input.models:q}"
        " --rf {wildcards.rf:q} --data {params.data:q} --out {output.png:q}"
        " --table {output.table:q} > {log:q} 2>&1"


rule multiscale_nll:
    input:
        models=lambda w: ms_models(w.dataset, "energy"),
        data=data_files("{dataset}")["meta"],
    output:
        table=f"{R}/multiscale/{{dataset}}/nll_{{split}}.csv",
    log:
        f"{R}/logs/multiscale_nll/{{dataset}}/{{split}}.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("multiscale_nll"),
        data=lambda w, input: Path(input.data).parent,
    shell:
        "image-density multiscale-nll --config {params.cfg:q} --models {input.models:q}"
        " --split {wildcards.split:q} --data {params.data:q} --train-data {params.data:q}"
        " --table {output.table:q} > {log:q} 2>&1"


rule multiscale_denoising_table:
    input:
        parts=ms_outputs(f"{R}/multiscale/{{dataset}}/denoising.csv", rf=False),
    output:
        table=f"{R}/tables/multiscale_denoising.csv",
    log:
        f"{R}/logs/multiscale_denoising_table.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density collect --key dataset,model,rf,sigma --dedupe --out {output.table:q}"
        " {input.parts:q} > {log:q} 2>&1"


rule superres_table:
    input:
        parts=ms_outputs(f"{R}/multiscale/{{dataset}}/superres-rf{{rf}}.csv"),
    output:
        table=f"{R}/tables/superres.csv",
    log:
        f"{R}/logs/superres_table.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density collect --key dataset,model,rf --out {output.table:q}"
        " {input.parts:q} > {log:q} 2>&1"


rule multiscale_nll_table:
    input:
        parts=ms_outputs(f"{R}/multiscale/{{dataset}}/nll_test.csv", rf=False),
    output:
        table=f"{R}/tables/multiscale_nll.csv",
    log:
        f"{R}/logs/multiscale_nll_table.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density collect --key dataset,model,split --out {output.table:q}"
        " {input.parts:q} > {log:q} 2>&1"


rule multiscale:
    input:
        rules.multiscale_denoising_table.output if MS else [],
        rules.superres_table.output if MS else [],
        rules.multiscale_nll_table.output if MS and MS.energy else [],
        ms_outputs(f"{R}/multiscale/{{dataset}}/samples-rf{{rf}}.png"),
