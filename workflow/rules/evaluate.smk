# Evaluations -> tidy tables in <results>/tables/ (the single source of figures, report, DVC
# metrics and MLflow). Each job writes its own small table; a gather rule merges them, since many
# parallel jobs cannot share one declared output.


localrules:
    nll_table,  # a CSV merge: not worth a cluster job


rule nll:
    input:
        model=f"{R}/models/energy/{{dataset}}/model.pt",
        data=data_files("{dataset}")["meta"],
    output:
        table=f"{R}/nll/{{dataset}}/{{split}}.csv",
        per_image=f"{R}/nll/{{dataset}}/{{split}}.per_image.csv",
    log:
        f"{R}/logs/nll/{{dataset}}/{{split}}.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("nll"),
        data=lambda w, input: Path(input.data).parent,
    shell:
        "image-density nll --config {params.cfg:q} --model-path {input.model:q}"
        " --dataset {wildcards.dataset:q} --split {wildcards.split:q} --data {params.data:q}"
        " --train-data {params.data:q} --table {output.table:q}"
        " --per-image {output.per_image:q} > {log:q} 2>&1"


rule nll_table:
    input:
        parts=[
            f"{R}/nll/{dataset}/test.csv"
            for dataset in (CFG.energy.datasets if CFG.energy else [])
        ],
    output:
        table=f"{R}/tables/nll.csv",
    log:
        f"{R}/logs/nll_table.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density collect --key dataset,model,split --out {output.table:q}"
        " {input.parts:q} > {log:q} 2>&1"


rule evaluate:
    input:
        rules.nll_table.output if CFG.energy else [],
