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
from image_density.config import TrainSpec
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


class _Run:
    """One training inside its session: the network, Adam, the EMA weights and the loop state `st`,
    set up and resumed from ckpt_dir on construction. `loop` calls `step`, `log` and `checkpoint`
    once per step; `publish` writes the outputs at the end.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        images: ImageSource,
        spec: TrainSpec,
        model_spec: dict,
        out_dir: Path,
        ckpt_dir: Path,
        *,
        config: dict | None,
        meta: dict,
        device: str | torch.device | None,
        rank: int,
        world: int,
    ):
        if spec.batch % world:
            raise ValueError(f"train.batch = {spec.batch} is not divisible by the {world} processes")
        self.model, self.objective, self.images, self.spec = model, objective, images, spec
        self.model_spec, self.config, self.meta = model_spec, config, meta
        self.out_dir, self.ckpt_dir, self.live = out_dir, ckpt_dir, ckpt_dir / LIVE_METRICS
        self.rank, self.world = rank, world
        self.device = torch.device(device) if device is not None else _default_device(world)
        model.to(self.device).train()
        self.opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
        self.ema = _ema_init(model) if spec.ema > 0 else None
        self.st = self._resume()
        self.resumed_from = self.st.step
        if rank == 0:
            atomic.write_text(self.live, "".join(_metrics_upto(self.live, self.st.step)))
            out_dir.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after training
        if world > 1:  # every rank starts from rank 0's weights
            for v in model.state_dict().values():
                dist.broadcast(v, 0)
        self.t0 = time.monotonic() - self.st.elapsed  # training time counts on from the checkpoint's

    def _resume(self) -> _State:
        """Load the newest good checkpoint of ckpt_dir into model/opt (and EMA); a fresh state if none."""
        found = load_latest(self.ckpt_dir, map_location=self.device)
        if found is None:
            return _State()
        ck, path = found
        spec = self.spec
        train_spec = spec.model_dump(mode="json")
        check_compatible(
            ck, path, self.model_spec, self.meta.get("data_sha256"), train_spec=train_spec, meta=self.meta
        )
        if ck["step"] > spec.steps:
            raise CheckpointError(
                f"{path}: at step {ck['step']}, past train.steps = {spec.steps}; "
                "increase steps or delete the checkpoint"
            )
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.ema is not None:
            self.ema = {k: v.to(self.device) for k, v in (ck.get("ema") or _ema_init(self.model)).items()}
        torch.set_rng_state(ck["rng"]["torch_cpu"].cpu())
        if torch.cuda.is_available() and ck["rng"].get("torch_cuda"):
            torch.cuda.set_rng_state_all([r.cpu() for r in ck["rng"]["torch_cuda"]])
        return _State(ck["step"], ck["elapsed"], dict(ck["window"]), path)

    def loop(self, stop: _StopFlag, progress: bool) -> None:
        """Steps up to spec.steps, with a checkpoint every ckpt_every steps and at the last; when a
        rank got a stop signal, `Interrupted` after the checkpoint of that step."""
        from tqdm.auto import tqdm

        spec, st = self.spec, self.st
        bar = tqdm(total=spec.steps, initial=st.step, disable=not progress or self.rank != 0, mininterval=5,
                   desc="train", dynamic_ncols=True)  # fmt: skip
        with bar, open(self.live, "a") if self.rank == 0 else contextlib.nullcontext() as log:
            while st.step < spec.steps:
                values, lr, stop_now = self.step(stop)
                if (record := self.log(values, lr, log)) is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                bar.update(1)
                if st.step % spec.ckpt_every == 0 or st.step == spec.steps or stop_now:
                    self.checkpoint()
                if stop_now:
                    raise Interrupted(st.step, st.path)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """This rank's share of step st.step: images x (b, C, H, W), flipped at random if hflip, and
        t (b,), drawn from generators seeded by (seed, rank, step); the noise generator goes on to
        draw the objective's noise."""
        spec, step, b = self.spec, self.st.step, self.spec.batch // self.world
        g_data = step_generator(spec.seed, self.rank, step, _STREAM_DATA)
        g_noise = step_generator(spec.seed, self.rank, step, _STREAM_NOISE)
        idx = torch.randint(self.images.n, (b,), generator=g_data)
        x = self.images.fetch(idx.numpy()).to(self.device, torch.float32)  # (b, C, H, W)
        if spec.hflip:
            flip = (torch.rand(b, generator=g_data) < 0.5).to(self.device).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        t = sample_log_uniform_t(b, spec.t_min, spec.t_max, generator=g_noise, device=self.device)
        return x, t, g_noise

    def step(self, stop: _StopFlag) -> tuple[dict[str, float], float, bool]:
        """One Adam update: ({term: batch mean, ..., "grad_norm"}, the lr it used, whether any rank
        got a stop signal). A non-finite value raises NonFiniteLoss before the update."""
        x, t, g_noise = self._batch()
        values, stop_now = _backward(self.model, self.objective, self.opt, x, t, g_noise, stop, self.world)
        if not all(math.isfinite(v) for v in values.values()):
            shown = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
            last = f"last good checkpoint: {self.st.path}" if self.st.path else "no checkpoint written yet"
            raise NonFiniteLoss(f"non-finite loss at step {self.st.step + 1}: {shown}; {last}")
        lr = lr_at(self.spec, self.st.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        if self.ema is not None:
            _ema_update(self.ema, self.model, self.spec.ema)
        self.st.step += 1
        return values, lr, stop_now

    def log(self, values: dict[str, float], lr: float, log) -> dict | None:
        """Add a step's values to the window; every log_every steps and at the last, its means become
        one line of the live log (written by rank 0), which is returned."""
        st, spec = self.st, self.spec
        for k, v in [*values.items(), ("_n", 1.0)]:
            st.window[k] = st.window.get(k, 0.0) + v
        if st.step % spec.log_every != 0 and st.step != spec.steps:
            return None
        n = st.window.pop("_n")
        record = {"step": st.step, "lr": lr, "time": time.monotonic() - self.t0,
                  **{k: v / n for k, v in st.window.items()}}  # fmt: skip
        st.window = {}
        if self.rank == 0:
            log.write(json.dumps(record) + "\n")
            log.flush()
        return record

    def checkpoint(self) -> None:
        """Rank 0 writes the state after step st.step (the one before it becomes checkpoint.prev.pt
        when this run wrote or resumed it); every rank waits for it."""
        st, ckpt_dir = self.st, self.ckpt_dir
        if self.rank == 0:
            rng = {
                "torch_cpu": torch.get_rng_state(),
                "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "loop": {"seed": self.spec.seed, "world_size": self.world, "note": "re-seeded every step"},
            }
            state = {
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "ema": self.ema,
                "step": st.step, "elapsed": time.monotonic() - self.t0, "window": st.window, "rng": rng,
                "model_spec": self.model_spec, "train_spec": self.spec.model_dump(mode="json"),
                "config": self.config, "meta": self.meta,
            }  # fmt: skip
            save_checkpoint(state, ckpt_dir, rotate=st.path == ckpt_dir / CKPT_NAME)
        if self.world > 1:
            dist.barrier()
        st.path = ckpt_dir / CKPT_NAME

    def publish(self) -> TrainResult:
        """out_dir/metrics.jsonl (the live log up to the last step) and out_dir/model.pt (EMA weights
        if EMA is on), written by rank 0; every rank waits for them."""
        model_path, metrics_path = self.out_dir / "model.pt", self.out_dir / "metrics.jsonl"
        if self.rank == 0:
            # model.pt, what downstream steps read, goes last and an older one first: a failed write
            # (full disk) or a kill leaves no model.pt beside a newer metrics.jsonl, nor a pair of
            # files that a tool would take for a finished run
            model_path.unlink(missing_ok=True)
            try:
                atomic.write_text(metrics_path, "".join(_metrics_upto(self.live, self.st.step)))
                weights = self.ema if self.ema is not None else self.model.state_dict()
                save_model(
                    model_path, weights=weights, model_spec=self.model_spec, config=self.config,
                    meta=self.meta, step=self.st.step, ema=self.spec.ema,
                    train_spec=self.spec.model_dump(mode="json"),
                )  # fmt: skip
            except BaseException:
                metrics_path.unlink(missing_ok=True)
                raise
        if self.world > 1:
            dist.barrier()
        return TrainResult(self.st.step, model_path, metrics_path, self.resumed_from)


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
    out_dir, ckpt_dir = Path(out_dir), Path(ckpt_dir or out_dir)
    with _session(ckpt_dir, out_dir, handle_signals) as (rank, world, stop):
        run = _Run(model, objective, images, spec, model_spec, out_dir, ckpt_dir, config=config,
                   meta=dict(meta or {}), device=device, rank=rank, world=world)  # fmt: skip
        run.loop(stop, progress)
        return run.publish()
