# Data: one prepared folder per entry of `datasets:` (arrays + meta.json, see data/store.py).


rule prepare_data:
    input:
        raw=raw_data,
    output:
        train=f"{R}/data/{{dataset}}/train.npy",
        test=f"{R}/data/{{dataset}}/test.npy",
        meta=f"{R}/data/{{dataset}}/meta.json",
    log:
        f"{R}/logs/prepare_data/{{dataset}}.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("prepare_data"),
        out=lambda wildcards, output: Path(output.meta).parent,
    shell:
        "image-density prepare --config {params.cfg:q} --dataset {wildcards.dataset:q}"
        " --out {params.out:q} > {log:q} 2>&1"


rule data:
    input:
        [data_files(name)["meta"] for name in CFG.datasets],
