"""Helpers of the data tests: a dataset spec from keywords, and the files a failed prepare may leave."""

from __future__ import annotations

from pathlib import Path

from pydantic import TypeAdapter

from image_density.config import DataSpec

_SPEC = TypeAdapter(DataSpec)


def spec(**fields):
    """A validated dataset spec, e.g. spec(kind="dead_leaves", size=8, n_train=4, n_test=2)."""
    return _SPEC.validate_python(fields)


def leftovers(folder: Path) -> list[str]:
    """Everything under `folder` (a failed prepare must leave it empty)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
