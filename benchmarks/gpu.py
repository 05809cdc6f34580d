"""GPU throughput of paper 1's training and NLL (issue 8): one JSON line per figure.

    python benchmarks/gpu.py                        # one CUDA GPU, no network; a few minutes (< 8)
    python benchmarks/gpu.py --device cpu --tiny    # seconds: the smoke run of tests/test_benchmarks.py

Default setting: the release's UNet (64/128/256, middle 512, 3 convs per block) on 64x64x3 images,
batch 128, TF32 on, cuDNN autotuning on, activations channels-last (UNet's default on CUDA).
Figures, each with autocast off (fp32/TF32) and with bf16 autocast of the network (the loss stays fp32):
  step   energy (dual score matching) and denoiser step seconds, images/s, their ratio (goal <= 2.5),
         peak memory of each;
  nll    energy NLL images/s (one forward pass under inference_mode) and its peak memory;
  layout the step ratio again with NCHW activations (what channels-last buys).
Stops starting new figures after --budget seconds (default 420), so the run ends well inside 8 min.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (benchmarks/speed.py: the shared timing helpers)

from image_density import likelihood  # noqa: E402
from image_density.losses import denoiser_loss, dual_score_loss  # noqa: E402

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}


def settings(args) -> dict:
    if args.tiny:
        return {"unet": "tiny", "size": 8, "channels": 3, "batch": 4}
    return {"unet": "paper", "size": args.size, "channels": 3, "batch": args.batch}


def step_row(args, s: dict, precision: str, channels_last: bool | None) -> dict:
    dev, amp = args.device, AUTOCAST[precision]
    x, t = speed.batch(s["batch"], s["channels"], s["size"], dev)
    row = {}
    models = {}
    for kind, arch, objective in (
        ("energy", "energy_unet", dual_score_loss),
        ("denoiser", "denoiser_unet", denoiser_loss),
    ):
        model = speed.build(arch, s["unet"], s["channels"], dev)
        model.net.channels_last = channels_last
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
    row["energy_over_denoiser"] = round(res["energy"][0] / res["denoiser"][0], 3)
    return row


def nll_row(args, s: dict, precision: str) -> dict:
    dev, amp = args.device, AUTOCAST[precision]
    model = speed.build("energy_unet", s["unet"], s["channels"], dev).eval()
    n = s["batch"] * args.nll_batches
    x, _ = speed.batch(n, s["channels"], s["size"], dev)

    def run():
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            likelihood.nll(model, x, 0.0, batch_size=s["batch"])

    res = speed.interleaved({"nll": run}, args.reps, dev)
    base, peak = speed.peak_mb(run, dev)
    return {
        "nll_images_per_s": round(n / res["nll"][0], 1),
        "nll_peak_mb": round(peak, 1),
        "nll_base_mb": round(base, 1),
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
    ctx = {
        **s,
        "device": str(args.device),
        "torch": torch.__version__,
        "tf32": args.device.type == "cuda",
        "gpu": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else speed.machine(),
    }
    start = time.monotonic()
    jobs = [("step", p, None) for p in AUTOCAST] + [("nll", p, None) for p in AUTOCAST]
    jobs += [("layout", p, False) for p in AUTOCAST]  # NCHW activations
    for figure, precision, layout in jobs:
        if time.monotonic() - start > args.budget:
            speed.emit(figure="skipped", what=figure, precision=precision, reason="--budget spent", **ctx)
            continue
        t0 = time.monotonic()
        if figure == "nll":
            row = nll_row(args, s, precision)
        else:
            row = step_row(args, s, precision, layout)
        speed.emit(
            figure=figure,
            precision=precision,
            channels_last=args.device.type == "cuda" if layout is None else layout,
            seconds=round(time.monotonic() - t0, 1),
            **row,
            **ctx,
        )


if __name__ == "__main__":
    main()
