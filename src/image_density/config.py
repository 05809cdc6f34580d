"""The one typed config: every number of a run lives in params/*.yaml and is validated here, once.

Models are frozen and `extra="forbid"`, so an unknown or misspelt key is an error, and every error
names the key path, the value given and what is allowed (see `load_config`).
The JSON schema in workflow/schemas/ is generated from `Config` (`image-density schema`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_PATH = Path("workflow/schemas/params.schema.json")


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file, key path, value and rule."""


# The numbers a run can use: ints become int64 tensors/numpy values and seeds, floats go through
# float32 tensors, so an int outside int64 or a float that float32 turns into inf or 0 is refused
# here rather than as an overflow (or a NaN loss) deep in a run.
INT64 = (int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max))
FLOAT32_MAX, FLOAT32_TINY = float(np.finfo(np.float32).max), float(np.finfo(np.float32).smallest_normal)


def _machine_number(v: Any, where: str = "") -> Any:
    """Refuse ints outside int64 and floats outside float32's normal range, inside lists/dicts too
    (`where`: the item's place in the value, as pydantic's error names only the key)."""
    if isinstance(v, int) and not isinstance(v, bool) and not INT64[0] <= v <= INT64[1]:
        raise ValueError(f"{where}{v} is outside the 64-bit integer range")
    if isinstance(v, float) and (abs(v) > FLOAT32_MAX or 0 < abs(v) < FLOAT32_TINY):
        bounds = f"|x| from {FLOAT32_TINY:.3g} to {FLOAT32_MAX:.3g}"
        raise ValueError(f"{where}{v!r} is outside float32's range ({bounds})")
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for i, item in items:
        _machine_number(item, f"{where}item {i}: ")
    return v


class Strict(BaseModel):
    # strict: "10" is not 10 and true is not 1 (an int is still a valid float); allow_inf_nan: .nan
    # and .inf are refused at every key, inside lists too
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _numbers_fit(cls, v):
        return _machine_number(v)


# A path: text in the params file (strict mode would accept only Path objects).
UserPath = Annotated[Path, Field(strict=False)]
# torch.manual_seed and numpy's SeedSequence take any int in [0, 2^64), but the per-step streams of
# train.step_generator use the low 32 bits: a larger seed would silently repeat a smaller one's run.
Seed = Annotated[int, Field(ge=0, lt=2**32)]


# --------------------------------------------------------------------------------------- datasets

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class _Generated(Strict):
    n_train: PositiveInt
    n_test: PositiveInt
    seed: Seed = 0


class GaussianFieldData(_Generated):
    """Gaussian field, continuous (not quantized, not clipped): mean + s(i, j) z, z periodic stationary
    with power spectrum S(k) = c (1 + (k_y/k0)^2 + (k_x/(aspect k0))^2)^(-gamma/2), k the integer
    frequencies on the size x size DFT grid, c chosen so the (RMS) pixel std is `std`; aspect 1:
    isotropic; channels independent. std_ratio 1: s = 1 (periodic, stationary); otherwise the pixel
    std grows geometrically by std_ratio from the top-left to the bottom-right pixel (non-periodic,
    non-stationary, still an exact entropy; see data/gaussian_field.py)."""

    kind: Literal["gaussian_field"]
    size: PositiveInt
    channels: PositiveInt = 1
    gamma: PositiveFloat = 2.0
    k0: PositiveFloat = 2.0
    aspect: PositiveFloat = 1.0
    mean: float = 0.5
    std: PositiveFloat = 0.1
    std_ratio: PositiveFloat = 1.0


class DeadLeavesData(_Generated):
    """Occluding disks, radii with density ∝ r^-alpha on [r_min, r_max] (pixels), 8-bit grey levels."""

    kind: Literal["dead_leaves"]
    size: PositiveInt
    r_min: PositiveFloat = 1.0
    r_max: PositiveFloat = 16.0
    alpha: PositiveFloat = 3.0

    @model_validator(mode="after")
    def _radii(self):
        if self.r_min >= self.r_max:
            raise ValueError(f"r_min ({self.r_min}) must be smaller than r_max ({self.r_max})")
        return self


Photos = Annotated[list[str], Field(min_length=1)]


class NaturalPatchesData(_Generated):
    """Grayscale patches (at random positions) of the photographs bundled with scikit-image; whole
    photographs are either train or test sources, never both (names: data/bundled.py PHOTOGRAPHS)."""

    kind: Literal["natural_patches"]
    size: PositiveInt
    train_images: Photos = ["camera", "astronaut", "coffee", "chelsea", "rocket", "brick", "grass"]
    test_images: Photos = ["coins", "moon", "gravel", "clock"]

    @model_validator(mode="after")
    def _disjoint(self):
        both = set(self.train_images) & set(self.test_images)
        if both:
            raise ValueError(f"photographs in both train_images and test_images: {sorted(both)}")
        return self


class LfwFacesData(Strict):
    """The 100 LFW faces of scikit-image's lfw_subset (25 x 25; its other 100 images are background
    crops, not used), centre-cropped or resized to `size`; a seeded choice of n_test faces is test."""

    kind: Literal["lfw_faces"]
    size: PositiveInt = 24
    resize: Literal["crop", "resize"] = "crop"
    n_test: Annotated[int, Field(ge=1, le=99)] = 20
    seed: Seed = 0


class _UserPath(Strict):
    path: UserPath
    n_train: PositiveInt | None = None  # caps; None: all available (the first ones in order)
    n_test: PositiveInt | None = None


class ArrayData(_UserPath):
    """A user .npy/.npz array (N,H,W) or (N,C,H,W), uint8 or float in [0,1]; a seeded test fraction.
    quantized: 8-bit data (NLL gets +8 bits/dim); None = uint8 input is 8-bit, float is continuous;
    true with float input requires values on the k/255 grid. key: the array of a multi-array .npz."""

    kind: Literal["array"]
    quantized: bool | None = None
    key: str | None = None
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    seed: Seed = 0


class ImageNet64Data(_UserPath):
    """Downsampled ImageNet 64x64 pickled batches (train_data_batch_1..10 = train, val_data = test);
    grayscale: ITU-R 601 luma rounded to 8 bits."""

    kind: Literal["imagenet64"]
    grayscale: bool = False


class CelebAData(_UserPath):
    """img_align_celeba/*.jpg + list_eval_partition.txt (partition 0 = train, 2 = test), as the LPM
    release: crop [29:-29, 9:-9] (native 160 x 160), grey = mean of RGB / 255 as float32."""

    kind: Literal["celeba"]
    size: PositiveInt = 160

    @field_validator("size")
    @classmethod
    def _native(cls, v):
        if v != 160:
            raise ValueError(
                f"CelebA's aligned faces give 160 x 160 at native resolution; {v} would resample them "
                "(320: an x2 upsampling with an empty finest band). Paper 2's 320 x 320 set came from a "
                "separate 512 x 512 source scaled by 0.625: give it as kind image_folder, size 320"
            )
        return v


class ImageFolderData(_UserPath):
    """Any folder of PNG/JPEG images (recursive), centre-cropped and resized to `size`; a seeded
    test fraction."""

    kind: Literal["image_folder"]
    size: PositiveInt
    grayscale: bool = True
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    seed: Seed = 0


DataSpec = Annotated[
    GaussianFieldData
    | DeadLeavesData
    | NaturalPatchesData
    | LfwFacesData
    | ArrayData
    | ImageNet64Data
    | CelebAData
    | ImageFolderData,
    Field(discriminator="kind"),
]


DATA_KINDS = frozenset(m.model_fields["kind"].annotation.__args__[0] for m in DataSpec.__origin__.__args__)

# ------------------------------------------------------------------------------- energy models


class UNetSpec(Strict):
    """UNet of METHOD.md (models/unet.py): widths per scale, a middle width, layers per block; no conv
    biases. The defaults are the release's network (8,647,552 parameters at C = 1)."""

    widths: list[PositiveInt] = [64, 128, 256]
    mid_width: PositiveInt = 512
    convs_per_block: PositiveInt = 3
    emb_features: PositiveInt = 32  # 32 cos + 32 sin
    emb_dim: PositiveInt = 256
    # "release": resampling convs are layers of their blocks (21 convs), Linears with biases;
    # "separate": this project's first layout (extra resampling and output convs, 28 convs)
    layout: Literal["release", "separate"] = "release"
    # "t": the release's sinusoids of t (nearly constant for t << 1e-2); "log_t": sinusoids of log t
    # (better below the data's smallest variance at small scale, see models/unet.py)
    embedding: Literal["t", "log_t"] = "t"
    # "release": sqrt(a / (v + eps) + eps); "homogeneous": (v / a + eps)^(-1/2), exactly homogeneous,
    # with a hand-written double backward (models/fastgrad.py)
    norm: Literal["release", "homogeneous"] = "release"
    # "release": PyTorch's default init; "identity": last conv and t-conditioning weights zero (f = 0
    # with t-independent gains: the denoiser starts as the identity)
    init: Literal["release", "identity"] = "release"
    # "circular" for periodic images (the generated Gaussian fields); "zeros" is the release's
    padding_mode: Literal["zeros", "circular"] = "zeros"
    # "pure": U = 1/2 <y, f(y,t)> as in the paper; "offset": + b(t), a scalar MLP of log t
    # (METHOD.md, "Measured here at small scale"); "gaussian": + b(t) + the -log p_t of the data's
    # isotropic Gaussian (per-channel mean and pixel variance of the training images), exact at large
    # t, so f models only the residual (models/energy.py GaussianPart)
    energy_form: Literal["pure", "offset", "gaussian"] = "offset"

    @property
    def downsamplings(self) -> int:
        return len(self.widths)

    @model_validator(mode="after")
    def _release_blocks(self):
        if self.layout == "release" and self.convs_per_block < 2:
            raise ValueError(
                f"convs_per_block = {self.convs_per_block}: layout 'release' needs >= 2 (its middle block "
                "holds a down and an up conv)"
            )
        return self


# Train settings that may differ between a checkpoint and the run resuming it: more steps extend a
# run, and the checkpoint/log intervals do not touch the weights. Any other change (lr, batch, t range,
# seed, EMA, ...) would give weights trained half under one setting and half under another.
RESUMABLE_CHANGES = frozenset({"steps", "ckpt_every", "log_every"})


class TrainSpec(Strict):
    """One training run (train.py): Adam at `lr`, halved every `lr_halve_every` steps; t log-uniform
    on [t_min, t_max]; `batch` is the global batch, split over processes under torchrun; `seed` seeds
    the initialisation and, with the step and rank, every batch's images, flips, t and noise."""

    steps: PositiveInt
    batch: PositiveInt
    lr: PositiveFloat = 5e-4
    lr_halve_every: PositiveInt = 100_000
    t_min: PositiveFloat = 1e-9
    t_max: PositiveFloat = 1e3
    hflip: bool = False
    ema: Annotated[float, Field(ge=0, lt=1)] = 0.0  # 0: no EMA (the release)
    ckpt_every: PositiveInt = 1000
    log_every: PositiveInt = 10
    seed: Seed = 0

    @model_validator(mode="after")
    def _t_range(self):
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be smaller than t_max ({self.t_max})")
        return self


class LikelihoodSpec(Strict):
    """log Z at t_max, NLL = U(x, t_min of training) + log Z, and the probability-flow ODE check."""

    t_max: PositiveFloat = 1e3
    logz_images: PositiveInt = 256
    logz_draws: PositiveInt = 4
    spectral_refinement: bool = True  # t_max entropy from the data covariance eigenvalues
    batch: PositiveInt = 64  # images per forward pass
    ode_images: PositiveInt = 8
    ode_rtol: PositiveFloat = 1e-5
    ode_atol: PositiveFloat = 1e-5
    ode_trace: Literal["exact", "hutchinson"] = "exact"  # exact costs d backward passes per step
    ode_probes: PositiveInt = 1  # Hutchinson probes per image


class EnergySpec(Strict):
    """Paper 1: an energy model and a plain denoiser per dataset."""

    datasets: list[Name]
    unet: UNetSpec = UNetSpec()
    train: TrainSpec
    likelihood: LikelihoodSpec = LikelihoodSpec()


class GeneralizationSpec(Strict):
    """Models A (first N training images) and B (last N) for each N."""

    dataset: Name
    n: list[PositiveInt]
    unet: UNetSpec = UNetSpec()
    train: TrainSpec
    likelihood: LikelihoodSpec = LikelihoodSpec()  # log Z of each model, on its own training images


# -------------------------------------------------------------------------- multi-scale models


class CNNSpec(Strict):
    """Bias-free CNN (models/cnn.py); the receptive field is set by how many layers are 3x3.
    The global low-pass denoiser has all its layers 3x3; the cCNNs and the flat baselines (the same
    network with C channels in/out, as the release) have `layers_conditional` layers."""

    channels: PositiveInt = 64
    layers_lowpass: PositiveInt = 20
    layers_conditional: PositiveInt = 21
    # "circular" for periodic images (the generated Gaussian fields); "zeros" is the release's
    padding_mode: Literal["zeros", "circular"] = "zeros"


class SamplerSpec(Strict):
    """Stochastic coarse-to-fine ascent (Kadkhodaie & Simoncelli 2021) as the LPM release runs it
    (multiscale/sampling.py). Every band starts from zero-mean noise of std sigma_0 and the divergence
    guard and low-pass range are in the release's (averaging) units, converted to the transform's once
    (wavelets.release_scale); the stop rule is relative, so it needs no conversion."""

    h0: PositiveFloat = 0.01
    beta_lowpass: Annotated[float, Field(gt=0, le=1)] = 0.01
    beta_details: Annotated[float, Field(gt=0, le=1)] = 0.1
    # False: h_t = h0 t / (1 + h0 (t - 1)) grows to 1; True: h_t = h0 (the release's low-pass demo)
    fixed_h_lowpass: bool = False
    fixed_h_details: bool = False
    sigma_0: PositiveFloat = 1.0  # start: y_0 ~ N(0, sigma_0^2) in every band
    # stop when sigma_t <= sigma_L std(y_t): an SNR of -20 log10(sigma_L) dB (40 dB at 0.01)
    sigma_L: Annotated[float, Field(gt=0, lt=1)] = 0.01
    sigma_max: PositiveFloat = 1.5  # stop as diverged when sigma_t exceeds it (the release's guard)
    # rescale_lowpass: the sampled low-pass mapped onto [0, lowpass_range] (per image, min to max)
    # before the details are drawn, as the release (0.8); false keeps it as sampled
    rescale_lowpass: bool = False
    lowpass_range: PositiveFloat = 0.8
    max_iter: PositiveInt = 1000  # a sample still running then is reported "capped"
    n_samples: PositiveInt = 8

    @model_validator(mode="after")
    def _can_converge(self):
        if self.sigma_L >= self.sigma_0:
            raise ValueError(f"sigma_L ({self.sigma_L}) must be smaller than sigma_0 ({self.sigma_0})")
        if self.sigma_0 >= self.sigma_max:
            raise ValueError(
                f"sigma_0 ({self.sigma_0}) must be smaller than sigma_max ({self.sigma_max}): the "
                "first step would stop as diverged"
            )
        return self


class MultiscaleEnergySpec(Strict):
    """Beyond both papers: normalized energies per scale, trained by dual score matching
    (multiscale/train.py): an energy on the coarsest low-pass x_J, and per scale j and RF a conditional
    energy U(d | x_j, t) = 1/2 <d, f(d, t | x_j)> (+ b(t)) whose network is the RF-limited CNN of
    `cnn` (models/local_energy.py). log p(x) = log p(x_J) + sum_j log p(d_j | x_j), each normalized at
    likelihood.t_max."""

    # The low-pass energy: "unet" (paper 1's UNet of `unet`), or "cnn": the network of the conditional
    # energies without conditioning, all cnn.layers_lowpass layers 3x3. Prefer "cnn" for a tiny x_J:
    # the UNet's instance norms discard each channel's mean, a large share of a few-pixel image
    # (measured on a 4x4 x_J: +0.026 bits/dim of the whole image with the UNet, +0.008 with the CNN).
    lowpass: Literal["unet", "cnn"] = "unet"
    unet: UNetSpec = UNetSpec()
    # of the CNN energies; "gaussian" as UNetSpec's, the band's own mean and variance per channel
    energy_form: Literal["pure", "offset", "gaussian"] = "offset"
    emb_features: PositiveInt = 32  # noise-level embedding of the CNN energies (as UNetSpec)
    emb_dim: PositiveInt = 256
    train: TrainSpec
    likelihood: LikelihoodSpec = LikelihoodSpec()


Levels = Annotated[int, Field(ge=1, le=16)]


class EpochSchedule(Strict):
    """The LPM release's schedule (training.py), replacing train.steps and train.lr_halve_every of
    paper 2's denoisers: `epochs` 4^j passes over the training images at scale j, lr halved every
    `lr_halve_every` 4^j epochs (a band at scale j has 4^-j the coefficients of one at scale 0). Its j:
    0 for the flat networks, J - 1 for the low-pass (it trains on the coefficients of scale J - 1).
    Steps = epochs x ceil(n_train / train.batch); our batches are drawn at random, so an "epoch" is
    n_train images seen, not a permutation."""

    epochs: PositiveInt = 500
    lr_halve_every: PositiveInt = 50
    growth: PositiveInt = 4  # the factor per scale


class MultiscaleSpec(Strict):
    """Paper 2: wavelet levels J per dataset, conditional CNNs per RF, flat baselines; optionally the
    normalized conditional energies of `energy`."""

    datasets: list[Name]
    # J per dataset, e.g. {celeba160: 2, celeba320: 3}; one number is shorthand for every dataset
    levels: dict[Name, Levels] = Field(2, validate_default=True)
    wavelet: str = "haar"  # any orthogonal pywt wavelet, periodic boundaries
    # "orthonormal": unit Jacobian; "average": the release's (low-pass stays in [0, 1]);
    # see multiscale/wavelets.py
    normalization: Literal["orthonormal", "average"] = "orthonormal"
    rf: list[PositiveInt] = [5, 9, 13, 23, 43]
    cnn: CNNSpec = CNNSpec()
    train: TrainSpec
    # None: every denoiser trains train.steps steps; an EpochSchedule: the release's epochs per scale
    epochs: EpochSchedule | None = None
    # The release trains the low-pass and flat denoisers on clean x u, u ~ U(0, 1) per image, so that
    # they denoise at every intensity (synthesis starts from zero-mean noise and finds its own
    # brightness). False keeps the data's intensities only (fewer steps to a given PSNR on it).
    intensity_scaling: bool = False
    # training noise std sigma = sigma_max (k / noise_grid)^2, k uniform in {0..noise_grid}
    # (losses.sample_quadratic_sigma); sigma_max per network (multiscale.conditional.noise_sigma_max):
    # "band_max": the largest |value| of what is noised (1 for images in [0, 1]);
    # "release": the LPM release's training.py: 1 in its averaging units for the flat and low-pass
    # networks, and for cCNN_j the square of max|d_j| in those units (it draws k/255, k < 255 max|d_j|,
    # and squares it), a range 2.6-2.7x narrower than "band_max" on the claim benchmark's patches
    noise_range: Literal["band_max", "release"] = "band_max"
    noise_grid: PositiveInt = 255
    sampler: SamplerSpec = SamplerSpec()
    sigmas: list[PositiveFloat] = [20, 40, 60, 100]  # noise std on the 0..255 scale
    eval_images: PositiveInt = 256  # first test images of denoise / multiscale-nll (at most all)
    superres_images: PositiveInt = 4  # test images super-resolved (sampler.n_samples samples each)
    energy: MultiscaleEnergySpec | None = None

    @field_validator("levels", mode="before")
    @classmethod
    def _one_number_for_all(cls, v, info):
        if isinstance(v, int) and not isinstance(v, bool):
            return dict.fromkeys(info.data.get("datasets", []), v)
        return v

    def levels_of(self, dataset: str) -> int:
        return self.levels[dataset]

    @model_validator(mode="after")
    def _odd_rf(self):
        even = [r for r in self.rf if r % 2 == 0]
        if even:
            raise ValueError(f"rf: receptive fields must be odd, got {even}")
        too_big = [r for r in self.rf if r > 2 * self.cnn.layers_conditional + 1]
        if too_big:
            raise ValueError(
                f"rf: receptive fields {too_big} exceed 2 * cnn.layers_conditional + 1 = "
                f"{2 * self.cnn.layers_conditional + 1}"
            )
        return self

    @model_validator(mode="after")
    def _orthogonal_wavelet(self):
        import pywt

        if self.wavelet not in pywt.wavelist(kind="discrete") or not pywt.Wavelet(self.wavelet).orthogonal:
            raise ValueError(f"wavelet {self.wavelet!r} is not an orthogonal pywt wavelet (e.g. haar, db2)")
        return self


# ------------------------------------------------------------------------------ paper 1 studies


class NllStudySpec(Strict):
    """The project's reference baselines beside the learned NLLs (studies/nll.py)."""

    # training images that fit the best-Gaussian baseline's mean and covariance (None: all of them)
    baseline_images: PositiveInt | None = None


class DenoisingStudySpec(Strict):
    """Table 1: output PSNR of every model at each input PSNR (dB, peak 1), the same noise for all."""

    psnrs: Annotated[list[float], Field(min_length=1)] = [90, 60, 30, 15, 0, -15, -30]
    n_images: PositiveInt = 256  # the first test images
    draws: PositiveInt = 1  # noise draws per image and PSNR


class GeneralizationStudySpec(Strict):
    """Fig. 2: log p_A vs log p_B on A's and B's training images (and test), and the models' losses."""

    n_images: PositiveInt = 1000  # at most this many images per set (the first ones)
    loss_draws: PositiveInt = 4  # (t, z) draws per image for the dual score loss, t as in training


class DimensionalityStudySpec(Strict):
    """Fig. 5: d_eff(x, t) and E log p_t on a log-spaced t grid, for the test mean and the
    n_extremes most and least probable test images."""

    t_min: PositiveFloat = 1e-12
    t_max: PositiveFloat = 1e3
    n_t: Annotated[int, Field(ge=2)] = 31
    n_images: PositiveInt = 256  # the first test images
    draws: PositiveInt = 4  # noise draws per image and t
    n_extremes: PositiveInt = 2

    @model_validator(mode="after")
    def _t_range(self):
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be smaller than t_max ({self.t_max})")
        return self


class ContentStudySpec(Strict):
    """Figs. 3-4 (studies/content.py): distribution of log p over test images, extremes, log p vs the
    participation ratio of the Haar coefficients (the release's sparsity) and log p(a x + b) (its
    contrast sweep); this project's pixel std and detail l1/l2 beside them."""

    n_images: PositiveInt | None = None  # the first test images (None: all)
    n_extremes: PositiveInt = 8  # most and least probable images kept for the figure
    participation_levels: PositiveInt = 6  # Haar levels (+ the coarsest low-pass), as the release
    wavelet_levels: PositiveInt = 2  # orthonormal Haar levels of the detail l1/l2 measure (ours)
    affine_a: Annotated[list[FiniteFloat], Field(min_length=1)] = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
    affine_b: Annotated[list[FiniteFloat], Field(min_length=1)] = [-0.25, 0.0, 0.25]
    affine_images: PositiveInt = 64  # the first test images swept over a and b


class ToyStudySpec(Strict):
    """Fig. 1: single vs dual score matching on a d-dimensional Gaussian scale mixture (studies/toy.py):
    x = sigma z, sigma in `sigmas` with probabilities `weights`; a radial MLP energy of `hidden` units
    trained `steps` Adam steps per method; NLL of `n_test` samples, log Z from `logz_images`."""

    d: PositiveInt = 1000
    sigmas: Annotated[list[PositiveFloat], Field(min_length=1)] = [1.0, 4.0]
    weights: Annotated[list[PositiveFloat], Field(min_length=1)] = [0.5, 0.5]
    steps: PositiveInt = 600
    batch: PositiveInt = 128
    lr: PositiveFloat = 1e-2
    t_min: PositiveFloat = 1e-3
    t_max: PositiveFloat = 1e3
    hidden: PositiveInt = 64
    energy_form: Literal["pure", "offset"] = "pure"
    n_test: Annotated[int, Field(ge=2)] = 400
    logz_images: PositiveInt = 1000

    @model_validator(mode="after")
    def _mixture(self):
        if len(self.sigmas) != len(self.weights) or abs(sum(self.weights) - 1) > 1e-9:
            raise ValueError(f"sigmas {self.sigmas} and weights {self.weights}: equal lengths, weights sum 1")
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be smaller than t_max ({self.t_max})")
        return self


class StudiesSpec(Strict):
    batch: PositiveInt = 64  # images per forward pass
    nll: NllStudySpec = NllStudySpec()
    denoising: DenoisingStudySpec = DenoisingStudySpec()
    generalization: GeneralizationStudySpec = GeneralizationStudySpec()
    dimensionality: DimensionalityStudySpec = DimensionalityStudySpec()
    content: ContentStudySpec = ContentStudySpec()
    toy: ToyStudySpec = ToyStudySpec()


# ------------------------------------------------------------------------------------ the config


class Config(Strict):
    seed: Seed = 0
    results: UserPath = Path("results")
    datasets: dict[Name, DataSpec]
    energy: EnergySpec | None = None
    generalization: GeneralizationSpec | None = None
    multiscale: MultiscaleSpec | None = None
    studies: StudiesSpec = StudiesSpec()

    @model_validator(mode="after")
    def _cross_checks(self):
        problems: list[str] = []

        def known(key: str, name: str) -> bool:
            if name not in self.datasets:
                problems.append(f"{key}: unknown dataset {name!r} (defined: {sorted(self.datasets)})")
                return False
            return True

        def divisible(key: str, name: str, levels: int) -> None:
            size = getattr(self.datasets[name], "size", None)
            if size is not None and size % 2**levels:
                problems.append(f"{key}: dataset {name!r} has size {size}, not divisible by 2^{levels}")

        if self.energy:
            for i, name in enumerate(self.energy.datasets):
                if known(f"energy.datasets.{i}", name):
                    divisible(f"energy.datasets.{i}", name, self.energy.unet.downsamplings)
        if self.generalization:
            g = self.generalization
            if known("generalization.dataset", g.dataset):
                divisible("generalization.dataset", g.dataset, g.unet.downsamplings)
                n_train = getattr(self.datasets[g.dataset], "n_train", None)
                too_big = [n for n in g.n if n_train is not None and 2 * n > n_train]
                if too_big:
                    problems.append(
                        f"generalization.n: {too_big} larger than half of the {n_train} training images "
                        f"of {g.dataset!r} (A and B must be disjoint)"
                    )
        if self.multiscale:
            m = self.multiscale
            for name in m.levels:
                if name not in m.datasets:
                    problems.append(f"multiscale.levels.{name}: {name!r} is not in multiscale.datasets")
            for i, name in enumerate(m.datasets):
                if name not in m.levels:
                    problems.append(
                        f"multiscale.levels: no entry for dataset {name!r} (give multiscale.levels.{name}, "
                        "or one number for every dataset)"
                    )
                elif known(f"multiscale.datasets.{i}", name):
                    divisible(f"multiscale.datasets.{i}", name, m.levels[name])
                    if m.energy and m.energy.lowpass == "unet":  # the low-pass energy's UNet downsamples x_J
                        levels = m.levels[name] + m.energy.unet.downsamplings
                        divisible(f"multiscale.energy.unet (x_J of {name!r})", name, levels)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _fits_in_memory(self):
        """Every dataset and batch whose size the params fix fits in this machine's memory, as float32
        (how studies load a split and how training and evaluation see a batch)."""
        memory = machine_memory()
        problems = []

        def pixels(name: str) -> tuple[str, int] | None:
            spec = self.datasets.get(name)
            if getattr(spec, "size", None) is None:
                return None
            c = getattr(spec, "channels", 1 if getattr(spec, "grayscale", True) else 3)
            return f"{c}x{spec.size}x{spec.size}", c * spec.size**2

        for name, spec in self.datasets.items():
            n = [getattr(spec, k, None) for k in ("n_train", "n_test")]
            if None not in n and (px := pixels(name)) and 4 * sum(n) * px[1] > memory:
                problems.append(
                    f"datasets.{name}: n_train + n_test = {sum(n)} images of {px[0]} float32 = "
                    f"{_bytes(4 * sum(n) * px[1])}, more than this machine's memory ({_bytes(memory)})"
                )
        batches = []  # (key, images per batch, datasets it sees)
        if e := self.energy:
            batches += [("energy.train.batch", e.train.batch, e.datasets),
                        ("energy.likelihood.batch", e.likelihood.batch, e.datasets),
                        ("studies.batch", self.studies.batch, e.datasets)]  # fmt: skip
        if g := self.generalization:
            batches += [("generalization.train.batch", g.train.batch, [g.dataset]),
                        ("generalization.likelihood.batch", g.likelihood.batch, [g.dataset])]  # fmt: skip
        if m := self.multiscale:
            batches.append(("multiscale.train.batch", m.train.batch, m.datasets))
            if me := m.energy:
                key = "multiscale.energy"
                batches += [(f"{key}.train.batch", me.train.batch, m.datasets),
                            (f"{key}.likelihood.batch", me.likelihood.batch, m.datasets)]  # fmt: skip
        for key, batch, names in batches:
            for name in names:
                if (px := pixels(name)) and 4 * batch * px[1] > memory:
                    problems.append(
                        f"{key}: {batch} images of {px[0]} float32 (dataset {name!r}) = "
                        f"{_bytes(4 * batch * px[1])}, more than this machine's memory ({_bytes(memory)})"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _bytes(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{n / 1024**i:.1f} {units[i]}"


# ------------------------------------------------------------------------------------- loading


def _format_error(source: str, err: ValidationError) -> str:
    lines = [f"invalid params in {source}:"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if len(loc) > 2 and loc[0] == "datasets" and loc[2] in DATA_KINDS:
            del loc[2]  # pydantic's discriminator tag, not a key the user wrote
        path = ".".join(loc)
        value = e.get("input")
        rule = "unknown key (not allowed)" if e["type"] == "extra_forbidden" else e["msg"]
        rule = rule.removeprefix("Value error, ")
        if e["type"] in ("int_type", "float_type") and isinstance(value, str) and _is_number(value):
            rule += " (this is text: write the number without quotes)"
        if e["type"] == "missing":
            lines.append(f"  {path}: missing (a required key)")
        elif not path:  # a check across sections: its message names the keys
            lines.append(f"  {rule}")
        elif isinstance(value, dict):  # a check of a whole section: its message names the keys
            lines.append(f"  {path}: {rule}")
        else:
            lines.append(f"  {path} = {value!r}: {rule}")
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# YAML 1.2 (and every reader) takes 1.0e3 and 1e-3 for numbers; PyYAML and Snakemake (YAML 1.1) read
# them as text, as they need a dot and a signed exponent. Only this spelling of a float is converted:
# other text ("10", "0.5") is refused by the strict types.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


def _exponent_floats(raw: Any) -> Any:
    if isinstance(raw, str) and _EXPONENT_FLOAT.fullmatch(raw):
        return float(raw)
    if isinstance(raw, dict):
        return {k: _exponent_floats(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_exponent_floats(v) for v in raw]
    return raw


def validate_config(raw: Any, source: str = "<params>") -> Config:
    """A plain dict (e.g. Snakemake's `config`) -> Config, or a ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid params in {source}: expected a mapping at top level, got {raw!r}")
    try:
        return Config.model_validate(_exponent_floats(raw))
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (SafeLoader keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found the key {key!r} twice (first on line {seen[key] + 1})", key_node.start_mark,
                )  # fmt: skip
            if isinstance(key, Hashable):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_params(path: str | Path) -> Any:
    """The YAML of a params file (numbers as YAML 1.2 reads them), unvalidated; a ConfigError naming
    the file when it is missing, not UTF-8, not YAML, or gives a key twice."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"params file {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"
        ) from None
    try:
        return _exponent_floats(yaml.load(text, Loader=_UniqueKeyLoader))
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {path} is not valid YAML: {err}") from None


def load_config(path: str | Path) -> Config:
    return validate_config(read_params(path), str(path))


def json_schema() -> dict:
    # "$schema" names the draft: snakemake.utils.validate refuses a schema without it.
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}


def write_schema(path: Path = SCHEMA_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
