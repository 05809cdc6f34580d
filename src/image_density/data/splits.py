"""Splits and the seeds of generated data.

Generated data draw train and test from independent streams, in fixed-size blocks, so image i of a
split depends only on (seed, split, i): asking for more images appends, never reshuffles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

BLOCK = 1024  # images per generated block
_SPLIT_ID = {"train": 0, "test": 1}


def split_seed(seed: int, split: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, _SPLIT_ID[split]])


def blocks(n: int, make: Callable[[int], np.ndarray]) -> Iterator[np.ndarray]:
    """Call make(BLOCK) until n images are out; the last block is cut, never drawn shorter."""
    for start in range(0, n, BLOCK):
        yield make(BLOCK)[: min(BLOCK, n - start)]


def holdout_indices(n: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded choice of n_test of n items as test; both splits keep the original order."""
    if not 0 < n_test < n:
        raise ValueError(f"cannot hold out {n_test} of {n} images as test (need 0 < n_test < {n})")
    is_test = np.zeros(n, bool)
    is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def n_test_of(n: int, fraction: float) -> int:
    """Test images for a test fraction: at least 1, at most n - 1."""
    return min(max(1, round(fraction * n)), n - 1)


def generalization_split(n_train_total: int, n: int, which: str) -> np.ndarray:
    """Indices into the training set of model A (first n images) or B (last n images).

    A and B are disjoint for n <= n_train_total / 2, and nested in n (METHOD.md, generalization).
    """
    if which not in ("A", "B"):
        raise ValueError(f"which must be 'A' or 'B', got {which!r}")
    if n < 1 or 2 * n > n_train_total:
        raise ValueError(
            f"generalization split: n = {n} must be between 1 and half of the "
            f"{n_train_total} training images (A and B must be disjoint)"
        )
    return np.arange(n) if which == "A" else np.arange(n_train_total - n, n_train_total)
