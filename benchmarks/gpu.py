"""GPU throughput of paper 1's training and NLL (issues 8, 18): one JSON line per figure.

    python benchmarks/gpu.py                        # one CUDA GPU, no network; a few minutes (< 8)
    python benchmarks/gpu.py --device cpu --tiny    # seconds: the smoke run of tests/test_benchmarks.py
    python benchmarks/gpu.py --device cpu --tiny --figures ddp --ddp 2   # DDP scaling, 2 CPU processes

Default setting: the release's UNet (64/128/256, middle 512, 3 convs per block) on 64x64x3 images,
batch 128, TF32 on, cuDNN autotuning on, activations channels-last (UNet's default on CUDA).
Figures, each with autocast off (fp32/TF32) and with bf16 autocast of the network (the loss stays fp32):
  step       energy (dual score matching) and denoiser step seconds, images/s, their ratio (goal <= 2.5),
             peak memory of each;
  compiled   the same with the network through torch.compile: the denoiser step only (AOTAutograd has no
             double backward, so dual score matching cannot be compiled; its line says so);
  nll        energy NLL images/s (one forward pass under inference_mode), eager and
             likelihood.nll(compile=True), and its peak memory;
  layout     the step ratio again with NCHW activations (what channels-last buys);
  projection GPU-hours of params/paper.yaml's UNet trainings (paper 1's energies and denoisers, the
             generalization pairs) from the fastest exact (fp32/TF32) step times measured above;
  ddp        (only with --figures ddp) images/s of dual-score steps at a fixed global batch under
             torchrun with 1 and --ddp N processes (gloo on the CPU, nccl on GPUs), as train.py
             averages gradients (one all_reduce per step), and the scaling efficiency.
Stops starting new figures after --budget seconds (default 420), so the run ends well inside 8 min.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (benchmarks/speed.py: the shared timing helpers)

from image_density import likelihood  # noqa: E402
from image_density.config import load_config  # noqa: E402
from image_density.losses import denoiser_loss, dual_score_loss  # noqa: E402

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}
FIGURES = ("step", "compiled", "nll", "layout", "projection", "ddp")
PAPER = speed.ROOT / "params/paper.yaml"


def settings(args) -> dict:
    if args.tiny:
        return {"unet": "tiny", "size": 8, "channels": 3, "batch": 4}
    return {"unet": "paper", "size": args.size, "channels": 3, "batch": args.batch}


def step_row(args, s: dict, precision: str, channels_last: bool | None, compiled: bool = False) -> dict:
    dev, amp = args.device, AUTOCAST[precision]
    x, t = speed.batch(s["batch"], s["channels"], s["size"], dev)
    row = {}
    models = {}
    kinds = [("denoiser", "denoiser_unet", denoiser_loss)]
    if not compiled:  # torch.compile (AOTAutograd) cannot differentiate a backward again
        kinds.insert(0, ("energy", "energy_unet", dual_score_loss))
    for kind, arch, objective in kinds:
        model = speed.build(arch, s["unet"], s["channels"], dev)
        model.net.channels_last = channels_last
        if compiled:
            model.net = torch.compile(model.net, dynamic=False)  # parameters shared with the module
        models[kind] = speed.train_step(model, objective, x, t, amp)
    res = speed.interleaved(models, args.reps, dev)
    for kind, step in models.items():
        wall = res[kind][0]
        base, peak = speed.peak_mb(step, dev)
        row |= {
            f"{kind}_step_s": round(wall, 5),
            f"{kind}_images_per_s": round(s["batch"] / wall, 1),
            f"{kind}_peak_mb": round(peak, 1),
            f"{kind}_base_mb": round(base, 1),
        }
    if compiled:
        row["energy"] = "not compiled: torch.compile has no double backward"
    else:
        row["energy_over_denoiser"] = round(res["energy"][0] / res["denoiser"][0], 3)
    return row


def nll_row(args, s: dict, precision: str) -> dict:
    dev, amp = args.device, AUTOCAST[precision]
    model = speed.build("energy_unet", s["unet"], s["channels"], dev).eval()
    n = s["batch"] * args.nll_batches
    x, _ = speed.batch(n, s["channels"], s["size"], dev)

    def path(compiled: bool):
        def run():
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                likelihood.nll(model, x, 0.0, batch_size=s["batch"], compile=compiled)

        return run

    runs = {"eager": path(False), "compiled": path(True)}
    res = speed.interleaved(runs, args.reps, dev)  # its warm-up round compiles
    base, peak = speed.peak_mb(runs["eager"], dev)
    return {
        "nll_images_per_s": round(n / res["eager"][0], 1),
        "nll_compiled_images_per_s": round(n / res["compiled"][0], 1),
        "nll_peak_mb": round(peak, 1),
        "nll_base_mb": round(base, 1),
    }


def projection_row(steps: dict) -> dict:
    """GPU-hours of params/paper.yaml's UNet trainings at the measured step times. `steps`: {"energy":
    s, "denoiser": s} at the measured batch; every training is charged at that size and batch."""
    cfg = load_config(PAPER)
    plan = {  # (model kind, number of trainings, steps each, batch)
        "energy": ("energy", len(cfg.energy.datasets), cfg.energy.train.steps, cfg.energy.train.batch),
        "denoiser": ("denoiser", len(cfg.energy.datasets), cfg.energy.train.steps, cfg.energy.train.batch),
        "generalization": ("energy", 2 * len(cfg.generalization.n), cfg.generalization.train.steps,
                           cfg.generalization.train.batch),
    }  # fmt: skip
    hours = {name: round(k * n * steps[kind] / 3600, 1) for name, (kind, k, n, _) in plan.items()}
    return {
        "plan": {
            name: {"model": kind, "trainings": k, "steps": n, "batch": b}
            for name, (kind, k, n, b) in plan.items()
        },
        "gpu_hours": hours,
        "gpu_hours_total": round(sum(hours.values()), 1),
        "gpu_days_total": round(sum(hours.values()) / 24, 1),
        "not_projected": "paper 2's multi-scale CNNs and energies, and every evaluation",
    }


# ------------------------------------------------------------------------------------- DDP


def ddp_worker(args, s: dict) -> None:
    """One torchrun process: dual-score steps on its share of a fixed global batch, gradients averaged
    with train.py's all_reduce; rank 0 prints seconds per step (median after a warm-up step)."""
    import torch.distributed as dist

    from image_density import train

    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    cuda = args.device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    dev = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    torch.set_num_threads(1)
    model = speed.build("energy_unet", s["unet"], s["channels"], dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-7)
    x, t = speed.batch(s["batch"] // world, s["channels"], s["size"], dev, seed=rank)
    stop = train._StopFlag()
    times = []
    for _ in range(args.ddp_steps + 1):
        speed.sync(dev)
        w0 = time.perf_counter()
        train._backward(model, dual_score_loss, opt, x, t, torch.Generator().manual_seed(rank), stop, world)
        opt.step()
        speed.sync(dev)
        times.append(time.perf_counter() - w0)
    if rank == 0:
        print(json.dumps({"step_s": sorted(times[1:])[len(times[1:]) // 2]}), flush=True)
    dist.destroy_process_group()


def ddp_row(args, s: dict) -> dict:
    """Images/s under torchrun with 1 and args.ddp processes, at the same global batch."""
    rates = {}
    for world in sorted({1, args.ddp}):
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={world}",
        ]
        worker = ["--ddp-worker", "--device", str(args.device), "--ddp-steps", str(args.ddp_steps),
                  "--size", str(s["size"]), "--batch", str(s["batch"])]  # fmt: skip
        worker += ["--tiny"] if args.tiny else []
        cmd = [*launcher, __file__, *worker]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.budget)
        if out.returncode:
            raise RuntimeError(f"torchrun with {world} processes failed:\n{out.stderr[-3000:]}")
        step = json.loads(out.stdout.strip().splitlines()[-1])["step_s"]
        rates[world] = s["batch"] / step
    n = args.ddp
    return {
        "processes": sorted(rates),
        "global_batch": s["batch"],
        "backend": "nccl" if args.device.type == "cuda" else "gloo",
        "images_per_s": {str(k): round(v, 2) for k, v in rates.items()},
        "speedup": round(rates[n] / rates[1], 3),
        "efficiency": round(rates[n] / rates[1] / n, 3),
        "threads_per_process": 1 if args.device.type == "cpu" else None,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", type=torch.device, default=torch.device("cuda"))
    p.add_argument("--tiny", action="store_true", help="tiny UNet and images: a smoke run of seconds")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=5, help="timed repeats (best kept), after one warm-up")
    p.add_argument("--nll-batches", type=int, default=4, help="batches per timed NLL run")
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which no figure starts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--figures", nargs="+", choices=FIGURES, default=[f for f in FIGURES if f != "ddp"])
    p.add_argument("--ddp", type=int, default=2, help="ddp figure: processes (GPUs) against 1")
    p.add_argument("--ddp-steps", type=int, default=3, help="ddp figure: timed steps per run")
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)  # run by torchrun
    args = p.parse_args(argv)
    if args.device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu.py: no CUDA device (use --device cpu --tiny for the smoke run)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    s = settings(args)
    if args.ddp_worker:
        ddp_worker(args, s)
        return
    ctx = {
        **s,
        "device": str(args.device),
        "torch": torch.__version__,
        "tf32": args.device.type == "cuda",
        "gpu": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else speed.machine(),
    }
    start = time.monotonic()
    jobs = [(f, prec) for f in ("step", "compiled", "nll", "layout") for prec in AUTOCAST]
    jobs = [j for j in jobs if j[0] in args.figures] + [(f, None) for f in ("projection", "ddp")]
    steps_fp32 = {}  # fastest exact step time of each model kind, for the projection
    for figure, precision in jobs:
        if figure not in args.figures:
            continue
        if figure != "projection" and time.monotonic() - start > args.budget:  # projection: no cost
            speed.emit(figure="skipped", what=figure, precision=precision, reason="--budget spent", **ctx)
            continue
        t0 = time.monotonic()
        layout = {}
        if figure == "nll":
            row = nll_row(args, s, precision)
        elif figure == "projection":
            if not {"energy", "denoiser"} <= set(steps_fp32):
                speed.emit(figure="skipped", what=figure, reason="needs the fp32 step figure", **ctx)
                continue
            row = {"step_s": dict(steps_fp32), **projection_row(steps_fp32)}
        elif figure == "ddp":
            row = ddp_row(args, s)
        else:
            channels_last = False if figure == "layout" else None  # layout: NCHW activations
            row = step_row(args, s, precision, channels_last, compiled=figure == "compiled")
            layout = {"channels_last": args.device.type == "cuda" if channels_last is None else False}
            if precision == "fp32":
                for kind in ("energy", "denoiser"):
                    if f"{kind}_step_s" in row:
                        steps_fp32[kind] = min(steps_fp32.get(kind, float("inf")), row[f"{kind}_step_s"])
        prec = {"precision": precision} if precision else {}
        speed.emit(figure=figure, **prec, **layout, seconds=round(time.monotonic() - t0, 1), **row, **ctx)


if __name__ == "__main__":
    main()
