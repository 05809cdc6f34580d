"""Ground truth for the multi-scale energies: learned multi-scale NLL vs the exact Gaussian entropy.

For each dataset of the params' `multiscale:` section (Gaussian fields): prepare, train the low-pass
UNet energy and a conditional energy per scale j and RF (dual score matching; resumable: rerunning
continues), then print one JSON line per result and write results/<bench>/tables/ground_truth.csv:
  train_seconds      per network
  nll_bits_per_dim   per RF: the mean test NLL of log p(x_J) + sum_j log p(d_j | x_j), the exact mean
                     NLL of the same images, their difference, the per-image |NLL - exact NLL|, and
                     each scale's share

    python benchmarks/multiscale_ground_truth.py --config params/bench-multiscale.yaml
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch

from image_density import units
from image_density.config import load_config
from image_density.data import load_prepared, prepare_dataset
from image_density.multiscale.train import Net, train_scale_from_config
from image_density.studies.multiscale import load_scale_models, multiscale_nll, training_lowpasses
from image_density.studies.nll import exact_gaussian


def emit(rows: list[dict], **row) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="params/bench-multiscale.yaml")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    m = cfg.multiscale
    rows: list[dict] = []
    for name in m.datasets:
        data_dir = cfg.results / "data" / name
        if not data_dir.exists():
            prepare_dataset(cfg.datasets[name], data_dir, name)
        data = load_prepared(data_dir)
        nets = [("lowpass", None)] + [(j, rf) for rf in m.rf for j in range(m.levels_of(name))]
        paths = []
        for scale, rf in nets:
            net = Net("energy", scale, rf).name
            out = cfg.results / "models" / name / net
            start = time.time()
            if not (out / "model.pt").exists():
                ckpt = cfg.results / "ckpt" / name / net
                train_scale_from_config(
                    cfg, name, "energy", scale, rf, data_dir, out, ckpt_dir=ckpt, progress=False
                )
            emit(rows, dataset=name, figure="train_seconds", model=net, value=time.time() - start)
            paths.append(out / "model.pt")
        energies = load_scale_models(paths)
        spec = m.energy.likelihood
        gen = torch.Generator().manual_seed(cfg.seed)
        lows = training_lowpasses(data, energies.levels, m.wavelet, m.normalization, spec.logz_images, gen)
        x = data.images("test")
        table, per_image = multiscale_nll(energies, x, lows, spec, quantized=False, generator=gen,
                                          batch_size=spec.batch)  # fmt: skip
        exact = exact_gaussian(data)
        exact_bits = units.nll_bits_per_dim(exact.nll_exact(x.double()).numpy(), data.d, quantized=False)
        for row in table.to_dict("records"):
            nll = row["nll_bits_per_dim"]
            emit(rows, dataset=name, figure="nll_bits_per_dim", model=row["model"], value=nll,
                 exact=float(exact_bits.mean()), error=nll - float(exact_bits.mean()),
                 per_image_mae=float(np.abs(per_image[row["rf"]] - exact_bits).mean()),
                 lowpass=row["nll_lowpass_bits_per_dim"],
                 scales=[row[f"nll_scale{j}_bits_per_dim"] for j in range(energies.levels)])  # fmt: skip
    out = cfg.results / "tables" / "ground_truth.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)


if __name__ == "__main__":
    main()
