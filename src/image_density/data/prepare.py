"""prepare_dataset: one dataset spec -> a folder of memory-mappable arrays + meta.json (store.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from image_density import __version__
from image_density.config import DataSpec
from image_density.data import arrays, bundled, celeba, dead_leaves, folder, gaussian_field, imagenet64
from image_density.data.store import SPLITS, NpyWriter, Source, atomic_dir, sha256_file, write_meta

SOURCES: dict[str, Callable[..., Source]] = {
    "gaussian_field": gaussian_field.source,
    "dead_leaves": dead_leaves.source,
    "natural_patches": bundled.natural_patches_source,
    "lfw_faces": bundled.lfw_faces_source,
    "array": arrays.source,
    "imagenet64": imagenet64.source,
    "celeba": celeba.source,
    "image_folder": folder.source,
}


def prepare_dataset(spec: DataSpec, out: Path, name: str) -> Path:
    """Write `train.npy`, `test.npy` (N, C, H, W), extra arrays and `meta.json` into `out`.

    Inputs are validated before anything is written; the folder is built next to `out` and renamed
    at the end, so a failure leaves `out` as it was.
    """
    out = Path(out)
    src = SOURCES[spec.kind](spec)
    quantized = src.dtype == np.uint8
    scale = 255.0 if quantized else 1.0
    with atomic_dir(out) as tmp:
        counts, lo, hi = {}, np.inf, -np.inf
        for split in SPLITS:
            w = NpyWriter(tmp / f"{split}.npy", src.shape, src.dtype)
            try:
                for x in src.chunks[split]():
                    w.append(x)
            finally:
                w.close()
            if w.n == 0:
                raise ValueError(f"dataset {name!r}: the {split} split is empty")
            counts[split], lo, hi = w.n, min(lo, w.lo), max(hi, w.hi)
        for fname, arr in src.extras.items():
            np.save(tmp / fname, arr)
        files = [f"{s}.npy" for s in SPLITS] + list(src.extras)
        write_meta(
            tmp,
            {
                "name": name,
                "kind": spec.kind,
                "shape": list(src.shape),
                "n_train": counts["train"],
                "n_test": counts["test"],
                "dtype": src.dtype.name,
                "quantized": bool(quantized),
                "value_range": [lo / scale, hi / scale],  # after scaling to images (8-bit: / 255)
                "source": src.source,
                "sha256": {f: sha256_file(tmp / f) for f in files},
                **src.meta,
                "image_density_version": __version__,
            },
        )
    return out
