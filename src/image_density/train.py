"""The training loop: Adam, halving lr, log-uniform t, optional EMA; resumable, multi-process.

Reproducibility: the random streams of step s on rank r (batch indices + flips; t + noise) are
re-seeded at every step from (seed, r, s), so they carry no state to save and a resumed run draws
exactly what an uninterrupted run would; with the optimizer/EMA state in the checkpoint, resuming on
CPU gives bit-identical weights. The torch global RNG (CPU/CUDA) is saved too, for networks that
draw from it. A checkpoint is resumed only by the same training: same model_spec, data (sha256),
images (generalization subset/n) and train settings, except `steps` (raising it extends a finished
run), `ckpt_every` and `log_every`; any other difference is a CheckpointError naming the keys (old ->
new) and the checkpoint folder, to delete for a fresh start. Refusing, rather than moving the old
state aside and starting over, keeps a typo in the params from silently discarding days of training.

Multi-process (`torchrun`, WORLD_SIZE > 1): gloo on CPU, nccl on GPU. `spec.batch` is the global
batch, split evenly over ranks, each drawing its own indices/t/noise. Gradients are averaged with one
hand-written all_reduce rather than DistributedDataParallel. Checked with gloo (torch 2.13): DDP does
handle the double backward of dual score matching when the loss goes through the wrapper's
`forward`, but the losses call the network through `energy`/`score_and_time_score`/`denoise`, which
bypass DDP's forward hook, and then DDP silently skips the gradient sync (ranks drift apart). A plain
all_reduce after `backward()` is exact whichever method the objective calls. Rank 0 writes checkpoints
and metrics.

Stopping: SIGTERM or SIGUSR1 (SLURM pre-emption / `--signal`) -> a checkpoint at the next step
boundary, then `Interrupted` (the CLI exits with EXIT_INTERRUPTED = 75, "temporary failure", so
Snakemake retries / SLURM requeues and the rerun resumes; under torchrun the launcher itself exits
with 1, the workers' 75 shows in its report). A non-finite loss or gradient ->
`NonFiniteLoss` naming the step and the loss terms; no checkpoint is written with it.

Files: in the state folder `ckpt_dir` (default `out_dir`; never inside a declared output such as a
`directory()`, since Snakemake deletes those before a rerun): `checkpoint.pt`, `checkpoint.prev.pt`
and the live log `checkpoint.metrics.jsonl`; at the end, in `out_dir`: `model.pt`
(checkpoint.save_model) and `metrics.jsonl` (one JSON object per `log_every` steps: step, lr, time,
grad_norm and the batch mean of every loss term).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from image_density import atomic
from image_density.checkpoint import (
    CKPT_NAME,
    CheckpointError,
    check_compatible,
    load_latest,
    save_checkpoint,
    save_model,
)
from image_density.config import Config, ConfigError, LikelihoodSpec, TrainSpec, UNetSpec
from image_density.noise import sample_log_uniform_t

EXIT_INTERRUPTED = 75  # sysexits EX_TEMPFAIL: checkpoint written, rerun to resume
EXIT_NONFINITE = 3  # non-finite loss: rerunning would diverge again
LIVE_METRICS = "checkpoint.metrics.jsonl"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# objective(model, x (B,C,H,W), t (B,), generator) -> {"loss": (B,), other terms: (B,)}
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], dict[str, torch.Tensor]]
_STREAM_DATA, _STREAM_NOISE = 0, 1


class Interrupted(Exception):
    """Stopped by a signal after writing a checkpoint; rerun to resume."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"stopped by signal at step {step}; checkpoint {path}; rerun to resume")
        self.step, self.path = step, path


class NonFiniteLoss(FloatingPointError):
    """A NaN/Inf loss or gradient; the message names the step, the terms and the last checkpoint."""


@dataclass(frozen=True)
class ImageSource:
    """Training images: `fetch(idx)` with idx an int64 array (B,) in [0, n) -> float (B,C,H,W) in [0,1]."""

    n: int
    fetch: Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    step: int
    model_path: Path
    metrics_path: Path
    resumed_from: int  # 0: fresh start


# ----------------------------------------------------------------------------------- helpers


def lr_at(spec: TrainSpec, step: int) -> float:
    """Learning rate for the update that completes step `step` + 1: halved every lr_halve_every."""
    return spec.lr * 0.5 ** (step // spec.lr_halve_every)


def step_generator(seed: int, rank: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator for one (seed, rank, step, stream), independent of all others."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, rank, step, stream]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _dist_info() -> tuple[int, int, bool]:
    """(rank, world_size, initialized_here); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, False
    started = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        started = True
    return dist.get_rank(), dist.get_world_size(), started


def _default_device(world: int) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else torch.cuda.current_device()
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


class _StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop acts on it at the next step boundary."""

    def __init__(self):
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self, enabled: bool):
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _handle(self, signum, frame):
        self.signum = signum


def _metrics_upto(path: Path, step: int) -> list[str]:
    """Lines of a metrics log with step <= `step` (later ones were logged after the checkpoint)."""
    if not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a crash
    return keep


def _ema_init(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _ema_update(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            ema[k].lerp_(v, 1.0 - decay)
        else:
            ema[k].copy_(v)


def _all_reduce_mean_(tensors: list[torch.Tensor], world: int) -> None:
    """Average tensors over ranks in one collective (flatten, all_reduce, unflatten)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


# ---------------------------------------------------------------------------------- the loop


@contextlib.contextmanager
def _session(ckpt_dir: Path, out_dir: Path, handle_signals: bool):
    """(rank, world_size, stop flag) for one training: process group, locks, signals.

    One training per state folder and per output folder (rank 0 holds both locks): two writers would
    interleave checkpoints, or publish one run's model.pt beside the other's metrics.jsonl.
    """
    rank, world, started_dist = _dist_info()
    try:
        with contextlib.ExitStack() as locks:
            if rank == 0:
                state_lock = ckpt_dir / "checkpoint.lock"
                locks.enter_context(atomic.exclusive(state_lock, f"training state {ckpt_dir}"))
                if out_dir.resolve() != ckpt_dir.resolve():
                    out_lock = atomic.lock_beside(out_dir.resolve())
                    locks.enter_context(atomic.exclusive(out_lock, f"training output {out_dir}"))
            with _StopFlag().installed(handle_signals) as stop:
                yield rank, world, stop
    finally:
        if started_dist:
            dist.destroy_process_group()


@dataclass
class _State:
    """What a checkpoint restores besides model/optimizer/EMA."""

    step: int = 0
    elapsed: float = 0.0  # training seconds before this process
    window: dict = field(default_factory=dict)  # sums of logged values since the last log ("_n": steps)
    path: Path | None = None  # the checkpoint resumed from / last written


def _resume(model, opt, ema, spec: TrainSpec, ckpt_dir: Path, model_spec: dict, meta: dict, device):
    """Load the newest good checkpoint of ckpt_dir into model/opt (and EMA); returns (state, ema)."""
    found = load_latest(ckpt_dir, map_location=device)
    if found is None:
        return _State(), ema
    ck, path = found
    check_compatible(
        ck, path, model_spec, meta.get("data_sha256"), train_spec=spec.model_dump(mode="json"), meta=meta
    )
    if ck["step"] > spec.steps:
        raise CheckpointError(
            f"{path}: at step {ck['step']}, past train.steps = {spec.steps}; "
            "increase steps or delete the checkpoint"
        )
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    if ema is not None:
        ema = {k: v.to(device) for k, v in (ck.get("ema") or _ema_init(model)).items()}
    torch.set_rng_state(ck["rng"]["torch_cpu"].cpu())
    if torch.cuda.is_available() and ck["rng"].get("torch_cuda"):
        torch.cuda.set_rng_state_all([r.cpu() for r in ck["rng"]["torch_cuda"]])
    return _State(ck["step"], ck["elapsed"], dict(ck["window"]), path), ema


def _backward(model, objective, opt, x, t, generator, stop: _StopFlag, world: int) -> tuple[dict, bool]:
    """Loss terms and gradients of one batch, averaged over ranks.

    Returns ({term: batch mean, ..., "grad_norm"}, stop) where stop is True when any rank got a signal.
    """
    terms = objective(model, x, t, generator)  # per-sample (b,) each
    opt.zero_grad(set_to_none=True)
    terms["loss"].mean().backward()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    names = sorted(terms)
    flag = torch.tensor(float(stop.signum is not None), device=x.device)
    stats = torch.stack([*(terms[k].detach().mean() for k in names), flag])
    if world > 1:
        _all_reduce_mean_([*grads, stats], world)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
    grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    values = dict(zip(names, stats[:-1].tolist(), strict=True))
    values["grad_norm"] = grad_norm.item()
    return values, stats[-1].item() > 0


def train(
    model: nn.Module,
    objective: Objective,
    images: ImageSource,
    spec: TrainSpec,
    out_dir: Path,
    model_spec: dict,
    *,
    ckpt_dir: Path | None = None,
    config: dict | None = None,
    meta: dict | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    handle_signals: bool = True,
) -> TrainResult:
    """Train `model` for spec.steps steps (resuming from ckpt_dir/checkpoint.pt when present) and
    write out_dir/model.pt + out_dir/metrics.jsonl.

    model_spec rebuilds the network (models.build_model) and must match the checkpoint's; `config`
    (the resolved params) and `meta` (data meta; its "data_sha256" is checked on resume; name,
    subset, ...) are stored in the model file. Seed the network's initialisation before calling.
    """
    from tqdm.auto import tqdm

    out_dir, ckpt_dir = Path(out_dir), Path(ckpt_dir or out_dir)
    meta = dict(meta or {})
    live = ckpt_dir / LIVE_METRICS
    with _session(ckpt_dir, out_dir, handle_signals) as (rank, world, stop):
        if spec.batch % world:
            raise ValueError(f"train.batch = {spec.batch} is not divisible by the {world} processes")
        device = torch.device(device) if device is not None else _default_device(world)
        model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
        ema = _ema_init(model) if spec.ema > 0 else None
        st, ema = _resume(model, opt, ema, spec, ckpt_dir, model_spec, meta, device)
        resumed_from = st.step
        if rank == 0:
            atomic.write_text(live, "".join(_metrics_upto(live, st.step)))
            out_dir.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after training
        if world > 1:  # every rank starts from rank 0's weights
            for v in model.state_dict().values():
                dist.broadcast(v, 0)
        t0 = time.monotonic() - st.elapsed

        def checkpoint() -> Path:
            if rank == 0:
                rng = {
                    "torch_cpu": torch.get_rng_state(),
                    "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "loop": {"seed": spec.seed, "world_size": world, "note": "re-seeded every step"},
                }
                state = {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema,
                    "step": st.step, "elapsed": time.monotonic() - t0, "window": st.window, "rng": rng,
                    "model_spec": model_spec, "train_spec": spec.model_dump(mode="json"),
                    "config": config, "meta": meta,
                }  # fmt: skip
                save_checkpoint(state, ckpt_dir, rotate=st.path == ckpt_dir / CKPT_NAME)
            if world > 1:
                dist.barrier()
            return ckpt_dir / CKPT_NAME

        b = spec.batch // world
        bar = tqdm(total=spec.steps, initial=st.step, disable=not progress or rank != 0, mininterval=5,
                   desc="train", dynamic_ncols=True)  # fmt: skip
        with open(live, "a") if rank == 0 else contextlib.nullcontext() as log:
            while st.step < spec.steps:
                g_data = step_generator(spec.seed, rank, st.step, _STREAM_DATA)
                g_noise = step_generator(spec.seed, rank, st.step, _STREAM_NOISE)
                idx = torch.randint(images.n, (b,), generator=g_data)
                x = images.fetch(idx.numpy()).to(device, torch.float32)  # (b, C, H, W)
                if spec.hflip:
                    flip = (torch.rand(b, generator=g_data) < 0.5).to(device).view(-1, 1, 1, 1)
                    x = torch.where(flip, x.flip(-1), x)
                t = sample_log_uniform_t(b, spec.t_min, spec.t_max, generator=g_noise, device=device)

                values, stop_now = _backward(model, objective, opt, x, t, g_noise, stop, world)
                if not all(math.isfinite(v) for v in values.values()):
                    shown = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
                    last = f"last good checkpoint: {st.path}" if st.path else "no checkpoint written yet"
                    raise NonFiniteLoss(f"non-finite loss at step {st.step + 1}: {shown}; {last}")
                lr = lr_at(spec, st.step)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.step()
                if ema is not None:
                    _ema_update(ema, model, spec.ema)
                st.step += 1

                for k, v in [*values.items(), ("_n", 1.0)]:
                    st.window[k] = st.window.get(k, 0.0) + v
                if st.step % spec.log_every == 0 or st.step == spec.steps:
                    n = st.window.pop("_n")
                    record = {"step": st.step, "lr": lr, "time": time.monotonic() - t0,
                              **{k: v / n for k, v in st.window.items()}}  # fmt: skip
                    st.window = {}
                    if rank == 0:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                bar.update(1)

                if st.step % spec.ckpt_every == 0 or st.step == spec.steps or stop_now:
                    st.path = checkpoint()
                if stop_now:
                    bar.close()
                    raise Interrupted(st.step, st.path)
            bar.close()

        model_path, metrics_path = out_dir / "model.pt", out_dir / "metrics.jsonl"
        if rank == 0:
            # model.pt, what downstream steps read, goes last and an older one first: a failed write
            # (full disk) or a kill leaves no model.pt beside a newer metrics.jsonl, nor a pair of
            # files that a tool would take for a finished run
            model_path.unlink(missing_ok=True)
            try:
                atomic.write_text(metrics_path, "".join(_metrics_upto(live, st.step)))
                weights = ema if ema is not None else model.state_dict()
                save_model(
                    model_path, weights=weights, model_spec=model_spec, config=config, meta=meta,
                    step=st.step, ema=spec.ema, train_spec=spec.model_dump(mode="json"),
                )  # fmt: skip
            except BaseException:
                metrics_path.unlink(missing_ok=True)
                raise
        if world > 1:
            dist.barrier()
    return TrainResult(st.step, model_path, metrics_path, resumed_from)


# ------------------------------------------------------------------------- from the params file

MODELS = {"energy": "energy_unet", "denoiser": "denoiser_unet"}  # --model -> models registry arch


@dataclass(frozen=True)
class Plan:
    """What the params ask for one model: the section it comes from and its settings."""

    section: str  # "energy" or "generalization"
    unet: UNetSpec
    train: TrainSpec
    likelihood: LikelihoodSpec
    subset: str | None = None  # "A" (first n training images) or "B" (last n)
    n: int | None = None


def plan_run(cfg: Config, dataset: str, subset: str | None = None, n: int | None = None) -> Plan:
    """The `energy:` section for a dataset, or the `generalization:` one for a subset (A|B, n)."""
    if (subset is None) != (n is None):
        raise ConfigError("give both --subset and --n (a generalization model), or neither")
    if subset is None:
        if cfg.energy is None or dataset not in cfg.energy.datasets:
            have = cfg.energy.datasets if cfg.energy else "no energy: section"
            raise ConfigError(f"dataset {dataset!r} is not in energy.datasets ({have})")
        return Plan("energy", cfg.energy.unet, cfg.energy.train, cfg.energy.likelihood)
    g = cfg.generalization
    if g is None or g.dataset != dataset:
        raise ConfigError(
            f"dataset {dataset!r} is not generalization.dataset "
            f"({g.dataset if g else 'no generalization: section'})"
        )
    if subset not in ("A", "B") or n not in g.n:
        raise ConfigError(f"generalization models are --subset A|B with --n in {g.n}, got {subset} {n}")
    return Plan("generalization", g.unet, g.train, g.likelihood, subset, n)


def run_name(model: str, plan: Plan) -> str:
    return model if plan.subset is None else f"{model}-{plan.subset}{plan.n}"


def train_from_config(
    cfg: Config,
    model: str,
    dataset: str,
    data_dir: Path,
    out_dir: Path,
    *,
    ckpt_dir: Path | None = None,
    subset: str | None = None,
    n: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the energy model (dual score matching) or the plain denoiser of the params file on a
    prepared dataset (or on subset A/B of its first/last n training images)."""
    from image_density.data import generalization_split, load_prepared
    from image_density.losses import denoiser_loss, dual_score_loss
    from image_density.models import build_model, unet_model_spec
    from image_density.models.energy import gaussian_stats
    from image_density.multiscale.train import STATS_IMAGES

    if model not in MODELS:
        raise ConfigError(f"--model must be one of {sorted(MODELS)}, got {model!r}")
    plan = plan_run(cfg, dataset, subset, n)
    data = load_prepared(data_dir)
    rows = np.arange(len(data.train))
    if subset is not None:
        rows = generalization_split(len(data.train), n, subset)
    stats = None
    if model == "energy" and plan.unet.energy_form == "gaussian":
        stats = gaussian_stats(data.images("train", rows[:STATS_IMAGES]))
    model_spec = unet_model_spec(MODELS[model], data.shape[0], plan.unet, stats)
    torch.manual_seed(plan.train.seed)
    net = build_model(model_spec)
    meta = {
        "name": run_name(model, plan),
        "model": model,
        "dataset": dataset,
        "section": plan.section,
        "subset": subset,
        "n": n,
        "data_path": str(data_dir),
        "shape": list(data.shape),
        "d": data.d,
        "quantized": data.quantized,
        "data_sha256": data.meta["sha256"]["train.npy"],
    }
    objective = dual_score_loss if model == "energy" else denoiser_loss
    images = ImageSource(len(rows), lambda i: data.images("train", rows[i]))
    return train(
        net,
        objective,
        images,
        plan.train,
        out_dir,
        model_spec,
        ckpt_dir=ckpt_dir,
        config=cfg.model_dump(mode="json"),
        meta=meta,
        progress=progress,
    )
