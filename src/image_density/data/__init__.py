"""Datasets: generation or reading, preparation into memory-mappable arrays, splits.

`prepare_dataset(spec, out, name)` writes a prepared folder; `load_prepared(path)` opens one.
"""

from image_density.data.gaussian_field import GaussianField
from image_density.data.prepare import prepare_dataset
from image_density.data.splits import generalization_split
from image_density.data.store import Prepared, load_prepared

__all__ = ["GaussianField", "Prepared", "generalization_split", "load_prepared", "prepare_dataset"]
