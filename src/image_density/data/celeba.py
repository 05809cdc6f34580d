"""CelebA aligned faces (Liu et al. 2015), read from a user folder, prepared as the LPM release
(`code/dataloader_func.py`): the aligned 218 x 178 image cropped to rows 29:-29 and columns 9:-9, its
native 160 x 160 centre (no resampling), and grey levels = the mean of R, G, B / 255 kept as float32
(continuous data: not on the 8-bit grid, so no +8 bits/dim in NLLs).

The folder holds `img_align_celeba/*.jpg` and `list_eval_partition.txt` (lines "000001.jpg 0";
0 = train, 1 = validation, 2 = test). Partition 0 is our train split, 2 our test split.
Paper 2's 320 x 320 set is not CelebA upsampled: the release scaled a separate 512 x 512 source by
0.625 (see config.CelebAData and params/paper.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from image_density.config import CelebAData
from image_density.data.images import open_image
from image_density.data.store import Source

PARTITION = "list_eval_partition.txt"
IMAGES = "img_align_celeba"
SPLIT_CODE = {"train": 0, "test": 2}
ALIGNED = (218, 178)  # height, width of every aligned CelebA image
CROP = (slice(29, -29), slice(9, -9))  # the release's crop: 160 x 160
CHUNK = 256


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


def load_face(path: Path) -> np.ndarray:
    """One aligned image -> float32 (1, 160, 160) in [0, 1]: the release's crop, mean of RGB / 255."""
    rgb = np.asarray(open_image(path).convert("RGB"))
    if rgb.shape[:2] != ALIGNED:
        raise ValueError(f"celeba: {path} is {rgb.shape[0]} x {rgb.shape[1]}, not an aligned 218 x 178 image")
    return (rgb[CROP].astype(np.float32) / 255).mean(axis=2, dtype=np.float32)[None]


def _stack(paths: list[Path]):
    for start in range(0, len(paths), CHUNK):
        yield np.stack([load_face(p) for p in paths[start : start + CHUNK]])


def source(spec: CelebAData) -> Source:
    paths = partition(spec.path)
    caps = {"train": spec.n_train, "test": spec.n_test}
    paths = {s: p[: caps[s]] for s, p in paths.items()}
    return Source(
        shape=(1, spec.size, spec.size),
        dtype=np.dtype(np.float32),
        chunks={s: (lambda s=s: _stack(paths[s])) for s in paths},
        source={
            "folder": str(spec.path),
            "crop": "[29:-29, 9:-9] (native 160 x 160)",
            "grey": "mean of RGB / 255, float32",
            **spec.model_dump(mode="json"),
        },
    )
