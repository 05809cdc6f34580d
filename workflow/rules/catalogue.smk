# The MLflow catalogue of tracking.smk: the runs each tracking job logs, as `image-density track
# --runs` takes them. No rules here (snakemake --lint); included after every rules file, so that the
# files a run logs are the rules' own outputs (rules.X.output), and a tracking job's inputs are those
# files (track_inputs): a rerun of a model reruns its tracking. A run's params are what its job
# reads (jobs.JOBS).
def track_run(experiment, run_name, job=None, dataset=None, **files):
    """One run of `image-density track --runs` (tracking.RunSpec's keys); empty keys left out."""
    sections = [list(k) for k in jobs.keys(job, dataset)] if job else None
    files = {"sections": sections, **files}
    return {"experiment": experiment, "run_name": run_name} | {
        k: v for k, v in files.items() if v
    }


def data_dir(dataset):
    return str(Path(data_files(dataset)["meta"]).parent)


def model_run(experiment, name, metrics, dataset, job, params):
    """A trained model: the params its job reads and its dataset's, the curves of its metrics.jsonl,
    the dataset's sha256 as tags."""
    run = track_run(experiment, name, job, dataset, params=params, curves=metrics)
    run["sections"].append(["datasets", dataset])
    return run | {"datasets": [data_dir(dataset)]}


def energy_runs():
    """model_run's; each model file logged as an MLflow model, registered as <model>-<dataset>,
    the energy models scored by their test NLL (the registry's alias `best`: the lowest).
    """
    out, runs = rules.train.output, []
    for d in ENERGY_DATASETS:
        for m in ("energy", "denoiser"):
            files = {k: v.format(model=m, dataset=d) for k, v in out.items()}
            run = model_run(
                "energy", f"{d}-{m}", files["metrics"], d, "train", {"model": m}
            )
            run |= {"model": files["model"], "registered_model": f"{m}-{d}"}
            if m == "energy":
                run |= {
                    "metrics": rules.metrics.output.json,
                    "metrics_key": ["nll", d],
                    "best_by": "energy_test_bits_per_dim",
                }
            runs.append(run)
    return runs


def generalization_runs():
    d, out = GEN.dataset, rules.train_generalization.output.metrics
    return [
        model_run(
            "generalization",
            f"{d}-{s}{n}",
            out.format(dataset=d, subset=s, n=n),
            d,
            "train_generalization",
            {"model": "energy", "subset": s, "n": n},
        )
        for n in GEN.n
        for s in "AB"
    ]


def multiscale_runs():
    """One run per network (multiscale.nets.Net: family, scale, rf)."""
    families = ["denoiser"] + (["energy"] if MS.energy is not None else [])
    out = rules.train_scale.output.metrics
    return [
        model_run(
            "multiscale",
            f"{d}-{family}-{net}",
            out.format(dataset=d, family=family, net=net),
            d,
            f"train_scale_{family}",
            {"family": family, "net": net},
        )
        for d in MS.datasets
        for family in families
        for net in ms_nets(d, family)
    ]


def eval_run(experiment, name, key=None, job=None, dataset=None, **files):
    """An evaluation; `key`: its section of metrics.json as final metrics ([]: all of it)."""
    metrics = rules.metrics.output.json if key is not None else None
    return track_run(
        experiment, name, job, dataset, metrics=metrics, metrics_key=key, **files
    )


def study_run(name, dataset=None):
    """A study of studies.registry: its tables, figure (PNG) and section of metrics.json."""
    study = STUDIES[name]
    key = ([name, dataset] if study.per_dataset else [name]) if study.metrics else None
    figures = expand(getattr(rules, f"figure_{name}").output.png, dataset=dataset or [])
    return eval_run(
        name,
        dataset or "study",
        key,
        f"study_{name}",
        tables=[
            f"{R}/tables/{f}"
            for f in registry.outputs(name, dataset)
            if f.endswith(".csv")
        ],
        figures=figures if study.figure else [],
    )


def study_runs():
    """The evaluations: per study (studies.registry) and per paper-2 evaluation its tables, figures
    (PNG) and section of metrics.json."""
    runs = [eval_run("metrics", "headline", [], artifacts=list(rules.metrics.output))]
    for name, study in STUDIES.items():
        if {"energy": CFG.energy, "generalization": GEN, None: True}[study.section]:
            datasets = ENERGY_DATASETS if study.per_dataset else [None]
            runs += [study_run(name, d) for d in datasets]
    for d in ENERGY_DATASETS:
        nll = expand(rules.nll.output, dataset=d, split="test")
        runs.append(
            eval_run("nll", d, ["nll", d], "nll", tables=nll, datasets=[data_dir(d)])
        )
    if MS:
        runs.append(
            eval_run(
                "multiscale_denoising",
                "study",
                ["multiscale_denoising"],
                "multiscale_denoise",
                tables=list(rules.multiscale_denoising_table.output),
                figures=[
                    rules.figure_multiscale_denoising.output.png,
                    rules.figure_rf_ablation.output.png,
                ],
            )
        )
    for d in MS.datasets if MS else []:
        sample = expand(rules.multiscale_sample.output.png, dataset=d, rf=MS.rf)
        runs.append(eval_run("synthesis", d, job="multiscale_sample", figures=sample))
        superres = rules.multiscale_super_resolve.output
        runs.append(
            eval_run(
                "superres",
                d,
                ["superres", d],
                "multiscale_super_resolve",
                tables=expand(superres.table, dataset=d, rf=MS.rf),
                figures=expand(superres.png, dataset=d, rf=MS.rf),
            )
        )
        if MS.energy:
            nll = expand(rules.multiscale_nll.output, dataset=d, split="test")
            runs.append(
                eval_run(
                    "multiscale_nll",
                    d,
                    ["multiscale_nll", d],
                    "multiscale_nll",
                    tables=nll,
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
