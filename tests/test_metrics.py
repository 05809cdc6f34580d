"""`image-density metrics`: the headline numbers of hand-made study tables, as strict JSON."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from image_density import cli
from image_density.studies.metrics import headline_metrics


def tables() -> dict[str, pd.DataFrame]:
    nll = pd.DataFrame({
        "dataset": "field", "model": ["energy", "gaussian", "gaussian"], "split": ["test", "train", "test"],
        "nll_bits_per_dim": [-1.50, -1.53, -1.51], "source": ["ours", "baseline", "baseline"],
        "exact_bits_per_dim": -1.52, "paper_bits_per_dim": np.nan,
    })  # fmt: skip
    denoising = pd.DataFrame({
        "dataset": ["field"] * 4 + ["imagenet64 (paper)"] * 2,
        "model": ["energy", "energy", "denoiser", "denoiser", "energy", "denoiser"],
        "source": ["ours"] * 4 + ["paper"] * 2,
        "psnr_in": [30.0, 0.0, 30.0, 0.0, 30.0, 30.0],
        "psnr_out": [35.0, 19.0, 34.5, 19.5, 35.67, 35.58],
    })  # fmt: skip
    generalization = pd.DataFrame({
        "dataset": "field", "n": [1, 1, 1, 100, 100, 100, 100_000], "source": ["ours"] * 6 + ["paper"],
        "images": ["A", "B", "test", "A", "B", "test", "A and B"],
        "mean_abs_delta_db": [10.0, 20.0, 5.0, 0.1, 0.3, 0.2, 0.11],
        "pearson_r": [np.nan, 0.5, 0.4, 0.99, 0.97, 0.98, 0.9987],
    })  # fmt: skip
    toy = pd.DataFrame({
        "method": ["closed_form", "closed_form", "single", "single", "dual", "dual"],
        "sigma": [1.0, 4.0] * 3, "relative_level_error": [0, 0, 0, 3.4, 0, -0.01],
        "shape_corr": [1, 1, 0.99, 0.97, 0.99, 0.99],
    })  # fmt: skip
    ms = pd.DataFrame({
        "dataset": "faces", "model": ["multiscale", "flat", "lowpass-only", "multiscale"],
        "rf": pd.array([5, 5, None, 5], dtype="Int64"), "sigma": [100.0, 100.0, 100.0, 20.0],
        "psnr_in": 8.1, "psnr_out": [23.0, 21.0, 20.0, 30.0],
    })  # fmt: skip
    ms_nll = pd.DataFrame({"dataset": "faces", "rf": [5, 9], "nll_bits_per_dim": [4.0, 3.8],
                           "exact_bits_per_dim": np.nan})  # fmt: skip
    return {"nll": nll, "denoising": denoising, "generalization": generalization, "toy": toy,
            "multiscale_denoising": ms, "multiscale_nll": ms_nll}  # fmt: skip


def test_headline_numbers():
    m = headline_metrics(tables())
    assert m["nll"]["field"]["energy_test_bits_per_dim"] == -1.50
    assert m["nll"]["field"]["energy_test_minus_exact_bits_per_dim"] == pytest.approx(0.02)
    den = m["denoising"]
    assert set(den) == {"field"}  # the paper's rows are references, not results
    assert den["field"]["energy_mean_gain_db"] == pytest.approx((5 + 19) / 2)
    assert den["field"]["energy_minus_denoiser_db"] == pytest.approx((0.5 - 0.5) / 2)
    gen = m["generalization"]
    assert set(gen) == {"n1", "n100"}  # the smallest and largest N of ours
    assert gen["n1"]["train_mean_abs_delta_db"] == 15.0 and gen["n100"]["test_pearson_r"] == 0.98
    assert m["toy"]["single"]["gap_error_bits_per_dim"] == 3.4
    assert m["multiscale_denoising"]["faces"] == {
        "sigma": 100.0, "multiscale-rf5": 23.0, "flat-rf5": 21.0, "lowpass-only": 20.0
    }  # fmt: skip
    assert m["multiscale_nll"]["faces"] == {"rf5_bits_per_dim": 4.0, "rf9_bits_per_dim": 3.8}
    assert list(headline_metrics({"toy": tables()["toy"]})) == ["toy"]
    with pytest.raises(ValueError, match="unknown tables"):
        headline_metrics({"nope": pd.DataFrame()})


def test_metrics_command_writes_strict_json(tmp_path, capsys):
    paths = {}
    for name, table in tables().items():
        paths[name] = tmp_path / f"{name}.csv"
        table.to_csv(paths[name], index=False)
    out = tmp_path / "out" / "metrics.json"
    args = ["metrics", "--nll", paths["nll"], "--generalization", paths["generalization"], "--denoising",
            "--multiscale-nll", paths["multiscale_nll"], "--out", out]  # fmt: skip
    assert cli.main([str(a) for a in args]) == 0
    text = out.read_text()
    assert "NaN" not in text
    metrics = json.loads(text)
    assert set(metrics) == {"nll", "generalization", "multiscale_nll", "sources"}  # --denoising: no table
    # the tables it read, each with its sha256: a later reader can tell exactly what was summarized
    assert metrics["sources"] == {str(paths[k]): hashlib.sha256(paths[k].read_bytes()).hexdigest()
                                  for k in ("nll", "generalization", "multiscale_nll")}  # fmt: skip
    assert metrics["generalization"]["n1"]["train_pearson_r"] == 0.5  # the NaN of A left out of the mean
    assert cli.main(["metrics", "--toy", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert "missing.csv" in capsys.readouterr().err
