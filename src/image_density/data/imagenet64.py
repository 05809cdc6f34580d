"""Downsampled ImageNet 64x64 (Chrabaszcz, Loshchilov & Hutter 2017), read from a user folder.

The folder holds pickled batches `train_data_batch_1` ... `train_data_batch_10` and `val_data`
(the `.npz` release, same names + `.npz`, is read too). Each is a dict with `data`, uint8
(N, 12288) — channel-major: the R plane, then G, then B, each 64 x 64 row-major — and `labels`.
val_data is the test split. Grayscale = ITU-R 601 luma, rounded to 8 bits.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np

from image_density.config import ImageNet64Data
from image_density.data.images import luma_uint8
from image_density.data.store import Source

SIDE = 64
WIDTH = 3 * SIDE * SIDE
CHUNK = 1024  # images converted at once (grey: a float64 temp of ~100 MB)
_TRAIN = re.compile(r"^train_data_batch_(\d+)(\.npz)?$")


def batch_files(folder: Path) -> tuple[list[Path], Path]:
    """(train batches in numeric order, val_data); errors if the folder is not an ImageNet64 copy."""
    if not folder.is_dir():
        raise FileNotFoundError(f"imagenet64: folder not found: {folder}")
    found = {int(m[1]): p for p in folder.iterdir() if (m := _TRAIN.match(p.name))}
    train = [found[i] for i in sorted(found)]
    val = [p for p in (folder / "val_data", folder / "val_data.npz") if p.is_file()]
    if not train:
        raise FileNotFoundError(f"imagenet64: no train_data_batch_<i> files in {folder}")
    if not val:
        raise FileNotFoundError(f"imagenet64: no val_data file in {folder}")
    return train, val[0]


def read_batch(path: Path) -> np.ndarray:
    """One batch file -> uint8 (N, 3, 64, 64)."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                batch = {k: z[k] for k in z.files}
        else:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, OSError, AttributeError, ImportError) as err:
        raise ValueError(f"imagenet64: cannot read {path} (truncated or not a batch file): {err!r}") from None
    if not isinstance(batch, dict) or "data" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"imagenet64: {path} has no key 'data' (found: {keys})")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != WIDTH:
        raise ValueError(
            f"imagenet64: {path}: 'data' is {data.dtype} {data.shape}, expected uint8 "
            f"(N, {WIDTH}) = 3 x {SIDE} x {SIDE} per row"
        )
    return data.reshape(-1, 3, SIDE, SIDE)


def _chunks(files: list[Path], cap: int | None, grayscale: bool):
    left = cap
    for path in files:
        x = read_batch(path)
        for start in range(0, len(x), CHUNK):
            if left is not None and left <= 0:
                return
            c = x[start : start + (CHUNK if left is None else min(CHUNK, left))]
            yield luma_uint8(c, axis=1)[:, None] if grayscale else c
            left = None if left is None else left - len(c)


def source(spec: ImageNet64Data) -> Source:
    train, val = batch_files(spec.path)
    return Source(
        shape=(1 if spec.grayscale else 3, SIDE, SIDE),
        dtype=np.dtype(np.uint8),
        chunks={
            "train": lambda: _chunks(train, spec.n_train, spec.grayscale),
            "test": lambda: _chunks([val], spec.n_test, spec.grayscale),
        },
        source={"files": [str(p) for p in [*train, val]], **spec.model_dump(mode="json")},
    )
