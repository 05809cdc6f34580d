# image-density: the whole pipeline, from params to tables, figures, metrics and a report. Declarative: rules live in
# workflow/rules/*.smk, every number in params/*.yaml, every computation in the `image-density` CLI.
#
#   snakemake -c2 all                                   # demo scale (params/demo.yaml)
#   snakemake -c2 all --configfile params/paper.yaml    # another params file REPLACES demo.yaml
#   snakemake --profile slurm all                       # paper scale on SLURM (slurm/config.yaml)
#   snakemake --report results/report.html              # after a run: the figures, captions, provenance
#   mlflow ui                                           # every run, logged by workflow/rules/tracking.smk
#
# Params (workflow/rules/common.smk): a `--configfile` replaces params/demo.yaml instead of being
# merged into it; `--config KEY=VALUE` still overrides single keys. They are validated before any
# job runs (the typed config's friendly errors, then workflow/schemas/params.schema.json) and, when a
# run starts, written to <results>/config/<params file name>.resolved.yaml (demo.resolved.yaml by
# default), the file every rule hands to the CLI (`--config {params.cfg}`), so the CLI sees exactly
# the params Snakemake sees.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params/demo.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/energy.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/multiscale.smk"
include: "workflow/rules/studies.smk"
include: "workflow/rules/catalogue.smk"
include: "workflow/rules/tracking.smk"


# when a run starts: the resolved params for the jobs (common.smk's PARAMS_FILE), the id of the
# MLflow parent runs of this invocation (tracking.smk)
onstart:
    write_resolved(PARAMS_FILE, config)
    start_pipeline_run()


rule all:
    default_target: True
    input:
        rules.data.input,
        rules.energy.input,
        rules.evaluate.input,
        rules.multiscale.input,
        rules.studies.input,
        rules.figures.input,
        rules.metrics.output,
        rules.tracking.input,
