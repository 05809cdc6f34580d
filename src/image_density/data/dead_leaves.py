"""Dead-leaves images: occluding disks with radius density ∝ r^-alpha on [r_min, r_max] and uniform
8-bit grey levels, a classic model of natural-image statistics (Matheron; Lee, Mumford & Huang 2001).

Disks are drawn front to back, so a pixel takes the grey level of the first disk that covers it;
drawing stops when every pixel is covered. Only disks that can touch the window are drawn: a disk of
radius r hits the size x size window when its centre lies in the window grown by r, so radii are
drawn from p(r) ∝ r^-alpha (size + 2 r)^2 and centres uniformly in the grown window — the same law as
disks spread over the whole plane, without the ones that cannot be seen.
"""

from __future__ import annotations

import numpy as np

from image_density.config import DeadLeavesData
from image_density.data.splits import blocks, split_seed
from image_density.data.store import Source

DISKS_PER_ROUND = 64
MAX_ELEMENTS = 1 << 23  # images x disks x pixels tested at once (memory bound)


def _radius_quantiles(spec: DeadLeavesData) -> tuple[np.ndarray, np.ndarray]:
    """(cdf, r) on a fine log grid of the radii of disks that hit the window."""
    r = np.geomspace(spec.r_min, spec.r_max, 4097)
    dens = r ** (-spec.alpha) * (spec.size + 2 * r) ** 2
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(r))])
    return cdf / cdf[-1], r


def render(spec: DeadLeavesData, n: int, rng: np.random.Generator) -> np.ndarray:
    """n dead-leaves images, uint8 (n, 1, size, size)."""
    size, k = spec.size, DISKS_PER_ROUND
    cdf, r_grid = _radius_quantiles(spec)
    centres = np.arange(size, dtype=np.float32) + 0.5
    out = np.zeros((n, size, size), np.uint8)
    todo = np.ones((n, size, size), bool)
    per_batch = max(1, MAX_ELEMENTS // (k * size * size))
    for start in range(0, n, per_batch):
        active = np.arange(start, min(n, start + per_batch))
        while active.size:
            a = active.size
            r = np.interp(rng.random((a, k)), cdf, r_grid).astype(np.float32)  # (a, k)
            cy = rng.random((a, k), dtype=np.float32) * (size + 2 * r) - r
            cx = rng.random((a, k), dtype=np.float32) * (size + 2 * r) - r
            grey = rng.integers(0, 256, (a, k), dtype=np.uint8)
            dy2 = (centres - cy[..., None]) ** 2  # (a, k, size)
            dx2 = (centres - cx[..., None]) ** 2
            cover = dy2[..., :, None] + dx2[..., None, :] <= (r * r)[..., None, None]  # (a, k, H, W)
            cover &= todo[active][:, None]
            hit = cover.any(1)  # (a, H, W)
            first = cover.argmax(1)  # front-most covering disk
            level = np.take_along_axis(grey, first.reshape(a, -1), 1).reshape(first.shape)
            out[active] = np.where(hit, level, out[active])
            todo[active] &= ~hit
            active = active[todo[active].any((1, 2))]
    return out[:, None]


def source(spec: DeadLeavesData) -> Source:
    def chunks(split: str, n: int):
        def gen():
            rng = np.random.default_rng(split_seed(spec.seed, split))
            return blocks(n, lambda b: render(spec, b, rng))

        return gen

    return Source(
        shape=(1, spec.size, spec.size),
        dtype=np.dtype(np.uint8),
        chunks={"train": chunks("train", spec.n_train), "test": chunks("test", spec.n_test)},
        source={"generator": "dead_leaves", **spec.model_dump(mode="json")},
    )
