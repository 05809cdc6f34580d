# Paper 1's studies (tables) and both papers' figures. A study job writes a tidy table to
# <results>/tables/ (with its companions beside it: _summary.csv, _extremes.npy); the studies of one
# dataset (dimensionality, content) write one table and figure per dataset of energy.datasets, the
# others one table for all. A figure job reads tables only and writes <results>/figures/NAME.png
# (in the report, with its caption in workflow/report/) and NAME.pdf. `metrics` collects the
# headline numbers into <results>/metrics.json (DVC metrics).
localrules:
    denoising_table,
    figure_nll,
    figure_denoising,
    figure_generalization,
    figure_dimensionality,
    figure_content,
    figure_toy,
    figure_multiscale_denoising,
    figure_rf_ablation,
    metrics,


rule study_nll:
    input:
        table=rules.nll_table.output.table,
        data=[data_files(name)["meta"] for name in ENERGY_DATASETS],
    output:
        **study_outputs("nll"),
    log:
        f"{R}/logs/study/nll.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("study_nll"),
        data=lambda w, input: Path(input.data[0]).parents[1],  # <results>/data
    shell:
        "image-density study nll --config {params.cfg:q} --table {input.table:q}"
        " --data {params.data:q} --out {output.table:q} > {log:q} 2>&1"


rule study_denoising:
    input:
        models=[
            f"{R}/models/{model}/{{dataset}}/model.pt"
            for model in ("energy", "denoiser")
        ],
        data=data_files("{dataset}")["meta"],
    output:
        table=f"{R}/studies/denoising/{{dataset}}.csv",
    log:
        f"{R}/logs/study/denoising/{{dataset}}.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("study_denoising"),
        data=lambda w, input: Path(input.data).parent,
    shell:
        "image-density study denoising --config {params.cfg:q} --models {input.models:q}"
        " --dataset {wildcards.dataset:q} --data {params.data:q} --out {output.table:q}"
        " > {log:q} 2>&1"


# every part carries paper 1's Table 1 rows: --dedupe keeps them once
rule denoising_table:
    input:
        parts=[f"{R}/studies/denoising/{name}.csv" for name in ENERGY_DATASETS],
    output:
        table=f"{R}/tables/denoising.csv",
    log:
        f"{R}/logs/denoising_table.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density collect --key dataset,model,psnr_in --dedupe --out {output.table:q}"
        " {input.parts:q} > {log:q} 2>&1"


rule study_generalization:
    input:
        models=[
            f"{R}/models/generalization/{GEN.dataset}/{subset}{n}/model.pt"
            for n in (GEN.n if GEN else [])
            for subset in "AB"
        ],
        data=data_files(GEN.dataset)["meta"] if GEN else [],
    output:
        **study_outputs("generalization"),
    log:
        f"{R}/logs/study/generalization.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("study_generalization"),
        data=lambda w, input: Path(input.data).parent,
    shell:
        "image-density study generalization --config {params.cfg:q} --models {input.models:q}"
        " --data {params.data:q} --out {output.table:q} > {log:q} 2>&1"


rule study_dimensionality:
    input:
        models=[
            f"{R}/models/{model}/{{dataset}}/model.pt"
            for model in ("energy", "denoiser")
        ],
        data=data_files("{dataset}")["meta"],
    output:
        **study_outputs("dimensionality", "{dataset}"),
    log:
        f"{R}/logs/study/dimensionality/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(ENERGY_DATASETS),
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("study_dimensionality"),
        data=lambda w, input: Path(input.data).parent,
    shell:
        "image-density study dimensionality --config {params.cfg:q} --models {input.models:q}"
        " --dataset {wildcards.dataset:q} --data {params.data:q} --out {output.table:q}"
        " > {log:q} 2>&1"


rule study_content:
    input:
        model=f"{R}/models/energy/{{dataset}}/model.pt",
        data=data_files("{dataset}")["meta"],
    output:
        **study_outputs("content", "{dataset}"),
    log:
        f"{R}/logs/study/content/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(ENERGY_DATASETS),
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("study_content"),
        data=lambda w, input: Path(input.data).parent,
    shell:
        "image-density study content --config {params.cfg:q} --models {input.model:q}"
        " --dataset {wildcards.dataset:q} --data {params.data:q} --out {output.table:q}"
        " > {log:q} 2>&1"


rule study_toy:
    output:
        **study_outputs("toy"),
    log:
        f"{R}/logs/study/toy.log",
    conda:
        "../envs/image-density.yaml"
    params:
        cfg=PARAMS_FILE,
        spec=trigger("study_toy"),
    shell:
        "image-density study toy --config {params.cfg:q} --out {output.table:q} > {log:q} 2>&1"


rule studies:
    input:
        rules.study_toy.output,
        (
            [
                rules.study_nll.output,
                rules.denoising_table.output,
                expand(rules.study_dimensionality.output, dataset=ENERGY_DATASETS),
                expand(rules.study_content.output, dataset=ENERGY_DATASETS),
            ]
            if CFG.energy
            else []
        ),
        rules.study_generalization.output if GEN else [],


# ------------------------------------------------------------------------------------ figures


rule figure_nll:
    input:
        table=rules.study_nll.output.table,
    output:
        png=report(
            f"{R}/figures/nll.png",
            caption="../report/nll.rst",
            category=PAPER1,
            subcategory="NLL",
        ),
        pdf=f"{R}/figures/nll.pdf",
    log:
        f"{R}/logs/figure/nll.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density figure nll --table {input.table:q} --out {output.png:q} > {log:q} 2>&1"


rule figure_denoising:
    input:
        table=rules.denoising_table.output.table,
    output:
        png=report(
            f"{R}/figures/denoising.png",
            caption="../report/denoising.rst",
            category=PAPER1,
            subcategory="denoising",
        ),
        pdf=f"{R}/figures/denoising.pdf",
    log:
        f"{R}/logs/figure/denoising.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density figure denoising --table {input.table:q} --out {output.png:q}"
        " > {log:q} 2>&1"


rule figure_generalization:
    input:
        table=rules.study_generalization.output.table,
        summary=rules.study_generalization.output.summary,
    output:
        png=report(
            f"{R}/figures/generalization.png",
            caption="../report/generalization.rst",
            category=PAPER1,
            subcategory="generalization",
        ),
        pdf=f"{R}/figures/generalization.pdf",
    log:
        f"{R}/logs/figure/generalization.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density figure generalization --table {input.table:q}"
        " --summary {input.summary:q} --out {output.png:q} > {log:q} 2>&1"


rule figure_dimensionality:
    input:
        table=rules.study_dimensionality.output.table,
    output:
        png=report(
            f"{R}/figures/dimensionality_{{dataset}}.png",
            caption="../report/dimensionality.rst",
            category=PAPER1,
            subcategory="effective dimensionality",
        ),
        pdf=f"{R}/figures/dimensionality_{{dataset}}.pdf",
    log:
        f"{R}/logs/figure/dimensionality/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(ENERGY_DATASETS),
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density figure dimensionality --table {input.table:q} --out {output.png:q}"
        " > {log:q} 2>&1"


rule figure_content:
    input:
        table=rules.study_content.output.table,
        summary=rules.study_content.output.summary,
        images=rules.study_content.output.extremes,
        affine=rules.study_content.output.affine,
    output:
        png=report(
            f"{R}/figures/content_{{dataset}}.png",
            caption="../report/content.rst",
            category=PAPER1,
            subcategory="log p and image content",
        ),
        pdf=f"{R}/figures/content_{{dataset}}.pdf",
    log:
        f"{R}/logs/figure/content/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(ENERGY_DATASETS),
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density figure content --table {input.table:q} --summary {input.summary:q}"
        " --images {input.images:q} --affine {input.affine:q} --out {output.png:q} > {log:q} 2>&1"


rule figure_toy:
    input:
        table=rules.study_toy.output.table,
    output:
        png=report(
            f"{R}/figures/toy.png",
            caption="../report/toy.rst",
            category=PAPER1,
            subcategory="toy: single vs dual score matching",
        ),
        pdf=f"{R}/figures/toy.pdf",
    log:
        f"{R}/logs/figure/toy.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density figure toy --table {input.table:q} --out {output.png:q} > {log:q} 2>&1"


rule figure_multiscale_denoising:
    input:
        table=rules.multiscale_denoising_table.output.table,
    output:
        png=report(
            f"{R}/figures/multiscale_denoising.png",
            caption="../report/multiscale_denoising.rst",
            category=PAPER2,
            subcategory="denoising",
        ),
        pdf=f"{R}/figures/multiscale_denoising.pdf",
    log:
        f"{R}/logs/figure/multiscale_denoising.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density figure multiscale_denoising --table {input.table:q}"
        " --out {output.png:q} > {log:q} 2>&1"


# the NLL panel needs multiscale.energy; without it `--nll` gets no value and is left out
rule figure_rf_ablation:
    input:
        table=rules.multiscale_denoising_table.output.table,
        nll=rules.multiscale_nll_table.output.table if MS and MS.energy else [],
    output:
        png=report(
            f"{R}/figures/rf_ablation.png",
            caption="../report/rf_ablation.rst",
            category=PAPER2,
            subcategory="neighbourhood ablation",
        ),
        pdf=f"{R}/figures/rf_ablation.pdf",
    log:
        f"{R}/logs/figure/rf_ablation.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density figure rf_ablation --table {input.table:q} --nll {input.nll:q}"
        " --out {output.png:q} > {log:q} 2>&1"


rule figures:
    input:
        rules.figure_toy.output,
        (
            [
                rules.figure_nll.output,
                rules.figure_denoising.output,
                expand(rules.figure_dimensionality.output, dataset=ENERGY_DATASETS),
                expand(rules.figure_content.output, dataset=ENERGY_DATASETS),
            ]
            if CFG.energy
            else []
        ),
        rules.figure_generalization.output if GEN else [],
        (
            [rules.figure_multiscale_denoising.output, rules.figure_rf_ablation.output]
            if MS
            else []
        ),


# Every option takes zero or more tables: a section whose table is not built is left out.
rule metrics:
    input:
        nll=rules.study_nll.output.table if CFG.energy else [],
        denoising=rules.denoising_table.output.table if CFG.energy else [],
        generalization=rules.study_generalization.output.summary if GEN else [],
        content=expand(rules.study_content.output.summary, dataset=ENERGY_DATASETS),
        toy=rules.study_toy.output.summary,
        ms_denoising=rules.multiscale_denoising_table.output.table if MS else [],
        ms_nll=rules.multiscale_nll_table.output.table if MS and MS.energy else [],
        superres=rules.superres_table.output.table if MS else [],
    output:
        json=f"{R}/metrics.json",
    log:
        f"{R}/logs/metrics.log",
    conda:
        "../envs/image-density.yaml"
    shell:
        "image-density metrics --nll {input.nll:q} --denoising {input.denoising:q}"
        " --generalization {input.generalization:q} --content {input.content:q}"
        " --toy {input.toy:q} --multiscale-denoising {input.ms_denoising:q}"
        " --multiscale-nll {input.ms_nll:q} --superres {input.superres:q}"
        " --out {output.json:q} > {log:q} 2>&1"
