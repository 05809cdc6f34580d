"""The `image-density` command: parse, load the config, call one library function, write files.

Each subcommand is a pair `_add_<name>(subparsers)` / `_<name>(args)`; nothing else lives here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from image_density import atomic, jobs
from image_density.config import ConfigError, load_config, write_schema
from image_density.studies.registry import STUDIES

# figures.FIGURES' keys, here so that --help does not import matplotlib (test_figures checks they agree)
FIGURE_NAMES = ("nll", "denoising", "generalization", "dimensionality", "content", "toy",
                "multiscale_denoising", "rf_ablation")  # fmt: skip


def _add_schema(sub) -> None:
    p = sub.add_parser("schema", help="write the JSON schema of the params (generated from config.py)")
    p.add_argument("--out", type=Path, default=Path("workflow/schemas/params.schema.json"))
    p.set_defaults(func=_schema)


def _schema(args) -> None:
    write_schema(args.out)


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a params file and exit")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=_validate)


def _validate(args) -> None:
    load_config(args.config)
    print(f"{args.config}: ok")


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="prepare one dataset into results/data/<NAME>/")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--dataset", required=True, help="a key of `datasets:` in the params file")
    p.add_argument("--out", type=Path, help="output folder (default: <results>/data/<NAME>)")
    p.set_defaults(func=_prepare)


def _prepare(args) -> None:
    cfg = load_config(args.config)
    if args.dataset not in cfg.datasets:
        raise ConfigError(
            f"--dataset {args.dataset!r} is not a key of datasets: in {args.config} "
            f"(defined: {sorted(cfg.datasets)})"
        )
    from image_density.data import prepare_dataset

    out = args.out or cfg.results / "data" / args.dataset
    prepare_dataset(cfg.datasets[args.dataset], out, name=args.dataset)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_manifest(sub) -> None:
    p = sub.add_parser(
        "manifest",
        help="write the pointer to every dataset's raw data (spec; size and sha256 of user files)",
        description="One JSON file naming the raw data behind `datasets:` (data/manifest.py); DVC "
        "versions it (dvc.yaml's raw stage), so a changed raw file reruns the data stage.",
    )
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="e.g. results/raw/manifest.json")
    p.set_defaults(func=_manifest)


def _manifest(args) -> None:
    from image_density.data.manifest import raw_manifest

    cfg = load_config(args.config)
    atomic.write_text(args.out, json.dumps(raw_manifest(cfg.datasets), indent=2, sort_keys=True) + "\n")


def _add_track(sub) -> None:
    p = sub.add_parser(
        "track",
        help="log finished trainings or evaluations to MLflow (replaces the runs of the same name)",
        description="Reads files jobs wrote and logs them as MLflow runs; the store is "
        "$MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the current directory. One run: "
        "--experiment, --run-name and the options below. Many runs in one process (importing mlflow "
        "costs seconds, a run tens of milliseconds): --runs JSON, a list of objects with the keys "
        "experiment, run_name and optionally sections (list of keys), params, tags (objects), curves, "
        "metrics (paths), metrics_key (a key of the metrics JSON: only that subtree), tables, figures, "
        "artifacts, datasets (lists of paths), model (a model file, logged as an MLflow model), "
        "registered_model (its registry name), best_by (a final metric: alias 'best' on the lowest); e.g. "
        '\'[{"experiment": "energy", "run_name": "field16-energy", "sections": ["energy.train"], '
        '"curves": "results/models/energy/field16/metrics.jsonl"}]\'. '
        "A key is dotted text or a list of its parts (for names holding dots).",
    )
    p.add_argument("--config", type=Path, required=True, help="params file; its resolved values are params")
    p.add_argument("--runs", help="a JSON list of runs (see above), instead of the one-run options")
    p.add_argument("--experiment", help="the study, e.g. energy, multiscale, nll")
    p.add_argument("--run-name", help="unique within the experiment, e.g. field16-energy")
    p.add_argument(
        "--section",
        action="append",
        default=[],
        metavar="KEY",
        help="log only these dotted config keys as params (repeatable; default: all)",
    )
    p.add_argument("--curves", type=Path, help="metrics.jsonl of per-step values (an int 'step' per line)")
    p.add_argument("--metrics", type=Path, help="JSON of final numbers (nested keys are joined with '.')")
    p.add_argument("--table", type=Path, action="append", default=[], help="CSV logged under tables/")
    p.add_argument("--figure", type=Path, action="append", default=[], help="image logged under figures/")
    p.add_argument("--artifact", type=Path, action="append", default=[], help="any file or folder")
    p.add_argument(
        "--dataset",
        type=Path,
        action="append",
        default=[],
        help="prepared data folder (or any file/folder): its sha256 as tags dataset.<name>.*",
    )
    p.add_argument("--param", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--tag", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--out",
        type=Path,
        help="write the run's ids here as JSON (--runs: a list, one per run); a Snakemake output",
    )
    p.add_argument(
        "--pipeline-run",
        help="the pipeline invocation whose parent run (one per experiment) the new runs join "
        "(default: $IMAGE_DENSITY_PIPELINE_RUN, set by the Snakefile's onstart; else a new one)",
    )
    p.set_defaults(func=_track)


_ONE_RUN = ("experiment", "run_name", "section", "curves", "metrics", "table", "figure", "artifact",
            "dataset", "param", "tag")  # fmt: skip


def _track(args) -> None:
    from dataclasses import asdict

    from image_density import tracking

    given = [f"--{name.replace('_', '-')}" for name in _ONE_RUN if getattr(args, name)]
    if args.runs is not None:
        if given:
            raise ValueError(f"--runs lists every run: leave out {' '.join(given)}")
        try:
            runs = tracking.parse_runs(json.loads(args.runs))
        except json.JSONDecodeError as err:
            raise ValueError(f"--runs is not valid JSON: {err}") from None
    elif not (args.experiment and args.run_name):
        raise ValueError("give --experiment and --run-name (one run), or --runs JSON (many)")
    else:
        runs = [tracking.RunSpec(
            args.experiment, args.run_name, sections=tuple(args.section), params=dict(args.param),
            curves=args.curves, metrics=args.metrics, tables=tuple(args.table), figures=tuple(args.figure),
            artifacts=tuple(args.artifact), datasets=tuple(args.dataset), tags=dict(args.tag),
        )]  # fmt: skip
    cfg = load_config(args.config).model_dump(mode="json")
    tags = {
        **tracking.git_tags(),
        "config_sha256": tracking.config_sha256(cfg),
        "config_file": str(args.config),
    }
    pipeline = args.pipeline_run or os.environ.get(tracking.PIPELINE_ENV) or tracking.new_invocation()
    records = tracking.log_runs(runs, cfg, tags=tags, pipeline=pipeline)
    for record in records:
        print(
            f"{'unchanged' if record.reused else 'logged'} run {record.run_id} "
            f"({record.experiment}/{record.run_name}) in {record.tracking_uri}"
        )
    if args.out:
        ids = [asdict(r) for r in records] if args.runs is not None else asdict(records[0])
        atomic.write_text(args.out, json.dumps(ids, indent=2) + "\n")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an energy model or a plain denoiser (resumes from its checkpoint)",
        description="Writes OUT/model.pt and OUT/metrics.jsonl; resumable state (checkpoint.pt, "
        "checkpoint.prev.pt, checkpoint.metrics.jsonl) lives in --ckpt-dir. Exit code 75: stopped by "
        "SIGTERM/SIGUSR1 after a checkpoint, rerun to resume; 3: non-finite loss; 2: bad input. With "
        "--attempt N > 1 (Snakemake's retry), a training whose previous attempt failed with 2 or 3 "
        "fails again at once instead of retrying. Multi-GPU: "
        "torchrun --nproc-per-node N -m image_density.cli train ...",
    )
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--model", choices=["energy", "denoiser"], required=True)
    p.add_argument("--dataset", required=True, help="in energy.datasets (or generalization.dataset)")
    p.add_argument("--subset", choices=["A", "B"], help="generalization model: first (A) / last (B) n images")
    p.add_argument("--n", type=int, help="generalization model: number of training images")
    p.add_argument("--data", type=Path, help="prepared dataset folder (default: <results>/data/<NAME>)")
    p.add_argument("--out", type=Path, required=True, help="folder of model.pt and metrics.jsonl")
    p.add_argument(
        "--ckpt-dir",
        type=Path,
        help="resumable state, kept outside Snakemake's declared outputs (default: --out)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_attempt(p)
    p.set_defaults(func=_train)


def _add_attempt(p) -> None:
    p.add_argument("--attempt", type=int, default=1,
                   help="Snakemake's attempt (1 + retries so far); see --help of train")  # fmt: skip
    p.add_argument("--requeue", type=int, choices=[0, 1], default=0,
                   help="1: under a SLURM batch job, an interrupted training (exit 75) puts its own "
                   "job back in the queue (scontrol requeue), where it resumes; the SLURM profile "
                   "sets it for the training rules (resources: requeue)")  # fmt: skip
    p.add_argument("--live-every", type=float, default=60, metavar="SECONDS",
                   help="log the curves to MLflow (experiment 'training', run <model folder>) every "
                   "SECONDS while training (default 60; a shorter training is left to the tracking "
                   "job); 0: never")  # fmt: skip


# The failure of the last attempt, in --ckpt-dir: Snakemake retries any failed job, but only an
# interrupted training (exit 75) gains from a retry; a NaN or a bad input would fail again after
# hours on a GPU.
FAILED_NAME = "failed.json"


def _refuse_retry(command: str, ckpt_dir: Path, attempt: int) -> None:
    """Attempt 1 (a new Snakemake invocation) forgets the record; a retry of a training that failed
    for good exits at once with the recorded code."""
    record = ckpt_dir / FAILED_NAME
    if attempt <= 1:
        record.unlink(missing_ok=True)
        return
    if record.is_file():
        failed = json.loads(record.read_text())
        print(f"image-density {command}: attempt {attempt} not run: attempt {failed['attempt']} "
              f"failed with exit {failed['exit']} ({failed['error']}); fix it and rerun",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(failed["exit"])


def _record_failure(ckpt_dir: Path, attempt: int, code: int, err: Exception) -> None:
    """Only for a training that started (its folder exists): bad arguments fail before any work, and
    fail as fast on a retry."""
    if os.environ.get("RANK", "0") != "0" or not ckpt_dir.is_dir():
        return
    record = {"attempt": attempt, "exit": code, "error": f"{type(err).__name__}: {err}"}
    atomic.write_text(ckpt_dir / FAILED_NAME, json.dumps(record) + "\n")


def _live_run(args, ckpt_dir: Path):
    """tracking.LiveRun on the training's live log (rank 0, with --live-every), else nothing."""
    import contextlib

    if args.live_every <= 0 or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    from image_density import tracking
    from image_density.train import LIVE_METRICS

    cfg = load_config(args.config)
    out = args.out.resolve()
    models = (cfg.results / "models").resolve()
    name = "/".join(out.relative_to(models).parts) if out.is_relative_to(models) else str(args.out)
    # the params of what this training reads (jobs.JOBS), as the workflow's tracking logs them
    job = jobs.training_job(args.command, args.model, getattr(args, "subset", None))
    params = jobs.settings(job, cfg, args.dataset)
    tags = {**tracking.git_tags(), "config_sha256": tracking.config_sha256(params)}
    return tracking.LiveRun(ckpt_dir / LIVE_METRICS, ckpt_dir / "mlflow_run.json", "training", name,
                            params=params, tags=tags, every_s=args.live_every)  # fmt: skip


def _requeue_slurm_job(command: str) -> None:
    """Put this SLURM batch job back in the queue (same job id: Snakemake, polling it, keeps waiting;
    the job's script reruns the training, which resumes from the checkpoint just written). The one
    failure worth running again: the SLURM profile has no Snakemake retries, so a NaN or a bad input
    (exit 3, 2) fails once. Outside a batch job, or when SLURM refuses, the exit 75 stands."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or os.environ.get("RANK", "0") != "0":
        return
    import subprocess

    try:
        res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        print(f"image-density {command}: scontrol requeue {job} failed: {err}", file=sys.stderr)
        return
    print(f"image-density {command}: scontrol requeue {job}: exit {res.returncode} {res.stderr.strip()}",
          file=sys.stderr, flush=True)  # fmt: skip


def _run_training(command: str, run, args) -> None:
    """Call run() -> TrainResult; exit 75 when a signal stopped it after a checkpoint, 3 on a non-finite
    loss (train.py), 2 on bad input (main); 3 and bad input are recorded for _refuse_retry (an OS
    error or a busy output is not: a retry may succeed)."""
    from image_density.train import EXIT_INTERRUPTED, EXIT_NONFINITE, Interrupted, NonFiniteLoss

    ckpt_dir = args.ckpt_dir or args.out
    _refuse_retry(command, ckpt_dir, args.attempt)
    try:
        with _live_run(args, ckpt_dir):
            res = run()
    except Interrupted as err:
        print(f"image-density {command}: {err}", file=sys.stderr, flush=True)
        if args.requeue:
            _requeue_slurm_job(command)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except NonFiniteLoss as err:
        _record_failure(ckpt_dir, args.attempt, EXIT_NONFINITE, err)
        print(f"image-density {command}: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_NONFINITE) from None
    except atomic.Busy:  # another process holds the output: a retry may well succeed
        raise
    except (ConfigError, ValueError) as err:  # not OSError: a full disk or a lost mount is transient
        _record_failure(ckpt_dir, args.attempt, 2, err)
        raise
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"trained to step {res.step} (resumed from {res.resumed_from}): {res.model_path}")


def _train(args) -> None:
    from image_density.plan import train_from_config

    cfg = load_config(args.config)
    _run_training("train", lambda: train_from_config(
        cfg, args.model, args.dataset, args.data or cfg.results / "data" / args.dataset, args.out,
        ckpt_dir=args.ckpt_dir, subset=args.subset, n=args.n, progress=not args.no_progress,
    ), args)  # fmt: skip


def _add_train_scale(sub) -> None:
    p = sub.add_parser(
        "train-scale",
        help="train one network of the multi-scale model (paper 2's denoisers, or energies)",
        description="--model denoiser (paper 2): --scale lowpass is the global CNN on the coarsest "
        "low-pass x_J, --scale j (0 = finest) the conditional CNN of the details of scale j, --scale "
        "flat the pixel-domain baseline; energy: lowpass is the UNet energy of x_J, j the conditional "
        "energy of scale j (dual score matching). Outputs and exit codes as `train`.",
    )
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--dataset", required=True, help="in multiscale.datasets")
    p.add_argument("--model", choices=["denoiser", "energy"], default="denoiser")
    p.add_argument("--scale", required=True, help="lowpass, flat or a scale index j (0 = finest)")
    p.add_argument("--rf", type=int, help="receptive field, one of multiscale.rf (not for lowpass)")
    p.add_argument("--data", type=Path, help="prepared dataset folder (default: <results>/data/<NAME>)")
    p.add_argument("--out", type=Path, required=True, help="folder of model.pt and metrics.jsonl")
    p.add_argument(
        "--ckpt-dir",
        type=Path,
        help="resumable state, kept outside Snakemake's declared outputs (default: --out)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_attempt(p)
    p.set_defaults(func=_train_scale)


def _train_scale(args) -> None:
    from image_density.multiscale.nets import parse_scale
    from image_density.multiscale.train import train_scale_from_config

    cfg = load_config(args.config)
    scale = parse_scale(args.scale)
    _run_training("train-scale", lambda: train_scale_from_config(
        cfg, args.dataset, args.model, scale, args.rf, args.data or cfg.results / "data" / args.dataset,
        args.out, ckpt_dir=args.ckpt_dir, progress=not args.no_progress,
    ), args)  # fmt: skip


def _add_multiscale_models(p) -> None:
    p.add_argument("--config", type=Path, required=True)
    p.add_argument(
        "--models",
        type=Path,
        nargs="+",
        required=True,
        metavar="MODEL_PT",
        help="model.pt files written by `train-scale`, all of one dataset and --model",
    )


def _write_table(path: Path, table) -> None:
    """A DataFrame as a tidy CSV, missing values (NaN, NA) as empty cells."""
    from image_density.tables import write_rows

    write_rows(path, table.astype(object).where(table.notna(), None).to_dict("records"), list(table.columns))


def _save_array(path: Path, array) -> None:
    import numpy as np

    with atomic.replacing(path) as tmp:
        np.save(tmp, array)


def _add_denoise(sub) -> None:
    p = sub.add_parser(
        "denoise",
        help="PSNR of the multi-scale and flat denoisers per RF and of the low-pass-only reconstruction",
        description="Noise of std multiscale.sigmas (0..255 scale) on the first multiscale.eval_images "
        "test images, the same for every model -> a tidy table: dataset, model, rf, sigma, psnr_in, "
        "psnr_out.",
    )
    _add_multiscale_models(p)
    p.add_argument(
        "--data", type=Path, help="prepared folder (default: <results>/data/<the models' dataset>)"
    )
    p.add_argument("--out", type=Path, required=True, help="CSV, e.g. results/multiscale/faces/denoising.csv")
    p.set_defaults(func=_denoise)


def _denoise(args) -> None:
    from image_density.studies.multiscale import run_denoise

    table = run_denoise(load_config(args.config), args.models, args.data)
    _write_table(args.out, table)
    print(f"denoise: {len(table)} rows -> {args.out}")


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="synthesize images from scratch with the multi-scale (and flat) denoisers of one RF",
        description="multiscale.sampler.n_samples images per model -> OUT.png (row 1: multi-scale, "
        "row 2: flat of the same RF, when given), OUT.npy (rows, n, C, H, W) in [0, 1], and "
        "OUT.sampler.csv: iterations, final SNR and stop status (converged, diverged, capped) per "
        "sample and stage.",
    )
    _add_multiscale_models(p)
    p.add_argument("--rf", type=int, required=True)
    p.add_argument(
        "--out", type=Path, required=True, help="PNG, e.g. results/multiscale/faces/samples-rf9.png"
    )
    p.set_defaults(func=_sample)


def _sample(args) -> None:
    from image_density.studies.multiscale import run_sample, write_png_grid

    grid, labels, trace = run_sample(load_config(args.config), args.models, args.rf)
    _save_array(args.out.with_suffix(".npy"), grid)
    write_png_grid(grid, args.out)
    _write_table(args.out.with_suffix(".sampler.csv"), trace)
    print(f"sample: rows {labels} -> {args.out}; {_trace_summary(trace)}")


def _trace_summary(trace) -> str:
    """Per model and stage: median iterations and final SNR, and every sample that did not converge."""
    parts = []
    for (model, stage), g in trace.groupby(["model", "stage"], sort=False):
        bad = {s: int((g["status"] == s).sum()) for s in ("diverged", "capped")}
        flags = "".join(f", {n} {s}" for s, n in bad.items() if n)
        parts.append(
            f"{model} {stage}: {g['iterations'].median():.0f} it, {g['final_snr_db'].median():.1f} dB{flags}"
        )
    return "; ".join(parts)


def _add_super_resolve(sub) -> None:
    p = sub.add_parser(
        "super-resolve",
        help="sample the details of test images given their low-pass, with the model of one RF",
        description="The first multiscale.superres_images test images, multiscale.sampler.n_samples "
        "samples each -> OUT.png (per image a row: original, low-pass only, samples, their mean), "
        "OUT.npy of the same, a one-row table of PSNRs (samples, their mean, low-pass only), and "
        "OUT.sampler.csv: the sampler's iterations, final SNR and stop status per sample and scale.",
    )
    _add_multiscale_models(p)
    p.add_argument("--rf", type=int, required=True)
    p.add_argument(
        "--data", type=Path, help="prepared folder (default: <results>/data/<the models' dataset>)"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="PNG, e.g. results/multiscale/faces/superres-rf9.png"
    )
    p.add_argument("--table", type=Path, required=True, help="CSV of the PSNRs")
    p.set_defaults(func=_super_resolve)


def _super_resolve(args) -> None:
    from image_density.studies.multiscale import run_super_resolve, write_png_grid

    grid, table, trace = run_super_resolve(load_config(args.config), args.models, args.rf, args.data)
    _save_array(args.out.with_suffix(".npy"), grid)
    write_png_grid(grid, args.out)
    _write_table(args.table, table)
    _write_table(args.out.with_suffix(".sampler.csv"), trace)
    print(f"super-resolve: {_trace_summary(trace)}")
    print(
        f"super-resolve: psnr of samples {table['psnr_samples'].iloc[0]:.2f} dB, of their mean "
        f"{table['psnr_mean'].iloc[0]:.2f} dB -> {args.out}, {args.table}"
    )


def _add_multiscale_nll(sub) -> None:
    p = sub.add_parser(
        "multiscale-nll",
        help="NLL (bits/dim) of the multi-scale energies per RF -> rows in the style of nll.csv",
        description="log p(x) = log p(x_J) + sum_j log p(d_j | x_j): the low-pass energy normalized at "
        "t_max on training images, each conditional energy per conditioning image; settings from "
        "multiscale.energy.likelihood, images: the first multiscale.eval_images of --split.",
    )
    _add_multiscale_models(p)
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument(
        "--data", type=Path, help="prepared folder (default: <results>/data/<the models' dataset>)"
    )
    p.add_argument(
        "--train-data",
        type=Path,
        help="prepared folder the models were trained on (default: <results>/data/<their dataset>)",
    )
    p.add_argument("--table", type=Path, required=True, help="CSV, e.g. results/multiscale/faces/nll.csv")
    p.set_defaults(func=_multiscale_nll)


def _multiscale_nll(args) -> None:
    from image_density.studies.multiscale import run_multiscale_nll

    table = run_multiscale_nll(load_config(args.config), args.models, args.split, args.data, args.train_data)
    _write_table(args.table, table)
    for row in table.itertuples():
        print(f"{row.dataset} {row.model} {row.split}: {row.nll_bits_per_dim:.4f} bits/dim")


def _add_nll(sub) -> None:
    p = sub.add_parser(
        "nll",
        help="NLL (bits/dim) of an energy model on a dataset split -> one row of a tidy table",
        description="log Z at t_max on the model's training images, then -log p(x) = U(x) + log Z per "
        "image. Upserts the row (dataset, model, split) of --table; per-image values go to --per-image.",
    )
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--model-path", type=Path, required=True, help="a model.pt written by `train`")
    p.add_argument("--dataset", required=True, help="the dataset to evaluate on")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--data", type=Path, help="its prepared folder (default: <results>/data/<NAME>)")
    p.add_argument(
        "--train-data",
        type=Path,
        help="prepared folder the model was trained on (default: <results>/data/<its dataset>)",
    )
    p.add_argument("--table", type=Path, required=True, help="tidy CSV, e.g. results/tables/nll.csv")
    p.add_argument(
        "--per-image",
        type=Path,
        help="per-image CSV (default: <table dir>/nll_per_image/<dataset>_<model>_<split>.csv)",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N images of the split")
    p.add_argument("--batch", type=int, default=128, help="images per forward pass")
    p.set_defaults(func=_nll)


def _nll(args) -> None:
    from image_density.checkpoint import load_verified
    from image_density.studies.nll import KEY_COLUMNS, evaluate_nll
    from image_density.tables import upsert_rows, write_rows

    cfg = load_config(args.config)
    for folder in {args.table.parent, (args.per_image or args.table).parent}:
        folder.mkdir(parents=True, exist_ok=True)  # an unusable destination fails before the work
    trained_on = load_verified(args.model_path, kind="model").get("meta", {}).get("dataset", args.dataset)
    res = evaluate_nll(
        cfg,
        args.model_path,
        args.dataset,
        args.data or cfg.results / "data" / args.dataset,
        args.train_data or cfg.results / "data" / trained_on,
        args.split,
        limit=args.limit,
        batch_size=args.batch,
    )
    row = res.row
    per_image = args.per_image or (
        args.table.parent / "nll_per_image" / f"{row['dataset']}_{row['model']}_{row['split']}.csv"
    )
    columns, values = list(res.per_image), zip(*res.per_image.values(), strict=True)
    write_rows(per_image, [dict(zip(columns, v, strict=True)) for v in values])
    upsert_rows(args.table, [row], KEY_COLUMNS)
    print(
        f"{row['dataset']} {row['model']} {row['split']}: {row['nll_bits_per_dim']:.4f} bits/dim "
        f"(log Z {row['log_z_nats']:.2f} nats) -> {args.table}"
    )


def _add_collect(sub) -> None:
    p = sub.add_parser(
        "collect",
        help="merge the small tables of parallel jobs into one tidy table (a Snakemake gather step)",
        description="Rows of every TABLE in order, columns in first-seen order; rows sharing the values "
        "of the --key columns are an error (with --dedupe, unless they are identical in every column).",
    )
    p.add_argument("tables", type=Path, nargs="+", metavar="TABLE")
    p.add_argument("--out", type=Path, required=True, help="e.g. results/tables/nll.csv")
    p.add_argument(
        "--key",
        type=lambda text: text.split(","),
        default=[],
        help="comma-separated columns that identify a row, e.g. dataset,model,split",
    )
    p.add_argument(
        "--dedupe",
        action="store_true",
        help="keep one of rows identical in every column (the paper's rows each part carries)",
    )
    p.set_defaults(func=_collect)


def _collect(args) -> None:
    from image_density.tables import read_rows, write_rows

    rows, seen = [], {}
    for path in args.tables:
        if not path.is_file():
            raise FileNotFoundError(f"table not found: {path}")
        for row in read_rows(path)[1]:
            if args.dedupe and row in rows:
                continue
            key = tuple(row.get(k) for k in args.key)
            if args.key and key in seen:
                raise ValueError(
                    f"rows with {dict(zip(args.key, key, strict=True))} in both {seen[key]} and {path}"
                )
            seen[key] = path
            rows.append(row)
    write_rows(args.out, rows)
    print(f"{len(rows)} rows from {len(args.tables)} tables -> {args.out}")


def _add_study(sub) -> None:
    p = sub.add_parser(
        "study",
        help="run one of paper 1's studies -> a tidy table (and companions beside it)",
        description="; ".join(f"{name}: {study.help}" for name, study in STUDIES.items())
        + ". Companions are written beside OUT (OUT_summary.csv, ...). Settings: `studies:` params.",
    )
    p.add_argument("name", choices=list(STUDIES))
    p.add_argument("--config", type=Path, required=True)
    p.add_argument(
        "--models",
        type=Path,
        nargs="+",
        default=[],
        metavar="MODEL_PT",
        help="model.pt files written by `train` (all but nll)",
    )
    p.add_argument("--table", type=Path, help="nll: the table the `nll` command writes")
    p.add_argument("--dataset", help="evaluate on this dataset (default: the one the models were trained on)")
    p.add_argument(
        "--data",
        type=Path,
        help="prepared folder of that dataset (nll: the folder of all prepared datasets); "
        "default under <results>/data",
    )
    p.add_argument("--out", type=Path, required=True, help="e.g. results/tables/denoising.csv")
    p.set_defaults(func=_study)


def _study(args) -> None:
    import numpy as np

    from image_density.studies.run import run_study
    from image_density.tables import write_rows

    if args.out.suffix != ".csv":
        raise ValueError(f"--out must be a .csv path, got {args.out}")
    cfg = load_config(args.config)
    outputs = run_study(args.name, cfg, models=args.models, table=args.table, dataset=args.dataset,
                        data_dir=args.data)  # fmt: skip
    # companions first, the main table (what Snakemake waits for) last
    for suffix, value in sorted(outputs.items(), key=lambda kv: kv[0] == ""):
        path = args.out.with_name(args.out.stem + suffix) if suffix else args.out
        if isinstance(value, np.ndarray):
            _save_array(path, value)
        else:
            write_rows(path, value.to_dict("records"), list(value.columns))
        print(f"study {args.name}: {path}")


def _add_figure(sub) -> None:
    p = sub.add_parser(
        "figure",
        help="draw a study's figure from its table(s) -> OUT.png and OUT.pdf",
        description="Reads tables only (and the content study's image array). generalization and "
        "content also read TABLE_summary.csv, content TABLE_extremes.npy and TABLE_affine.csv, unless "
        "given. Paper 2: "
        "multiscale_denoising and rf_ablation read the `denoise` table (results/tables/"
        "multiscale_denoising.csv), rf_ablation also the `multiscale-nll` table given as --nll.",
    )
    p.add_argument("name", choices=sorted(FIGURE_NAMES))
    p.add_argument("--table", type=Path, required=True, help="the study's table (results/tables/NAME.csv)")
    p.add_argument("--summary", type=Path, help="generalization, content: the summary table")
    p.add_argument("--images", type=Path, help="content: the .npy of extreme images")
    p.add_argument("--affine", type=Path, help="content: the log p(a x + b) sweep (TABLE_affine.csv)")
    p.add_argument(
        "--nll",
        type=Path,
        nargs="?",
        help="rf_ablation: the multi-scale NLL table (absent or no value: no NLL panel)",
    )
    p.add_argument("--out", type=Path, required=True, help="e.g. results/figures/nll.png (.pdf beside it)")
    p.set_defaults(func=_figure)


def _figure(args) -> None:
    from image_density.figures import make_figure

    kw = dict(summary=args.summary, images=args.images, nll=args.nll, affine=args.affine)
    for path in make_figure(args.name, args.table, args.out, **kw):
        print(f"figure {args.name}: {path}")


def _add_metrics(sub) -> None:
    p = sub.add_parser(
        "metrics",
        help="collect the headline numbers of the tables into one JSON (DVC metrics, the report)",
        description="Each option takes the tables of one section, zero or more (several are "
        "concatenated); a section without tables is left out. Non-finite numbers are written as null.",
    )
    for name, what in (
        ("--nll", "the nll study's table (results/tables/nll_study.csv)"),
        ("--denoising", "results/tables/denoising.csv"),
        ("--generalization", "results/tables/generalization_summary.csv"),
        ("--content", "the content study's summaries (results/tables/content_NAME_summary.csv)"),
        ("--toy", "results/tables/toy_summary.csv"),
        ("--multiscale-denoising", "results/tables/multiscale_denoising.csv"),
        ("--multiscale-nll", "results/tables/multiscale_nll.csv"),
        ("--superres", "results/tables/superres.csv"),
    ):
        p.add_argument(name, type=Path, nargs="*", default=[], metavar="TABLE", help=what)
    p.add_argument("--out", type=Path, required=True, help="e.g. results/metrics.json")
    p.set_defaults(func=_metrics)


def _metrics(args) -> None:
    import json

    import pandas as pd

    from image_density.studies.metrics import headline_metrics

    names = ["nll", "denoising", "generalization", "content", "toy", "multiscale_denoising", "multiscale_nll"]
    paths = {name: getattr(args, name) for name in [*names, "superres"] if getattr(args, name)}
    missing = [str(p) for group in paths.values() for p in group if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"tables not found: {missing}")
    # several tables of one kind (e.g. a content summary per dataset) are one table
    tables = {name: pd.concat(map(pd.read_csv, group), ignore_index=True) for name, group in paths.items()}
    metrics = headline_metrics(tables)
    # which tables exactly (a later reader can check them against these): strings, not metrics
    metrics["sources"] = {str(p): atomic.sha256_file(p) for group in paths.values() for p in group}
    atomic.write_text(args.out, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    print(f"metrics: {', '.join(metrics) or 'none'} -> {args.out}")


COMMANDS = [
    _add_schema, _add_validate, _add_prepare, _add_manifest, _add_track, _add_train, _add_nll, _add_collect,
    _add_study, _add_figure, _add_metrics, _add_train_scale, _add_denoise, _add_sample, _add_super_resolve,
    _add_multiscale_nll,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="image-density", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, OSError, ValueError) as err:  # OSError: a missing input, a full disk, ...
        print(f"image-density {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
