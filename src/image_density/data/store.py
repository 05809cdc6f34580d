"""The on-disk form of a prepared dataset and its atomic writing.

A prepared dataset is a folder with `train.npy`, `test.npy` (N, C, H, W) — uint8 for 8-bit data,
float32 for continuous data — optional extra arrays (`eigenvalues.npy`, `modulation.npy`) and
`meta.json`, which holds the sha256 of every array file. Arrays are streamed chunk by chunk into
`.npy` files (paper-scale datasets do not fit in memory) and the whole folder appears at once by a
rename.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from image_density import atomic
from image_density.atomic import sha256_file

META = "meta.json"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Source:
    """What one dataset kind hands to `prepare_dataset`, after validating its inputs (and before
    writing anything): the image shape, uint8 (8-bit, quantized) or float32 (continuous), a chunk
    generator per split, provenance for meta.json, extra arrays and extra meta entries."""

    shape: tuple[int, int, int]  # (C, H, W)
    dtype: np.dtype
    chunks: dict[str, Callable[[], Iterator[np.ndarray]]]  # split -> (B, C, H, W) chunks
    source: dict
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


class NpyWriter:
    """Append (B, C, H, W) chunks to a `.npy` file whose length is only known at the end.

    numpy pads the header so that the leading dimension can grow in place (same header length for
    any N), so the header is written for N = 0 first and rewritten on close.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.n = 0
        self.lo, self.hi = np.inf, -np.inf
        self._f = open(path, "wb")
        self._header_len = self._write_header()

    def _write_header(self) -> int:
        self._f.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self._f, {**header, "shape": (self.n, *self.shape)})
        return self._f.tell()

    def append(self, x: np.ndarray) -> None:
        if x.shape[1:] != self.shape or x.dtype != self.dtype:
            raise ValueError(
                f"{self.path.name}: chunk {x.shape} {x.dtype}, expected (B, {self.shape}) {self.dtype}"
            )
        if len(x) == 0:
            return
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        self._f.write(np.ascontiguousarray(x).tobytes())
        self.n += len(x)

    def close(self) -> None:
        end = self._f.tell()
        if self._write_header() != self._header_len:  # never with numpy >= 1.24; checked anyway
            raise RuntimeError(f"{self.path}: npy header changed length")
        self._f.seek(end)
        self._f.close()


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A temp folder next to `out` that replaces `out` only if the block succeeds; one writer at a
    time (a second one is refused while the first holds `.<name>.lock` beside `out`)."""
    with atomic.exclusive(atomic.lock_beside(Path(out)), f"dataset folder {out}"):
        with atomic.replacing_dir(out) as tmp:
            yield tmp


def write_meta(folder: Path, meta: dict) -> None:
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class Prepared:
    """A prepared dataset, arrays memory-mapped (read-only)."""

    path: Path
    train: np.ndarray  # (N_train, C, H, W) np.memmap
    test: np.ndarray  # (N_test, C, H, W) np.memmap
    meta: dict
    # a generated Gaussian field (data/gaussian_field.py): the spectrum of its stationary part z, and
    # its modulation s where it is not periodic (x = mean + s z)
    eigenvalues: np.ndarray | None = field(default=None)  # (C, H, W)
    modulation: np.ndarray | None = field(default=None)  # (C, H, W)

    @property
    def quantized(self) -> bool:
        return bool(self.meta["quantized"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape"])

    @property
    def d(self) -> int:
        c, h, w = self.shape
        return c * h * w

    def split(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.train if split == "train" else self.test

    def images(self, split: str, idx=None) -> torch.Tensor:
        """Images of a split (all, or rows `idx`) as float32 (B, C, H, W); 8-bit data scaled to [0, 1]."""
        arr = self.split(split)
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        x = np.asarray(arr if idx is None else arr[idx])
        if x.ndim == 3:  # a single integer index
            x = x[None]
        x = torch.from_numpy(x.astype(np.float32))
        return x / 255.0 if self.quantized else x


def load_prepared(path: str | Path, verify: bool = True) -> Prepared:
    """Open a folder written by `prepare_dataset`; with `verify`, check every array's sha256."""
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"not a prepared dataset (no {META}): {path}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"prepared dataset {path}: {META} is not valid JSON ({err})") from None
    needed = ("sha256", "shape", "n_train", "n_test", "quantized")
    if not (isinstance(meta, dict) and all(k in meta for k in needed) and isinstance(meta["sha256"], dict)):
        raise ValueError(f"prepared dataset {path}: {META} lacks some of {list(needed)}; prepare it again")
    for fname, digest in meta["sha256"].items():
        f = path / fname
        if not f.is_file():
            raise FileNotFoundError(f"prepared dataset {path}: {fname} is missing")
        if verify and sha256_file(f) != digest:
            raise ValueError(
                f"prepared dataset {path}: {fname} changed since it was prepared "
                f"(sha256 differs from {META}); prepare it again"
            )
    arrays = {s: np.load(path / f"{s}.npy", mmap_mode="r") for s in SPLITS}
    for s, a in arrays.items():
        if a.shape[1:] != tuple(meta["shape"]) or len(a) != meta[f"n_{s}"]:
            raise ValueError(
                f"prepared dataset {path}: {s}.npy has shape {a.shape}, {META} says "
                f"({meta[f'n_{s}']}, *{meta['shape']})"
            )
    extra = {name: path / f"{name}.npy" for name in ("eigenvalues", "modulation")}
    extra = {name: np.load(f) if f.is_file() else None for name, f in extra.items()}
    return Prepared(path, arrays["train"], arrays["test"], meta, **extra)
