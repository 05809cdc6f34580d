"""The raw data behind the prepared datasets, as one JSON pointer that DVC versions (dvc.yaml's `raw`
stage, results/raw/manifest.json): per dataset its spec, and for data read from the user's files
(`path:` of imagenet64, celeba, array, image_folder) each file's size and sha256. Generated and
bundled data are determined by their spec (generator, seed, sizes, package version), so the spec is
their pointer. A changed raw file, moved folder or new generator setting changes the manifest, and
with it DVC's view of the `data` stage; the raw files themselves stay where the user keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from image_density import __version__
from image_density.atomic import sha256_file
from image_density.config import DataSpec


def raw_files(path: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "sha256"}} of a file or of every file under a folder, sorted."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"raw data {path}: no files there")
    return {
        (str(f.relative_to(path)) if path.is_dir() else f.name): {
            "size": f.stat().st_size,
            "sha256": sha256_file(f),
        }
        for f in files
    }


def raw_manifest(datasets: Mapping[str, DataSpec]) -> dict[str, Any]:
    """The pointer to every dataset's raw data (see the module's docstring), JSON-ready."""
    out: dict[str, Any] = {"image_density_version": __version__, "datasets": {}}
    for name, spec in datasets.items():
        entry: dict[str, Any] = {"spec": spec.model_dump(mode="json")}
        path = getattr(spec, "path", None)
        if path is not None:
            if not Path(path).exists():
                raise FileNotFoundError(f"datasets.{name}.path: {path} does not exist")
            entry["files"] = raw_files(Path(path))
        out["datasets"][name] = entry
    return out
