"""Ground truth for paper 1's estimators: learned energies vs the exact Gaussian field.

For each dataset of the params' `energy:` section (Gaussian fields, periodic or modulated; or those
given by --datasets): prepare, train the energy (dual score matching) and the plain denoiser
(resumable: rerunning continues), then print one JSON line per figure and write
results/<bench>/tables/ground_truth.csv (ground_truth_<names>.csv with --datasets):
  nll          mean test NLL (bits/dim) vs the exact entropy, and per-image |NLL - exact NLL|
  wiener       denoiser MSE vs the exact Wiener filter at t in {1e-3, 1e-2, 1e-1}, in dB
  stationary   non-periodic fields only: the same NLL error and Wiener gaps of the closest periodic
               stationary Gaussian (GaussianEnergy.stationary), the floor of a shift-equivariant model
  parity       output PSNR of the energy vs the plain denoiser at the same t
  ode          energy NLL vs the probability-flow ODE NLL of the same model (ode_images images)
  transport    per noise level t, the model's minus the exact (t/d) E[dU/dt] and (t/2d) E[Laplacian U]
               (likelihood.transport_integrand), each integrated over log t from t_min (bits/dim):
               their sum at t_max is minus the NLL error, so it shows where the error accumulates
  transport_split  per field, the two integrals over the whole t range, sign as the NLL error: the
               share of the time score and of the score's divergence (their sum ~ the NLL error of
               the transport images)

    python benchmarks/gaussian_ground_truth.py --config params/bench-gaussian.yaml [--datasets field16 ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from image_density import likelihood, units
from image_density.config import load_config
from image_density.data import load_prepared, prepare_dataset
from image_density.noise import add_noise
from image_density.plan import train_from_config
from image_density.studies.nll import exact_gaussian, load_study_model

WIENER_T = (1e-3, 1e-2, 1e-1)
TRANSPORT = {"points": 33, "images": 128, "probes": 4}


def emit(rows: list[dict], **row) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def transport(rows: list[dict], name: str, model, exact, x: torch.Tensor, train, seed: int) -> None:
    """The transport figure: per t, the learned minus the exact integrand on the same draws, and the
    running integrals over log t in bits/dim (likelihood.transport_integrand)."""
    lo, hi = np.log10(train.t_min), np.log10(train.t_max)
    t_grid = torch.logspace(lo, hi, TRANSPORT["points"], dtype=torch.float64)
    parts = [
        likelihood.transport_integrand(m, x, t_grid, TRANSPORT["probes"], torch.Generator().manual_seed(seed))
        for m in (model, exact)
    ]  # fmt: skip
    err_a, err_b = (parts[0][i] - parts[1][i] for i in range(2))
    log_t = t_grid.log()

    def cumulative(e):
        steps = 0.5 * (e[1:] + e[:-1]) * log_t.diff()
        return torch.cat([e.new_zeros(1), steps.cumsum(0)]) / units.LN2

    cum_a, cum_b = cumulative(err_a), cumulative(err_b)
    emit(rows, dataset=name, figure="transport_split", model="energy", time_score_bits=-float(cum_a[-1]),
         laplacian_bits=-float(cum_b[-1]), value=-float(cum_a[-1] + cum_b[-1]))  # fmt: skip
    for k, t in enumerate(t_grid.tolist()):
        emit(rows, dataset=name, figure="transport", model="energy", t=t,
             time_score_error=float(err_a[k]), laplacian_error=float(err_b[k]),
             cumulative_time_score_bits=float(cum_a[k]), cumulative_laplacian_bits=float(cum_b[k]),
             value=-float(cum_a[k] + cum_b[k]))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("params/bench-gaussian.yaml"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--datasets", nargs="+", help="a subset of energy.datasets (default: all of them)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    names = args.datasets or cfg.energy.datasets
    unknown = sorted(set(names) - set(cfg.energy.datasets))
    if unknown:
        p.error(f"--datasets {unknown} are not in energy.datasets of {args.config}: {cfg.energy.datasets}")
    rows: list[dict] = []
    for name in names:
        data_dir = cfg.results / "data" / name
        if not data_dir.exists():
            prepare_dataset(cfg.datasets[name], data_dir, name)
        data = load_prepared(data_dir)
        exact = exact_gaussian(data)
        models = {}
        for kind in ("energy", "denoiser"):
            out = cfg.results / "models" / name / kind
            start = time.time()
            if not (out / "model.pt").exists():
                train_from_config(
                    cfg,
                    kind,
                    name,
                    data_dir,
                    out,
                    ckpt_dir=cfg.results / "ckpt" / name / kind,
                    progress=False,
                )
            emit(rows, dataset=name, figure="train_seconds", model=kind, value=time.time() - start)
            models[kind] = load_study_model(cfg, out / "model.pt", data_dir)[0]
        energy = models["energy"]
        x = data.images("test")  # (N, C, H, W)
        nll = -energy.log_p_nats(x).numpy()
        nll_exact = exact.nll_exact(x.double()).numpy()

        def to_bits(v, d=data.d):
            return units.nll_bits_per_dim(v, d, quantized=False)

        entropy_bits = to_bits(likelihood.gaussian_entropy_nats(exact.eigenvalues))
        emit(
            rows,
            dataset=name,
            figure="nll_bits_per_dim",
            model="energy",
            value=float(to_bits(nll).mean()),
            exact=float(to_bits(nll_exact).mean()),
            entropy=float(entropy_bits),
            error=float(to_bits(nll).mean() - to_bits(nll_exact).mean()),
            per_image_mae=float(np.abs(to_bits(nll) - to_bits(nll_exact)).mean()),
            per_image_std=float(to_bits(nll).std()),
            exact_per_image_std=float(to_bits(nll_exact).std()),
            per_image_r=float(np.corrcoef(nll, nll_exact)[0, 1]),
        )
        denoisers = {kind: m.model for kind, m in models.items()}
        stationary = exact.stationary()
        if stationary is not exact:
            nll_stationary = stationary.nll_exact(x.double()).numpy()
            emit(rows, dataset=name, figure="nll_bits_per_dim", model="stationary",
                 value=float(to_bits(nll_stationary).mean()), exact=float(to_bits(nll_exact).mean()),
                 error=float(to_bits(nll_stationary).mean() - to_bits(nll_exact).mean()))  # fmt: skip
            denoisers["stationary"] = stationary
        gen = torch.Generator().manual_seed(cfg.seed)
        for t_val in WIENER_T:
            t = torch.full((len(x),), t_val)
            y, _ = add_noise(x, t, gen)
            mse_w = (exact.denoise(y.double(), t.double()).float() - x).square().mean().item()
            psnr = {}
            for kind, m in denoisers.items():
                dtype = torch.float64 if kind == "stationary" else x.dtype
                mse = (m.denoise(y.to(dtype), t.to(dtype)).detach().float() - x).square().mean().item()
                psnr[kind] = units.mse_to_psnr(mse)
                emit(
                    rows,
                    dataset=name,
                    figure="wiener_gap_db",
                    model=kind,
                    t=t_val,
                    value=10 * np.log10(mse / mse_w),
                    psnr=psnr[kind],
                    psnr_wiener=units.mse_to_psnr(mse_w),
                )
            emit(
                rows,
                dataset=name,
                figure="parity_db",
                model="energy-denoiser",
                t=t_val,
                value=psnr["energy"] - psnr["denoiser"],
            )
        transport(rows, name, energy.model, exact, x[: TRANSPORT["images"]], cfg.energy.train, cfg.seed)
        spec = cfg.energy.likelihood
        xo = x[: spec.ode_images]
        start = time.time()
        ode = likelihood.ode_nll(
            energy.model,
            xo,
            cfg.energy.train.t_min,
            spec.t_max,
            spec.ode_rtol,
            spec.ode_atol,
            spec.ode_trace,
            generator=torch.Generator().manual_seed(cfg.seed),
            prior_mean=cfg.datasets[name].mean,
            prior_var=float(exact.eigenvalues.mean()),
            probes=spec.ode_probes,
        )
        ode_s = time.time() - start
        start = time.time()
        one_pass = -energy.log_p_nats(xo)
        pass_s = time.time() - start
        emit(
            rows,
            dataset=name,
            figure="ode_vs_energy_bits_per_dim",
            model="energy",
            value=float(((ode - one_pass).numpy() / (data.d * units.LN2)).mean()),
            ode=float(to_bits(ode.numpy()).mean()),
            energy=float(to_bits(one_pass.numpy()).mean()),
            ode_images_per_s=len(xo) / ode_s,
            energy_images_per_s=len(xo) / pass_s,
        )
    out = (
        cfg.results
        / "tables"
        / ("ground_truth.csv" if args.datasets is None else f"ground_truth_{'_'.join(names)}.csv")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)


if __name__ == "__main__":
    main()
