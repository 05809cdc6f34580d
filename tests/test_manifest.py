"""The raw-data pointer DVC versions (data/manifest.py, `image-density manifest`, dvc.yaml's raw stage)."""

from __future__ import annotations

import json

import numpy as np

from image_density.atomic import sha256_file
from image_density.cli import main


def _params(tmp_path, array):
    params = tmp_path / "params.yaml"
    params.write_text(
        "datasets:\n"
        f"  mine: {{kind: array, path: {array}}}\n"
        "  field: {kind: gaussian_field, size: 8, n_train: 4, n_test: 2}\n"
    )
    return params


def test_manifest_names_user_files_by_content_and_generated_data_by_spec(tmp_path):
    array = tmp_path / "raw" / "faces.npy"
    array.parent.mkdir()
    np.save(array, np.zeros((10, 8, 8), np.uint8))
    params, out = _params(tmp_path, array), tmp_path / "results/raw/manifest.json"
    assert main(["manifest", "--config", str(params), "--out", str(out)]) == 0
    first = json.loads(out.read_text())["datasets"]
    assert first["mine"]["files"] == {
        "faces.npy": {"size": array.stat().st_size, "sha256": sha256_file(array)}
    }
    assert first["field"]["spec"]["size"] == 8 and "files" not in first["field"]
    text = out.read_text()
    assert main(["manifest", "--config", str(params), "--out", str(out)]) == 0
    assert out.read_text() == text  # same raw data, same bytes: DVC sees no change

    np.save(array, np.ones((10, 8, 8), np.uint8))  # the user's file replaced in place
    assert main(["manifest", "--config", str(params), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["datasets"]["mine"]["files"]["faces.npy"]["sha256"] == sha256_file(
        array
    )
    assert out.read_text() != text


def test_missing_raw_data_is_named(tmp_path, capsys):
    params = _params(tmp_path, tmp_path / "nowhere.npy")
    assert main(["manifest", "--config", str(params), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "nowhere.npy" in err and not (tmp_path / "m.json").exists()
