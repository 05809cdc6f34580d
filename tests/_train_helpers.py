"""Tiny stand-ins for the training tests: an energy network, the dual score objective, images.

Kept independent of image_density.models/losses so the loop is tested on its own; run as a script
(`python _train_helpers.py RUN_DIR STEPS [SIGTERM_AT]`) it trains once, for the subprocess tests.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from image_density.config import TrainSpec
from image_density.noise import add_noise, expand_t
from image_density.train import ImageSource, train

SPEC = {"arch": "tiny_energy", "channels": 1, "width": 4}
# The smallest `unet:` section of a params file, for the CLI and workflow tests (the first layout:
# one conv per block).
TINY_UNET = {"widths": [4], "mid_width": 4, "convs_per_block": 1, "emb_features": 2, "emb_dim": 4,
             "layout": "separate"}  # fmt: skip


class TinyEnergy(nn.Module):
    """U(y, t) = 1/2 <y, f(y, t)> with f a 2-layer conv net modulated by log t."""

    def __init__(self, channels: int = 1, width: int = 4):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.emb = nn.Linear(1, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def energy(self, y, t):
        h = self.inp(y) * (1 + self.emb(t.log().view(-1, 1))[:, :, None, None])
        return 0.5 * (y * self.out(torch.nn.functional.gelu(h))).flatten(1).sum(1)  # (B,)


def dual_score(model, x, t, generator):
    """Dual score matching (METHOD.md): per-sample dsm, tsm and their sum; needs double backward."""
    d = x[0].numel()
    t = t.clone().requires_grad_(True)
    y, _ = add_noise(x, t.detach(), generator)
    y.requires_grad_(True)
    u = model.energy(y, t)
    s_y, s_t = torch.autograd.grad(u.sum(), (y, t), create_graph=True)
    tt = expand_t(t, x)
    dsm = (y - tt * s_y - x).pow(2).flatten(1).sum(1) / (d * t)
    tsm = (0.5 * (1 - (y - x).pow(2).flatten(1).sum(1) / (d * t)) - t / d * s_t) ** 2
    return {"dsm": dsm, "tsm": tsm, "loss": dsm + tsm}


def make_images(n: int = 16, size: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def source(array: np.ndarray, hook=None) -> ImageSource:
    """An ImageSource on a uint8 array; hook(idx) runs before each fetch (to crash or signal)."""

    def fetch(idx):
        if hook is not None:
            hook(idx)
        return torch.from_numpy(array[idx].astype(np.float32) / 255.0)

    return ImageSource(len(array), fetch)


def tiny_spec(**kw) -> TrainSpec:
    base = dict(
        steps=6,
        batch=4,
        lr=1e-2,
        lr_halve_every=1000,
        t_min=1e-4,
        t_max=10.0,
        ckpt_every=2,
        log_every=1,
        seed=0,
    )
    return TrainSpec(**{**base, **kw})


def fresh_model(seed: int = 0) -> TinyEnergy:
    torch.manual_seed(seed)
    return TinyEnergy()


if __name__ == "__main__":
    # python _train_helpers.py RUN_DIR STEPS [SIGNAL_AT]: the last rank sends itself SIGTERM inside step
    # SIGNAL_AT; every rank saves its final weights as RUN_DIR/rank<R>.pt
    torch.set_num_threads(1)
    run_dir, steps = Path(sys.argv[1]), int(sys.argv[2])
    signal_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    calls = []

    def hook(idx):
        calls.append(1)
        if rank == world - 1 and len(calls) == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)

    from image_density.train import EXIT_INTERRUPTED, Interrupted

    model = fresh_model(seed=rank)  # ranks start apart: training must broadcast rank 0's weights
    try:
        train(
            model,
            dual_score,
            source(make_images(), hook),
            tiny_spec(steps=steps, ckpt_every=100),
            run_dir,
            SPEC,
            progress=False,
        )
        code = 0
    except Interrupted as err:
        print(err)
        code = EXIT_INTERRUPTED
    torch.save(model.state_dict(), run_dir / f"rank{rank}.pt")
    sys.exit(code)
