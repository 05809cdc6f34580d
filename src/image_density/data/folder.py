"""Any folder of PNG/JPEG images (searched recursively, sorted by path): centre square crop, resize,
grey or colour, a seeded test fraction."""

from __future__ import annotations

import numpy as np

from image_density.config import ImageFolderData
from image_density.data.images import IMAGE_SUFFIXES, stack
from image_density.data.splits import holdout_indices, n_test_of
from image_density.data.store import Source


def source(spec: ImageFolderData) -> Source:
    if not spec.path.is_dir():
        raise FileNotFoundError(f"image_folder: folder not found: {spec.path}")
    files = sorted(p for p in spec.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise ValueError(
            f"image_folder: {spec.path} holds {len(files)} PNG/JPEG images, need at least 2 "
            f"(one train, one test)"
        )
    train, test = holdout_indices(len(files), n_test_of(len(files), spec.test_fraction), spec.seed)
    paths = {
        "train": [files[i] for i in train[: spec.n_train]],
        "test": [files[i] for i in test[: spec.n_test]],
    }
    return Source(
        shape=(1 if spec.grayscale else 3, spec.size, spec.size),
        dtype=np.dtype(np.uint8),
        chunks={s: (lambda s=s: stack(paths[s], spec.size, spec.grayscale)) for s in paths},
        source={
            "folder": str(spec.path),
            "files": len(files),
            "crop": "centre square",
            "resize": "bicubic",
            **spec.model_dump(mode="json"),
        },
    )
