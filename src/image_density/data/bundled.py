"""Images shipped inside scikit-image's wheel: photographs for natural patches, and LFW faces.

Files are read straight from skimage's data folder (never through `skimage.data.<name>()`, which
downloads with pooch for images not in the wheel), so nothing is fetched at run time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage
import skimage.data
from PIL import Image

from image_density.config import LfwFacesData, NaturalPatchesData
from image_density.data.images import luma_uint8
from image_density.data.splits import blocks, holdout_indices, split_seed
from image_density.data.store import Source

DATA_DIR = Path(skimage.data.__file__).parent

# name -> file in the wheel (skimage 0.26). `cat` is left out: it is the same picture as `chelsea`.
PHOTOGRAPHS = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "microaneurysms": "microaneurysms.png",
    "moon": "moon.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}
LFW_FILE = "lfw_subset.npy"
LFW_FACES = 100  # lfw_subset holds 100 faces, then 100 background crops (not faces)


def photograph(name: str) -> np.ndarray:
    """A bundled photograph as uint8 grey levels (H, W)."""
    if name not in PHOTOGRAPHS:
        raise ValueError(
            f"{name!r} is not a photograph bundled with scikit-image "
            f"(available offline: {sorted(PHOTOGRAPHS)})"
        )
    path = DATA_DIR / PHOTOGRAPHS[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"photograph {name!r} is not in this scikit-image install ({path}); "
            f"it would need a download, which this project never does"
        )
    with Image.open(path) as img:
        x = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img, dtype=np.uint8)
    return x if x.ndim == 2 else luma_uint8(x)


def patches(photos: list[np.ndarray], size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random size x size patches, uint8 (n, 1, size, size); each position of every photograph
    equally likely (a photograph is chosen in proportion to its number of positions)."""
    positions = np.array([(h - size + 1) * (w - size + 1) for h, w in (p.shape for p in photos)])
    which = rng.choice(len(photos), size=n, p=positions / positions.sum())
    out = np.empty((n, 1, size, size), np.uint8)
    for i, photo in enumerate(photos):
        rows = np.flatnonzero(which == i)
        h, w = photo.shape
        top = rng.integers(0, h - size + 1, rows.size)
        left = rng.integers(0, w - size + 1, rows.size)
        win = np.lib.stride_tricks.sliding_window_view(photo, (size, size))  # (h-s+1, w-s+1, s, s)
        out[rows, 0] = win[top, left]
    return out


def lfw_faces() -> np.ndarray:
    """The 100 LFW faces of scikit-image's lfw_subset, float in [0, 1] (100, 25, 25)."""
    path = DATA_DIR / LFW_FILE
    if not path.is_file():
        raise FileNotFoundError(f"LFW subset not in this scikit-image install: {path}")
    return np.load(path)[:LFW_FACES]


def natural_patches_source(spec: NaturalPatchesData) -> Source:
    names = {"train": spec.train_images, "test": spec.test_images}
    for split, listed in names.items():
        unknown = [n for n in listed if n not in PHOTOGRAPHS]
        if unknown:
            raise ValueError(
                f"natural_patches.{split}_images: {unknown} not photographs bundled with scikit-image "
                f"(available offline: {sorted(PHOTOGRAPHS)})"
            )
    photos = {split: [photograph(n) for n in listed] for split, listed in names.items()}
    small = [
        f"{n} {p.shape}"
        for split in names
        for n, p in zip(names[split], photos[split], strict=True)
        if min(p.shape) < spec.size
    ]
    if small:
        raise ValueError(f"natural_patches: size {spec.size} larger than the photographs {small}")

    def chunks(split: str, n: int):
        def gen():
            rng = np.random.default_rng(split_seed(spec.seed, split))
            return blocks(n, lambda b: patches(photos[split], spec.size, b, rng))

        return gen

    return Source(
        shape=(1, spec.size, spec.size),
        dtype=np.dtype(np.uint8),
        chunks={"train": chunks("train", spec.n_train), "test": chunks("test", spec.n_test)},
        source={
            "scikit_image": skimage.__version__,
            "files": {n: PHOTOGRAPHS[n] for n in spec.train_images + spec.test_images},
            **spec.model_dump(mode="json"),
        },
    )


def lfw_faces_source(spec: LfwFacesData) -> Source:
    faces = lfw_faces()  # (100, 25, 25)
    n, h, w = faces.shape
    if spec.resize == "crop" and spec.size > min(h, w):
        raise ValueError(
            f"lfw_faces: cannot crop {spec.size} x {spec.size} from {h} x {w} faces (use resize: resize)"
        )
    if spec.n_test >= n:
        raise ValueError(f"lfw_faces: n_test = {spec.n_test} leaves no training faces (there are {n})")
    x = np.clip(np.rint(faces * 255), 0, 255).astype(np.uint8)
    if spec.resize == "crop":
        top, left = (h - spec.size) // 2, (w - spec.size) // 2
        x = x[:, top : top + spec.size, left : left + spec.size]
    else:
        x = np.stack(
            [
                np.asarray(Image.fromarray(f).resize((spec.size, spec.size), Image.Resampling.BICUBIC))
                for f in x
            ]
        )
    idx = dict(zip(("train", "test"), holdout_indices(n, spec.n_test, spec.seed), strict=True))
    return Source(
        shape=(1, spec.size, spec.size),
        dtype=np.dtype(np.uint8),
        chunks={s: (lambda s=s: iter([x[idx[s], None]])) for s in idx},
        source={
            "scikit_image": skimage.__version__,
            "file": LFW_FILE,
            "faces": n,
            **spec.model_dump(mode="json"),
        },
    )
