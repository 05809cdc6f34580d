"""image-density: learned image probability models (dual score matching, multi-scale wavelet models)."""

__version__ = "0.1.0"
