"""A user array in a .npy or .npz file: (N, H, W) or (N, C, H, W), uint8 or float in [0, 1].

8-bit data (uint8, or float on the grid k/255 when `quantized: true`) are stored as uint8;
continuous data as float32 (uint8 input with `quantized: false` is scaled by 1/255).
"""

from __future__ import annotations

import zipfile

import numpy as np

from image_density.config import ArrayData
from image_density.data.splits import holdout_indices, n_test_of
from image_density.data.store import Source

CHUNK = 4096
MAX_CHANNELS = 4
GRID_TOL = 1e-3  # in units of 1/255: float data counted as 8-bit when this close to the grid


def _cannot_read(path, err: Exception) -> ValueError:
    return ValueError(f"array: cannot read {path} (not a valid .npy/.npz file): {err}")


def read_array(spec: ArrayData) -> np.ndarray:
    """The user's array, memory-mapped for .npy; (N, C, H, W)."""
    path = spec.path
    if not path.is_file():
        raise FileNotFoundError(f"array: file not found: {path}")
    try:
        loaded = np.load(path, mmap_mode="r")  # .npz files ignore mmap_mode
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise _cannot_read(path, err) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        if spec.key is not None:
            raise ValueError(f"array: `key: {spec.key}` given, but {path} is a .npy file (one array)")
        x = loaded
    else:
        with loaded as z:
            if spec.key is None and len(z.files) != 1:
                raise ValueError(
                    f"array: {path} holds {len(z.files)} arrays {z.files}; choose one with `key:`"
                )
            key = spec.key or z.files[0]
            if key not in z.files:
                raise ValueError(f"array: {path} has no array {key!r} (found: {z.files})")
            try:
                x = z[key]
            except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
                raise _cannot_read(path, err) from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"array: {path} has shape {x.shape}; expected (N, H, W) or (N, C, H, W)")
    if x.shape[1] > MAX_CHANNELS:
        raise ValueError(
            f"array: {path} has shape {x.shape}: {x.shape[1]} channels; expected channels first "
            f"(N, C, H, W) with C <= {MAX_CHANNELS} (transpose a channels-last array)"
        )
    if len(x) < 2:
        raise ValueError(f"array: {path} holds {len(x)} image(s), need at least 2 (one train, one test)")
    return x


def _check_values(x: np.ndarray, spec: ArrayData) -> bool:
    """Validate the values; return whether the data are 8-bit (quantized)."""
    if x.dtype == np.uint8:
        return spec.quantized is not False
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"array: {spec.path} has dtype {x.dtype}; expected uint8 or float in [0, 1]")
    lo, hi = float(np.min(x)), float(np.max(x))  # NaN propagates and fails the test below
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"array: {spec.path} has values in [{lo}, {hi}]; float data must lie in [0, 1]")
    if spec.quantized:
        off = max(
            float(np.max(np.abs(c * 255.0 - np.rint(c * 255.0))))
            for c in np.array_split(x, max(1, len(x) // CHUNK))
        )
        if off > GRID_TOL:
            raise ValueError(
                f"array: {spec.path} is float and `quantized: true`, but its values are not "
                f"multiples of 1/255 (off by up to {off:.3g}/255)"
            )
    return bool(spec.quantized)


def source(spec: ArrayData) -> Source:
    x = read_array(spec)
    quantized = _check_values(x, spec)
    train, test = holdout_indices(len(x), n_test_of(len(x), spec.test_fraction), spec.seed)
    idx = {"train": train[: spec.n_train], "test": test[: spec.n_test]}

    def convert(c: np.ndarray) -> np.ndarray:
        if quantized:
            return c if c.dtype == np.uint8 else np.rint(c * 255.0).astype(np.uint8)
        return (c / 255.0 if c.dtype == np.uint8 else c).astype(np.float32)

    def chunks(split: str):
        return lambda: (
            convert(np.asarray(x[idx[split][s : s + CHUNK]])) for s in range(0, len(idx[split]), CHUNK)
        )

    return Source(
        shape=x.shape[1:],
        dtype=np.dtype(np.uint8 if quantized else np.float32),
        chunks={s: chunks(s) for s in idx},
        source={
            "file": str(spec.path),
            "input_dtype": str(x.dtype),
            "input_shape": list(x.shape),
            **spec.model_dump(mode="json"),
        },
    )
