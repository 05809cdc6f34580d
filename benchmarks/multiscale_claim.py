"""Paper 2's central claim at a CPU scale: multi-scale denoisers whose conditional networks see a small
neighbourhood (RF 5/9/13) against flat denoisers of every multiscale.rf, on natural-image patches
(scikit-image's photographs, whole photographs kept apart between train and test).

Prepares the params' dataset, trains (resumable: rerunning continues) the low-pass network, a cCNN per
scale j for each RF of --ms-rf, and a flat network for every multiscale.rf, and, when the params have
a multiscale.energy section, the multi-scale energies of the same RFs (the likelihood version of the
ablation, beyond both papers), then writes under <results>/:
  tables/denoising.csv      output PSNR per model, RF and sigma (20/40/60/100 of 255), paper 2's rows
  tables/claim.csv          per sigma: multi-scale RF r against the flat RF r and the largest flat RF
  tables/nll.csv            per RF: multi-scale NLL (bits/dim) of the same test images, per-scale shares
  tables/superres.csv       super-resolution PSNRs per RF (samples, their mean, low-pass only)
  tables/train_seconds.csv  per network
  figures/rf_ablation.png   PSNR vs RF, multi-scale (solid) vs flat (dashed); NLL vs RF beside it
  multiscale/<dataset>/samples-rf<R>.png|.npy|.sampler.csv   multi-scale row above the flat row
  multiscale/<dataset>/superres-rf<R>.png|.npy|.sampler.csv
and prints the claim table.

    python benchmarks/multiscale_claim.py            # params/bench-multiscale-claim.yaml (~1 h)
    python benchmarks/multiscale_claim.py --quick    # params/bench-multiscale-claim-quick.yaml (minutes)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from image_density.config import load_config
from image_density.data import load_prepared, prepare_dataset
from image_density.figures import make_figure
from image_density.multiscale.nets import Net
from image_density.multiscale.train import train_scale_from_config
from image_density.studies.multiscale import (
    denoising_table,
    first_images,
    load_scale_models,
    multiscale_nll,
    nll_rows,
    sample_grid,
    super_resolution,
    training_lowpasses,
    write_png_grid,
)

FULL, QUICK = "params/bench-multiscale-claim.yaml", "params/bench-multiscale-claim-quick.yaml"


def claim_table(table: pd.DataFrame, ms_rfs: list[int]) -> pd.DataFrame:
    """Per sigma and multi-scale RF r: its PSNR, the flat RF r's, the largest flat RF's, differences."""
    ours = table[table["source"] == "ours"]
    flat = ours[ours["model"] == "flat"]
    top = int(flat["rf"].max())
    rows = []
    for (rf, sigma), r in ours[ours["model"] == "multiscale"].groupby(["rf", "sigma"]):
        if int(rf) not in ms_rfs:
            continue
        at = flat[flat["sigma"] == sigma].set_index("rf")["psnr_out"]
        ms = float(r["psnr_out"].iloc[0])
        same, largest = float(at[rf]), float(at[top])
        rows.append({"sigma": sigma, "rf": int(rf), "multiscale": ms, "flat_same_rf": same,
                     "flat_largest_rf": largest, "largest_rf": top, "ms_minus_flat_same_rf": ms - same,
                     "ms_minus_flat_largest": ms - largest})  # fmt: skip
    return pd.DataFrame(rows)


def train_net(cfg, dataset: str, family: str, scale, rf: int | None, seconds: list[dict]) -> Path:
    """Train one network unless its model file exists (resuming from its checkpoint); its path. Appends
    the seconds spent to `seconds` (about 0 for a network trained by an earlier run)."""
    net = Net(family, scale, rf).name
    out = cfg.results / "models" / dataset / net
    start = time.time()
    if not (out / "model.pt").exists():
        train_scale_from_config(cfg, dataset, family, scale, rf, cfg.results / "data" / dataset, out,
                                ckpt_dir=cfg.results / "ckpt" / dataset / net, progress=False)  # fmt: skip
    seconds.append({"dataset": dataset, "model": net, "train_seconds": time.time() - start})
    print(f"{net}: {seconds[-1]['train_seconds']:.0f} s", flush=True)
    return out / "model.pt"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help=f"params file (default {FULL}, with --quick {QUICK})")
    p.add_argument("--quick", action="store_true", help=f"the few-minute setting: {QUICK}")
    p.add_argument("--ms-rf", default="5,9,13", help="RFs of the multi-scale models (the claim's)")
    # 1: on the shared 2 cores (load ~10) two torch threads made a small network's step 20x slower
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config or (QUICK if args.quick else FULL))
    m = cfg.multiscale
    ms_rfs = [int(r) for r in args.ms_rf.split(",")]
    unknown = sorted(set(ms_rfs) - set(m.rf))
    if unknown:
        raise SystemExit(f"--ms-rf {unknown} not in multiscale.rf = {m.rf}")
    (name,) = m.datasets
    data_dir = cfg.results / "data" / name
    if not data_dir.exists():
        prepare_dataset(cfg.datasets[name], data_dir, name)
    data = load_prepared(data_dir)
    levels = m.levels_of(name)
    nets = [
        ("lowpass", None),
        *((j, rf) for rf in ms_rfs for j in range(levels)),
        *(("flat", rf) for rf in m.rf),
    ]
    seconds: list[dict] = []
    models = load_scale_models([train_net(cfg, name, "denoiser", scale, rf, seconds) for scale, rf in nets])
    tables, figures = cfg.results / "tables", cfg.results / "figures"
    tables.mkdir(parents=True, exist_ok=True)

    x = first_images(data, "test", m.eval_images)
    table = denoising_table(models, x, m.sigmas, torch.Generator().manual_seed(cfg.seed))
    table.to_csv(tables / "denoising.csv", index=False)
    nll = None
    if m.energy is not None:
        energy_nets = [("lowpass", None), *((j, rf) for rf in ms_rfs for j in range(levels))]
        energies = load_scale_models(
            [train_net(cfg, name, "energy", s, rf, seconds) for s, rf in energy_nets]
        )
        spec = m.energy.likelihood
        gen = torch.Generator().manual_seed(cfg.seed)
        lows = training_lowpasses(data, levels, m.wavelet, m.normalization, spec.logz_images, gen)
        nll_table, _ = multiscale_nll(energies, x, lows, spec, quantized=data.quantized, generator=gen,
                                batch_size=spec.batch)  # fmt: skip
        nll = tables / "nll.csv"
        nll_rows(nll_table, data, "test").to_csv(nll, index=False)
    pd.DataFrame(seconds).to_csv(tables / "train_seconds.csv", index=False)
    make_figure("rf_ablation", tables / "denoising.csv", figures / "rf_ablation.png", nll=nll)
    claim = claim_table(table, ms_rfs)
    claim.to_csv(tables / "claim.csv", index=False)

    out_dir = cfg.results / "multiscale" / name
    superres = []
    for rf in ms_rfs:
        gen = torch.Generator().manual_seed(cfg.seed)
        grid, labels, trace = sample_grid(models, rf, m.sampler, gen)
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / f"samples-rf{rf}.npy", grid)
        write_png_grid(grid, out_dir / f"samples-rf{rf}.png")
        trace.to_csv(out_dir / f"samples-rf{rf}.sampler.csv", index=False)
        for label, row in zip(labels, grid, strict=True):
            stages = ", ".join(
                f"{s}: {g['iterations'].median():.0f} it, {g['final_snr_db'].median():.1f} dB, "
                f"{(g['status'] != 'converged').sum()} not converged"
                for s, g in trace[trace["model"] == label].groupby("stage", sort=False)
            )
            outside = 100 * ((row < 0) | (row > 1)).mean()
            span = f"range [{row.min():.2f}, {row.max():.2f}], {outside:.1f} % outside [0, 1]"
            print(f"samples {label}: {span}; {stages}")
        grid, row, trace = super_resolution(models, rf, first_images(data, "test", m.superres_images),
                                            m.sampler, torch.Generator().manual_seed(cfg.seed))  # fmt: skip
        np.save(out_dir / f"superres-rf{rf}.npy", grid)
        write_png_grid(grid, out_dir / f"superres-rf{rf}.png")
        trace.to_csv(out_dir / f"superres-rf{rf}.sampler.csv", index=False)
        superres.append(row)
    superres = pd.concat(superres, ignore_index=True)
    superres.to_csv(tables / "superres.csv", index=False)

    with pd.option_context("display.width", 200, "display.precision", 2):
        print(claim.to_string(index=False))
        print(superres[["model", "psnr_samples", "psnr_mean", "psnr_lowpass_only", "n_diverged", "n_capped"]]
              .to_string(index=False))  # fmt: skip
        if nll is not None:
            print(nll_table[["model", "nll_bits_per_dim", "nll_std_bits_per_dim", "nll_lowpass_bits_per_dim",
                             *(f"nll_scale{j}_bits_per_dim" for j in range(levels))]]
                  .to_string(index=False))  # fmt: skip


if __name__ == "__main__":
    main()
