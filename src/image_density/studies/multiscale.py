"""Evaluations of the multi-scale model (paper 2, and its normalized energies beyond both papers):
model files written by `train-scale` and images in, tidy tables and image arrays out.

`load_scale_models` groups one dataset's model files by role (low-pass, cCNN_j per RF, flat per RF);
- `denoising_table`: output PSNR of the multi-scale denoiser and the flat one per RF, and of the
  low-pass-only reconstruction (details set to 0), at paper 2's noise stds (0..255 scale);
- `sample_grid`: synthesis from scratch, the multi-scale model's row above the flat model's;
- `super_resolution`: samples of the details given the low-pass of test images, PSNR of the samples
  and of their mean;
  both also return the sampler's trace (iterations, final SNR and stop status per sample and stage);
- `multiscale_nll`: log p(x) = log p(x_J) + sum_j log p(d_j | x_j) of the normalized energies per RF;
- `write_png_grid`: an image grid as PNG from a numpy array (PIL only).
Every model sees the same noise (one generator, drawn once per batch and noise level).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from image_density import atomic, likelihood, units
from image_density.checkpoint import load_model
from image_density.config import Config, ConfigError, LikelihoodSpec, SamplerSpec
from image_density.data import Prepared, load_prepared
from image_density.multiscale.conditional import (
    multiscale_denoise,
    multiscale_log_prob,
    normalized_conditional,
    normalized_lowpass,
)
from image_density.multiscale.sampling import super_resolve, synthesize, trace_rows
from image_density.multiscale.train import Net
from image_density.multiscale.wavelets import decompose, reconstruct
from image_density.studies.nll import exact_bits_per_dim

# Paper 2, flat CelebA-160 grayscale denoisers: RF -> output PSNR (dB) at the noise stds PAPER_SIGMAS.
PAPER_SIGMAS = [20.0, 40.0, 60.0, 100.0]
PAPER_FLAT = {
    5: [29.32, 26.19, 24.05, 21.01],
    9: [29.88, 27.20, 25.41, 22.95],
    13: [30.55, 27.67, 25.83, 23.49],
    23: [31.35, 28.26, 26.47, 24.17],
    43: [31.46, 28.43, 26.66, 24.43],
}


def paper_rows() -> pd.DataFrame:
    """PAPER_FLAT as rows of the denoising table (source "paper"); every part carries them, `collect
    --dedupe` keeps one copy."""
    rows = [
        {"dataset": "celeba160 gray (paper)", "model": "flat", "rf": rf, "sigma": s, "source": "paper",
         "psnr_in": units.t_to_psnr(units.sigma255_to_t(s)), "psnr_out": p}
        for rf, out in PAPER_FLAT.items()
        for s, p in zip(PAPER_SIGMAS, out, strict=True)
    ]  # fmt: skip
    return pd.DataFrame(rows).astype({"rf": "Int64"})


NLL_KEYS = ["dataset", "model", "split"]  # as results/tables/nll.csv


@dataclass
class ScaleModels:
    """One dataset's networks of one family ("denoiser" or "energy"), in eval mode."""

    family: str
    dataset: str
    levels: int
    wavelet: str
    normalization: str
    shape: tuple[int, int, int]
    lowpass: nn.Module | None = None
    conditionals: dict[int, dict[int, nn.Module]] = field(default_factory=dict)  # rf -> j -> model
    flat: dict[int, nn.Module] = field(default_factory=dict)  # rf -> model
    infos: dict[str, dict] = field(default_factory=dict)  # multiscale.train.Net.name -> file entries

    def info(self, scale: str | int, rf: int | None) -> dict:
        """The model file's entries of one network (model_spec, train_spec, meta, ...)."""
        return self.infos[Net(self.family, scale, rf).name]

    @property
    def device(self) -> torch.device:
        """Where the networks are (load_scale_models puts them all on one device)."""
        nets = [
            self.lowpass,
            *self.flat.values(),
            *(m for by_j in self.conditionals.values() for m in by_j.values()),
        ]
        return next(next(m.parameters()) for m in nets if m is not None).device

    def multiscale_rfs(self) -> list[int]:
        """RFs with the low-pass network and a cCNN at every scale."""
        if self.lowpass is None:
            return []
        return [rf for rf, by_j in sorted(self.conditionals.items()) if set(by_j) == set(range(self.levels))]

    def conditionals_of(self, rf: int) -> list[nn.Module]:
        """[network of scale j for j = 0 ... J-1] of receptive field rf; an error names what is missing."""
        by_j = self.conditionals.get(rf, {})
        missing = sorted(set(range(self.levels)) - set(by_j))
        if self.lowpass is None or missing:
            what = ["the low-pass network"] if self.lowpass is None else []
            what += [f"scale {j}" for j in missing]
            raise ValueError(
                f"{self.dataset}: the multi-scale {self.family} of rf {rf} lacks {', '.join(what)}"
            )
        return [by_j[j] for j in range(self.levels)]


def load_scale_models(paths: Sequence[Path], device: str | torch.device = "cpu") -> ScaleModels:
    """Model files of `train-scale` -> ScaleModels; they must share dataset, family and transform."""
    if not paths:
        raise ValueError("no model files given (--models)")
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"model files not found: {missing}")
    out: ScaleModels | None = None
    for path in paths:
        model, info = load_model(Path(path), device)
        meta = info.get("meta", {})
        if meta.get("section") != "multiscale":
            raise ValueError(f"{path}: not a multi-scale network (written by `train-scale`)")
        common = (meta["family"], meta["dataset"], meta["levels"], meta["wavelet"], meta["normalization"])
        if out is None:
            out = ScaleModels(*common, tuple(meta["shape"]))
        elif common != (out.family, out.dataset, out.levels, out.wavelet, out.normalization):
            raise ValueError(
                f"{path}: a {meta['family']} of {meta['dataset']!r} with {meta['levels']} "
                f"{meta['wavelet']}/{meta['normalization']} levels does not match the other models "
                f"({out.family} of {out.dataset!r}, {out.levels} {out.wavelet}/{out.normalization} levels)"
            )
        scale, rf = meta["scale"], meta["rf"]
        if scale == "lowpass":
            out.lowpass = model
        elif scale == "flat":
            out.flat[rf] = model
        else:
            out.conditionals.setdefault(rf, {})[int(scale)] = model
        out.infos[meta["name"]] = info
    return out


def check_data(models: ScaleModels, data: Prepared) -> None:
    """Refuse images of another shape than the models were trained on."""
    if tuple(data.shape) != models.shape:
        raise ValueError(f"the models take images {models.shape}, {data.path} has {data.shape}")


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """Per-image PSNR (dB, peak 1), (B,)."""
    mse = (x_hat.double().cpu() - x.double().cpu()).flatten(1).square().mean(1)
    return units.mse_to_psnr(mse).numpy()


def _summary(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error."""
    sem = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(values.mean()), sem


def lowpass_only(x_J: torch.Tensor, levels: int, wavelet: str, normalization: str) -> torch.Tensor:
    """The image of low-pass x_J (B, C, h, w) with every detail set to 0, (B, C, 2^J h, 2^J w)."""
    b, c, h, w = x_J.shape
    zeros = [x_J.new_zeros(b, 3 * c, h << (levels - 1 - j), w << (levels - 1 - j)) for j in range(levels)]
    return reconstruct(x_J, zeros, wavelet, normalization)


@torch.no_grad()
def denoising_table(
    models: ScaleModels,
    x: torch.Tensor,
    sigmas: Sequence[float],
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Rows dataset, model ("multiscale" | "flat" | "lowpass-only"), rf, sigma (0..255), psnr_in,
    psnr_out (mean over images of each image's PSNR), psnr_out_sem, n_images; x (N, C, H, W) clean.
    Then paper 2's flat denoisers (paper_rows)."""
    if models.family != "denoiser":
        raise ValueError(f"denoise takes the paper-2 denoisers, got {models.family} networks")
    device = models.device
    lw = (models.levels, models.wavelet, models.normalization)
    denoisers: dict[tuple[str, int | None], object] = {}
    for rf in models.multiscale_rfs():
        conds = [c.denoise for c in models.conditionals_of(rf)]
        denoisers["multiscale", rf] = lambda y, conds=conds: multiscale_denoise(
            y, models.lowpass.denoise, conds, *lw[1:]
        )
    for rf, net in sorted(models.flat.items()):
        denoisers["flat", rf] = net.denoise
    if models.lowpass is not None:
        denoisers["lowpass-only", None] = lambda y: lowpass_only(
            models.lowpass.denoise(decompose(y, *lw)[0]), *lw
        )
    if not denoisers:
        raise ValueError(f"{models.dataset}: no complete multi-scale model, flat model or low-pass model")
    psnr = {(key, s): [] for key in denoisers for s in sigmas}
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        for s in sigmas:
            t = units.sigma255_to_t(float(s))
            z = torch.randn(xb.shape, generator=generator, dtype=xb.dtype).to(device)
            y = xb + t**0.5 * z
            for key, denoise in denoisers.items():
                psnr[key, s].append(_psnr(denoise(y), xb))
    rows = []
    for (model, rf), s in ((key, s) for key in denoisers for s in sigmas):
        mean, sem = _summary(np.concatenate(psnr[(model, rf), s]))
        t = units.sigma255_to_t(float(s))
        rows.append({"dataset": models.dataset, "model": model, "rf": rf, "sigma": float(s),
                     "psnr_in": units.t_to_psnr(t), "psnr_out": mean, "psnr_out_sem": sem,
                     "n_images": len(x), "source": "ours"})  # fmt: skip
    ours = pd.DataFrame(rows).astype({"rf": "Int64"})  # no RF for the low-pass-only rows
    return pd.concat([ours, paper_rows()], ignore_index=True)


def check_bands(models: ScaleModels, names: Sequence[str]) -> None:
    """Refuse, before sampling, a network trained on a band of zero variance (its sigma_max, the
    largest |value| of the band, is 0): it has no noise range and the ascent would stop at once."""
    empty = [n for n in names if models.infos[n]["meta"].get("sigma_max", 1.0) <= 0]
    if empty:
        raise ValueError(
            f"{models.dataset}: {', '.join(empty)} trained on a band of zero variance (meta sigma_max = 0); "
            "nothing to sample there: fewer multiscale.levels, or data with content at that scale"
        )


def _trace_table(models: ScaleModels, model: str, rf: int, traces) -> pd.DataFrame:
    rows = [{"dataset": models.dataset, "model": model, "rf": rf, **r} for r in trace_rows(traces)]
    return pd.DataFrame(rows)


@torch.no_grad()
def sample_grid(
    models: ScaleModels, rf: int, spec: SamplerSpec, generator: torch.Generator | None = None
) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    """spec.n_samples images synthesized from scratch by the multi-scale model of receptive field rf
    and, when given, by the flat model of the same rf: ((rows, n, C, H, W) float32, row labels, the
    sampler's trace: one row per model x sample x stage, sampling.Trace.rows)."""
    device = models.device
    shape = (spec.n_samples, *models.shape)
    kw = dict(wavelet=models.wavelet, normalization=models.normalization, device=device)
    todo = []
    if rf in models.multiscale_rfs():
        names = [Net(models.family, "lowpass", None).name]
        names += [Net(models.family, j, rf).name for j in range(models.levels)]
        conds = [c.denoise for c in models.conditionals_of(rf)]
        todo.append((f"multiscale-rf{rf}", names, models.lowpass.denoise, conds))
    if rf in models.flat:
        todo.append((f"flat-rf{rf}", [Net(models.family, "flat", rf).name], models.flat[rf].denoise, []))
    if not todo:
        raise ValueError(f"{models.dataset}: no multi-scale or flat denoiser of rf {rf} among the models")
    check_bands(models, [n for _, names, _, _ in todo for n in names])
    rows, labels, tables = [], [], []
    for label, _, low, conds in todo:
        x, traces = synthesize(low, conds, shape, spec, generator, **kw)
        rows.append(x)
        labels.append(label)
        tables.append(_trace_table(models, label, rf, traces))
    return torch.stack(rows).float().cpu().numpy(), labels, pd.concat(tables, ignore_index=True)


@torch.no_grad()
def super_resolution(
    models: ScaleModels, rf: int, x: torch.Tensor, spec: SamplerSpec, generator: torch.Generator | None = None
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """spec.n_samples super-resolutions of each image of x (N, C, H, W) from its low-pass x_J.

    Returns the grid (N, S + 3, C, H, W): per image the original, the low-pass-only reconstruction,
    the S samples and their mean; one row: dataset, model, rf, n_images, n_samples, psnr_samples
    (mean PSNR of a sample), psnr_mean (of the mean of the samples), psnr_lowpass_only, with SEMs,
    and how many sample stages did not converge (n_diverged, n_capped); and the sampler's trace
    (one row per sample x scale; sample = image index * S + draw)."""
    device = models.device
    conds = [c.denoise for c in models.conditionals_of(rf)]
    check_bands(models, [Net(models.family, j, rf).name for j in range(models.levels)])
    lw = (models.levels, models.wavelet, models.normalization)
    x = x.to(device)
    n, s = len(x), spec.n_samples
    x_J = decompose(x, *lw)[0]
    samples, traces = super_resolve(x_J.repeat_interleave(s, 0), conds, spec, generator, *lw[1:])
    samples = samples.reshape(n, s, *x.shape[1:])
    mean = samples.mean(1)
    low = lowpass_only(x_J, *lw)
    per_sample = _psnr(samples.flatten(0, 1), x.repeat_interleave(s, 0)).reshape(n, s).mean(1)
    row = {"dataset": models.dataset, "model": f"multiscale-rf{rf}", "rf": rf, "n_images": n, "n_samples": s}
    for name, values in (("psnr_samples", per_sample), ("psnr_mean", _psnr(mean, x)),
                         ("psnr_lowpass_only", _psnr(low, x))):  # fmt: skip
        row[name], row[f"{name}_sem"] = _summary(values)
    trace = _trace_table(models, f"multiscale-rf{rf}", rf, traces)
    for status in ("diverged", "capped"):
        row[f"n_{status}"] = int((trace["status"] == status).sum())
    grid = torch.cat([x[:, None], low[:, None], samples, mean[:, None]], dim=1)
    return grid.float().cpu().numpy(), pd.DataFrame([row]), trace


def _t_min_max(info: dict) -> tuple[float, float]:
    train_spec = info.get("train_spec", {})
    return float(train_spec["t_min"]), float(train_spec["t_max"])


def multiscale_nll(
    energies: ScaleModels,
    x: torch.Tensor,
    train_lowpass: torch.Tensor,
    spec: LikelihoodSpec,
    *,
    quantized: bool,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Per RF with a complete multi-scale energy, the NLL of images x (N, C, H, W) in bits/dim.

    The low-pass energy is normalized once at spec.t_max on the low-passes of training images
    train_lowpass (paper 1; with spec.spectral_refinement their covariance eigenvalues), each
    conditional energy per conditioning image (multiscale.normalized_conditional); every energy is
    evaluated at its training t_min. Returns (one row per rf: model "multiscale-rf<R>", n_images,
    nll_bits_per_dim and its std, nll_lowpass_bits_per_dim and nll_scale<j>_bits_per_dim, the shares
    of the total (which alone carries the +8 bits/dim of 8-bit data), log_z_lowpass_nats;
    {rf: per-image NLL in bits/dim (N,)})."""
    if energies.family != "energy":
        raise ValueError(f"multiscale-nll takes energy networks, got {energies.family} networks")
    rfs = energies.multiscale_rfs()
    if not rfs:
        raise ValueError(
            f"{energies.dataset}: no complete multi-scale energy among the models (the low-pass energy "
            f"and, for one rf, a conditional energy of every scale 0..{energies.levels - 1})"
        )
    for name, info in energies.infos.items():
        t_max = _t_min_max(info)[1]
        if t_max != spec.t_max:
            raise ConfigError(
                f"multiscale.energy.likelihood.t_max = {spec.t_max} differs from the training t_max = "
                f"{t_max} of {name!r}: log Z needs a t the model was trained at"
            )
    device = energies.device
    lw = (energies.levels, energies.wavelet, energies.normalization)
    eig = None
    if spec.spectral_refinement and len(train_lowpass) >= 2:
        eig = likelihood.data_covariance_eigenvalues(train_lowpass)
    low_t_eval = _t_min_max(energies.info("lowpass", None))[0]
    log_z_low = likelihood.log_z(energies.lowpass, train_lowpass, spec.t_max, spec.logz_draws, generator,
                                 eigenvalues=eig, batch_size=batch_size)  # fmt: skip
    log_p_low = normalized_lowpass(energies.lowpass, log_z_low, low_t_eval)
    d = x[0].numel()
    rows, per_image = [], {}
    for rf in rfs:
        conds = [
            normalized_conditional(
                model, _t_min_max(energies.info(j, rf))[0], spec.t_max, spec.logz_draws, generator
            )
            for j, model in enumerate(energies.conditionals_of(rf))
        ]
        parts = []
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)
            out = multiscale_log_prob(xb, log_p_low, conds, *lw[1:])
            low = out["log_p_lowpass"] + out["log_det"]
            parts.append(torch.cat([out["log_p"][:, None], low[:, None], out["log_p_details"]], dim=1))
        nll = -torch.cat(parts).numpy()  # (N, 2 + J) nats: total, low-pass (+ log det), scales
        bits = per_image[rf] = units.nll_bits_per_dim(nll[:, 0], d, quantized)
        row = {"dataset": energies.dataset, "model": f"multiscale-rf{rf}", "rf": rf, "n_images": len(x),
               "nll_bits_per_dim": float(bits.mean()),
               "nll_std_bits_per_dim": float(bits.std(ddof=1)) if len(x) > 1 else 0.0,
               "nll_lowpass_bits_per_dim": float(nll[:, 1].mean() / (d * units.LN2))}  # fmt: skip
        for j in range(energies.levels):
            row[f"nll_scale{j}_bits_per_dim"] = float(nll[:, 2 + j].mean() / (d * units.LN2))
        row.update(log_z_lowpass_nats=log_z_low, t_max=spec.t_max,
                   energy_form=energies.info(0, rf)["model_spec"].get("energy_form"))  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows), per_image


def nll_rows(table: pd.DataFrame, data: Prepared, split: str) -> pd.DataFrame:
    """The multiscale_nll table in the shape of nll.csv: split and the exact NLL where known."""
    return table.assign(split=split, exact_bits_per_dim=exact_bits_per_dim(data))[
        [*NLL_KEYS, *[c for c in table.columns if c not in NLL_KEYS], "exact_bits_per_dim"]
    ]


def first_images(data: Prepared, split: str, n: int) -> torch.Tensor:
    """The first n images of a split (all if fewer), (n, C, H, W)."""
    return data.images(split, np.arange(min(n, len(data.split(split)))))


def training_lowpasses(
    data: Prepared,
    levels: int,
    wavelet: str,
    normalization: str,
    n: int,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """x_J of a seeded choice of n training images (all if fewer), (n, C, h, w); decomposed in
    batches, so only the low-passes of all n are held."""
    rows = np.arange(len(data.train))
    if len(rows) > n:
        rows = np.sort(rows[torch.randperm(len(rows), generator=generator)[:n].numpy()])
    return torch.cat([
        decompose(data.images("train", rows[i : i + batch_size]), levels, wavelet, normalization)[0]
        for i in range(0, len(rows), batch_size)
    ])  # fmt: skip


def write_png_grid(grid: np.ndarray, path: Path, min_side: int = 64, gap: int = 2) -> Path:
    """Write images (R, K, C, H, W) in [0, 1] (clipped; C = 1 or 3) as one PNG, row r of the file =
    grid[r], each image enlarged by an integer factor (nearest) to at least min_side pixels; atomic."""
    if grid.ndim != 5 or grid.shape[2] not in (1, 3):
        raise ValueError(f"expected images (rows, columns, 1 or 3, H, W), got shape {grid.shape}")
    rows, cols, c, h, w = grid.shape
    zoom = max(1, -(-min_side // max(h, w)))
    img = np.clip(np.nan_to_num(grid), 0.0, 1.0).repeat(zoom, axis=3).repeat(zoom, axis=4)
    hz, wz = h * zoom, w * zoom
    canvas = np.ones((c, rows * (hz + gap) - gap, cols * (wz + gap) - gap))
    for r in range(rows):
        for k in range(cols):
            canvas[:, r * (hz + gap) : r * (hz + gap) + hz, k * (wz + gap) : k * (wz + gap) + wz] = img[r, k]
    pixels = np.round(canvas * 255).astype(np.uint8)
    pixels = pixels[0] if c == 1 else pixels.transpose(1, 2, 0)
    path = Path(path)
    with atomic.replacing(path) as tmp:
        Image.fromarray(pixels).save(tmp)
    return path


# ------------------------------------------------------------------------- the commands' library side


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(cfg: Config, paths: Sequence[Path], data_dir: Path | None) -> tuple[ScaleModels, Prepared]:
    """The models, and the prepared data they are evaluated on (default: their training dataset)."""
    if cfg.multiscale is None:
        raise ConfigError("the multi-scale commands need a multiscale: section in the params")
    models = load_scale_models(paths, _device())
    data = load_prepared(data_dir or cfg.results / "data" / models.dataset)
    check_data(models, data)
    return models, data


def run_denoise(cfg: Config, paths: Sequence[Path], data_dir: Path | None = None) -> pd.DataFrame:
    """The `denoise` command: denoising_table on the first multiscale.eval_images test images."""
    models, data = _load(cfg, paths, data_dir)
    m = cfg.multiscale
    x = first_images(data, "test", m.eval_images)
    gen = torch.Generator().manual_seed(cfg.seed)
    return denoising_table(models, x, m.sigmas, gen, cfg.studies.batch)


def run_sample(cfg: Config, paths: Sequence[Path], rf: int) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    """The `sample` command: sample_grid with multiscale.sampler."""
    if cfg.multiscale is None:
        raise ConfigError("the multi-scale commands need a multiscale: section in the params")
    models = load_scale_models(paths, _device())
    return sample_grid(models, rf, cfg.multiscale.sampler, torch.Generator().manual_seed(cfg.seed))


def run_super_resolve(
    cfg: Config, paths: Sequence[Path], rf: int, data_dir: Path | None = None
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """The `super-resolve` command: super_resolution of the first multiscale.superres_images test images."""
    models, data = _load(cfg, paths, data_dir)
    m = cfg.multiscale
    x = first_images(data, "test", m.superres_images)
    return super_resolution(models, rf, x, m.sampler, torch.Generator().manual_seed(cfg.seed))


def run_multiscale_nll(
    cfg: Config,
    paths: Sequence[Path],
    split: str,
    data_dir: Path | None = None,
    train_data_dir: Path | None = None,
) -> pd.DataFrame:
    """The `multiscale-nll` command: multiscale_nll on the first multiscale.eval_images images of
    `split`, the low-pass normalized on training images of the models' own dataset."""
    energies, data = _load(cfg, paths, data_dir)
    m = cfg.multiscale
    if m.energy is None:
        raise ConfigError("multiscale-nll needs a multiscale.energy: section in the params")
    train_data = load_prepared(train_data_dir or cfg.results / "data" / energies.dataset)
    check_data(energies, train_data)
    sha = energies.info("lowpass", None)["meta"].get("data_sha256")
    if sha and train_data.meta["sha256"]["train.npy"] != sha:
        raise ValueError(f"the energies were trained on other data than {train_data.path} (sha256 differs)")
    spec = m.energy.likelihood
    gen = torch.Generator().manual_seed(cfg.seed)
    lows = training_lowpasses(train_data, energies.levels, energies.wavelet, energies.normalization,
                              spec.logz_images, gen)  # fmt: skip
    x = first_images(data, split, m.eval_images)
    table, _ = multiscale_nll(energies, x, lows, spec, quantized=data.quantized, generator=gen,
                              batch_size=spec.batch)  # fmt: skip
    return nll_rows(table, data, split)
