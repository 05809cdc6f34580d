"""CelebA aligned faces (Liu et al. 2015), read from a user folder, as in the multi-scale paper:
grayscale, the aligned 178 x 218 image cropped to its centred 178 x 178 square, resized to 160 or 320.

The folder holds `img_align_celeba/*.jpg` and `list_eval_partition.txt` (lines "000001.jpg 0";
0 = train, 1 = validation, 2 = test). Partition 0 is our train split, 2 our test split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from image_density.config import CelebAData
from image_density.data.images import stack
from image_density.data.store import Source

PARTITION = "list_eval_partition.txt"
IMAGES = "img_align_celeba"
SPLIT_CODE = {"train": 0, "test": 2}


def partition(folder: Path) -> dict[str, list[Path]]:
    """split -> image paths in file order; every listed train/test image must exist."""
    part, img_dir = folder / PARTITION, folder / IMAGES
    for p in (folder, part, img_dir):
        if not p.exists():
            raise FileNotFoundError(f"celeba: not found: {p}")
    present = set(os.listdir(img_dir))
    out: dict[str, list[Path]] = {s: [] for s in SPLIT_CODE}
    for i, line in enumerate(part.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"celeba: {part} line {i}: expected '<image>.jpg <0|1|2>', got {line!r}")
        name, code = fields[0], int(fields[1])
        for split, c in SPLIT_CODE.items():
            if code == c:
                if name not in present:
                    raise FileNotFoundError(f"celeba: {part} line {i} names {name}, missing from {img_dir}")
                out[split].append(img_dir / name)
    for split, paths in out.items():
        if not paths:
            raise ValueError(f"celeba: {part} lists no {split} images (partition {SPLIT_CODE[split]})")
    return out


def source(spec: CelebAData) -> Source:
    paths = partition(spec.path)
    caps = {"train": spec.n_train, "test": spec.n_test}
    paths = {s: p[: caps[s]] for s, p in paths.items()}
    return Source(
        shape=(1, spec.size, spec.size),
        dtype=np.dtype(np.uint8),
        chunks={s: (lambda s=s: stack(paths[s], spec.size, grayscale=True)) for s in paths},
        source={
            "folder": str(spec.path),
            "crop": "centre square",
            "resize": "bicubic",
            **spec.model_dump(mode="json"),
        },
    )
