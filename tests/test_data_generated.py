"""Generated and bundled datasets: Gaussian-field ground truths, determinism, splits, the prepared
folder (meta.json, checksums, atomic writing)."""

import json
import math
import time

import numpy as np
import pytest
import torch

from _data_helpers import leftovers, spec
from image_density.data import GaussianField, generalization_split, load_prepared, prepare_dataset
from image_density.data.bundled import LFW_FACES, lfw_faces, photograph
from image_density.data.dead_leaves import render
from image_density.data.splits import holdout_indices


def field_spec(n=4, channels=1, **kw):
    return spec(
        **{
            "kind": "gaussian_field",
            "size": n,
            "channels": channels,
            "gamma": 2.5,
            "k0": 1.5,
            "std": 0.2,
            "n_train": 8,
            "n_test": 4,
            **kw,
        }
    )


def circulant_covariance(s: np.ndarray) -> np.ndarray:
    """Sigma[p, q] = 1/n^2 sum_k S(k) cos(2 pi k.(p - q) / n), built pixel pair by pixel pair. (n^2, n^2)"""
    n = s.shape[0]
    k = np.fft.fftfreq(n) * n
    ky, kx = np.meshgrid(k, k, indexing="ij")
    py, px = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    dy = py.reshape(-1)[:, None] - py.reshape(-1)[None]
    dx = px.reshape(-1)[:, None] - px.reshape(-1)[None]
    phase = 2 * np.pi * (ky.reshape(-1) * dy[..., None] + kx.reshape(-1) * dx[..., None]) / n
    return (np.cos(phase) * s.reshape(-1)).sum(-1) / n**2


@pytest.mark.parametrize("n", [5, 6])
def test_spectrum_is_the_covariance_spectrum_and_entropy_is_exact(n):
    f = GaussianField(field_spec(n, channels=2))
    s = f.eigenvalues[0]
    assert f.eigenvalues.shape == (2, n, n) and np.array_equal(f.eigenvalues[0], f.eigenvalues[1])
    k = np.fft.fftfreq(n) * n
    k_abs = np.sqrt(k[:, None] ** 2 + k[None] ** 2)
    ratio = s / (1 + (k_abs / 1.5) ** 2) ** (-2.5 / 2)
    assert np.allclose(ratio, ratio[0, 0])  # S(k) = c (1 + (|k|/k0)^2)^(-gamma/2)
    sigma = circulant_covariance(s)
    assert np.allclose(np.diag(sigma), 0.2**2)  # pixel std = std
    assert np.allclose(np.sort(np.linalg.eigvalsh(sigma)), np.sort(s.reshape(-1)))
    _, logdet = np.linalg.slogdet(2 * np.pi * np.e * sigma)
    assert f.entropy_nats() == pytest.approx(2 * 0.5 * logdet, rel=1e-10)  # two independent channels
    assert f.entropy_bits_per_dim() == pytest.approx(logdet / (2 * n * n * math.log(2)))  # d = 2 n^2


def test_samples_have_the_circulant_covariance():
    n, m = 4, 40_000
    f = GaussianField(field_spec(n, channels=2, mean=0.3))
    x = f.sample(m, torch.Generator().manual_seed(0)).numpy()  # (m, 2, n, n)
    assert x.dtype == np.float64 and x.shape == (m, 2, n, n)
    flat = x.reshape(m, -1)
    emp = np.cov(flat, rowvar=False)
    d = n * n
    true = np.zeros((2 * d, 2 * d))
    true[:d, :d] = true[d:, d:] = circulant_covariance(f.eigenvalues[0])  # channels independent
    se = 0.2**2 * math.sqrt(2 / m)  # standard error of a covariance entry
    assert np.abs(emp - true).max() < 6 * se
    assert np.abs(flat.mean(0) - 0.3).max() < 6 * 0.2 / math.sqrt(m)


def ramp(n: int, r: float) -> np.ndarray:
    """The std map of GaussianFieldData.std_ratio r, written out: r^(t/2) with t = (i + j) / (n - 1)
    from 0 (top-left) to 2 (bottom-right), scaled to mean square 1. (n^2,)"""
    s = np.array([[r ** ((i + j) / (2 * (n - 1))) for j in range(n)] for i in range(n)]).reshape(-1)
    return s / math.sqrt(np.mean(s**2))


def test_modulated_field_covariance_samples_and_entropy():
    """std_ratio r: Cov(x) = D C D with D = diag(s) (the samples' covariance, to sampling error), pixel
    std from std s_min to std s_max (non-stationary; RMS still std), entropy = 1/2 log det(2 pi e D C D)."""
    n, m, r = 4, 40_000, 3.0
    f = GaussianField(field_spec(n, channels=2, mean=0.3, std_ratio=r))
    s = ramp(n, r)
    np.testing.assert_allclose(f.modulation.reshape(2, -1), np.stack([s, s]), rtol=1e-12)
    true = s[:, None] * circulant_covariance(f.eigenvalues[0]) * s[None]  # (n^2, n^2) per channel
    assert np.diag(true).max() / np.diag(true).min() == pytest.approx(r**2)
    assert np.diag(true).mean() == pytest.approx(0.2**2)
    x = f.sample(m, torch.Generator().manual_seed(0)).numpy().reshape(m, 2, -1)
    se = np.diag(true).max() * math.sqrt(2 / m)
    for ch in range(2):
        assert np.abs(np.cov(x[:, ch], rowvar=False) - true).max() < 6 * se
    _, logdet = np.linalg.slogdet(2 * np.pi * np.e * true)
    assert f.entropy_nats() == pytest.approx(logdet, rel=1e-10)  # two channels, 1/2 log det each


def test_modulated_field_prepared_with_its_exact_model(tmp_path):
    """The prepared folder carries the modulation; studies' exact model (nll.exact_gaussian) is the dense
    N(mean, D C D) and the NLL table's exact column is the field's entropy; std_ratio 1 keeps the
    periodic folder as it was (no modulation.npy, DFT basis)."""
    from image_density.studies.nll import exact_bits_per_dim, exact_gaussian

    sp = field_spec(4, n_train=8, n_test=4, std_ratio=2.0, mean=0.4)
    p = load_prepared(prepare_dataset(sp, tmp_path / "m", "m"))
    assert np.array_equal(p.modulation[0].reshape(-1), ramp(4, 2.0))
    g = exact_gaussian(p)
    s = ramp(4, 2.0)
    cov = torch.from_numpy(s[:, None] * circulant_covariance(p.eigenvalues[0]) * s[None])
    x = p.images("test").double()
    ref = torch.distributions.MultivariateNormal(torch.full((16,), 0.4, dtype=torch.float64), cov)
    torch.testing.assert_close(g.nll_exact(x), -ref.log_prob(x.flatten(1)))
    assert exact_bits_per_dim(p) == pytest.approx(p.meta["entropy"]["bits_per_dim"], rel=1e-10)
    periodic = load_prepared(prepare_dataset(field_spec(4), tmp_path / "p", "p"))
    assert periodic.modulation is None and not (tmp_path / "p" / "modulation.npy").exists()
    assert exact_gaussian(periodic).eigenvectors is None


def test_gaussian_field_prepared(tmp_path):
    s = field_spec(8, n_train=1500, n_test=10, seed=3)
    p = load_prepared(prepare_dataset(s, tmp_path / "f", "f"))
    assert p.train.dtype == np.float32 and not p.quantized and p.shape == (1, 8, 8) and p.d == 64
    assert np.array_equal(p.eigenvalues, GaussianField(s).eigenvalues)
    ent = p.meta["entropy"]
    assert ent["nats"] == pytest.approx(GaussianField(s).entropy_nats())
    assert ent["bits_per_dim"] == pytest.approx(ent["nats"] / (64 * math.log(2)))
    assert p.meta["source"]["gamma"] == 2.5 and p.meta["source"]["seed"] == 3
    x = p.images("train")
    assert x.dtype == torch.float32 and x.shape == (1500, 1, 8, 8)
    assert abs(x.std().item() - 0.2) < 0.01  # not clipped, not quantized
    lo, hi = p.meta["value_range"]
    assert lo == pytest.approx(min(p.train.min(), p.test.min())) and hi == pytest.approx(
        max(p.train.max(), p.test.max())
    )


def test_generated_data_are_deterministic_and_prefix_stable(tmp_path):
    for kind in ("gaussian_field", "dead_leaves"):
        small = spec(kind=kind, size=8, n_train=5, n_test=3, seed=1)
        big = spec(kind=kind, size=8, n_train=1100, n_test=3, seed=1)  # crosses a generation block
        other = spec(kind=kind, size=8, n_train=5, n_test=3, seed=2)
        a = load_prepared(prepare_dataset(small, tmp_path / f"{kind}a", "a"))
        b = load_prepared(prepare_dataset(small, tmp_path / f"{kind}b", "b"))
        c = load_prepared(prepare_dataset(big, tmp_path / f"{kind}c", "c"))
        o = load_prepared(prepare_dataset(other, tmp_path / f"{kind}o", "o"))
        assert a.meta["sha256"] == b.meta["sha256"]
        assert np.array_equal(a.train, c.train[:5]) and np.array_equal(a.test, c.test)
        assert not np.array_equal(a.train, o.train)
        assert not np.array_equal(a.train[:3], a.test)  # train and test are different streams


def test_dead_leaves_disks_and_speed():
    s = spec(kind="dead_leaves", size=16, r_min=1.0, r_max=12.0, alpha=3.0, n_train=1, n_test=1)
    start = time.perf_counter()
    x = render(s, 4096, np.random.default_rng(0))
    assert time.perf_counter() - start < 15  # ~0.5 s here: vectorised, not per disk
    assert x.shape == (4096, 1, 16, 16) and x.dtype == np.uint8
    assert abs(x.mean() - 127.5) < 3  # uniform grey levels
    # occlusion makes flat regions: far fewer distinct levels than pixels, and equal neighbours common
    assert np.mean([len(np.unique(im)) for im in x[:100]]) < 64
    assert np.mean(x[..., 1:] == x[..., :-1]) > 0.5
    big = render(
        spec(kind="dead_leaves", size=16, r_min=8.0, r_max=12.0, n_train=1, n_test=1),
        100,
        np.random.default_rng(0),
    )
    assert np.mean([len(np.unique(im)) for im in big]) < np.mean([len(np.unique(im)) for im in x[:100]])


def test_natural_patches_keep_photographs_apart(tmp_path):
    s = spec(
        kind="natural_patches", size=8, n_train=20, n_test=20, train_images=["camera"], test_images=["coins"]
    )
    p = load_prepared(prepare_dataset(s, tmp_path / "p", "p"))
    assert p.train.dtype == np.uint8 and p.quantized and p.shape == (1, 8, 8)
    for split, name in (("train", "camera"), ("test", "coins")):
        win = np.lib.stride_tricks.sliding_window_view(photograph(name), (8, 8))
        for patch in p.split(split)[:5, 0]:
            assert (win == patch).all((2, 3)).any(), f"{split} patch not cut from {name}"
    assert p.meta["source"]["files"] == {"camera": "camera.png", "coins": "coins.png"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"train_images": ["eagle"]}, "natural_patches.train_images: ['eagle'] not photographs bundled"),
        ({"train_images": ["cat"]}, "natural_patches.train_images: ['cat'] not photographs bundled"),
        ({"size": 180}, "larger than the photographs ['text (172, 448)']"),
    ],
)
def test_natural_patches_bad_input(tmp_path, fields, message):
    s = spec(
        **{"kind": "natural_patches", "size": 8, "n_train": 2, "n_test": 2, "test_images": ["text"], **fields}
    )
    with pytest.raises(ValueError) as err:
        prepare_dataset(s, tmp_path / "out" / "p", "p")
    assert message in str(err.value)
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("resize", ["crop", "resize"])
def test_lfw_faces(tmp_path, resize):
    size = 25 if resize == "crop" else 16
    p = load_prepared(
        prepare_dataset(spec(kind="lfw_faces", size=size, resize=resize, n_test=30), tmp_path / "f", "f")
    )
    assert (len(p.train), len(p.test)) == (LFW_FACES - 30, 30) and p.shape == (1, size, size)
    assert p.train.dtype == np.uint8
    if resize == "crop":  # full size: the faces themselves, each once, in train or test
        faces = np.rint(lfw_faces() * 255).astype(np.uint8)
        both = np.concatenate([p.train[:, 0], p.test[:, 0]])
        assert sorted(map(bytes, both)) == sorted(map(bytes, faces))
    with pytest.raises(ValueError, match="cannot crop 32 x 32 from 25 x 25"):
        prepare_dataset(spec(kind="lfw_faces", size=32), tmp_path / "g", "g")


def test_splits():
    for n in (1, 10, 50):
        a, b = generalization_split(100, n, "A"), generalization_split(100, n, "B")
        assert len(a) == len(b) == n and not set(a) & set(b)
        assert set(a) <= set(generalization_split(100, 50, "A")) and set(b) <= set(
            generalization_split(100, 50, "B")
        )
    assert list(generalization_split(100, 2, "B")) == [98, 99]
    with pytest.raises(ValueError, match="n = 51 must be between 1 and half of the 100 training images"):
        generalization_split(100, 51, "A")
    with pytest.raises(ValueError, match="which must be 'A' or 'B'"):
        generalization_split(100, 5, "C")
    train, test = holdout_indices(10, 3, seed=0)
    assert len(test) == 3 and sorted([*train, *test]) == list(range(10)) and list(train) == sorted(train)


def test_load_prepared_checks_the_files(tmp_path):
    out = prepare_dataset(spec(kind="dead_leaves", size=8, n_train=6, n_test=2), tmp_path / "d", "d")
    p = load_prepared(out)
    x = p.images("train", np.array([4, 1]))
    assert x.shape == (2, 1, 8, 8) and x.dtype == torch.float32
    assert torch.equal(x * 255, torch.from_numpy(p.train[[4, 1]].astype(np.float32)))
    assert p.images("test", 0).shape == (1, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    meta = json.loads((out / "meta.json").read_text())
    assert {k: meta[k] for k in ("name", "kind", "shape", "n_train", "n_test", "dtype", "quantized")} == {
        "name": "d",
        "kind": "dead_leaves",
        "shape": [1, 8, 8],
        "n_train": 6,
        "n_test": 2,
        "dtype": "uint8",
        "quantized": True,
    }
    with open(out / "train.npy", "r+b") as f:  # flip one pixel
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(ValueError, match="train.npy changed since it was prepared"):
        load_prepared(out)
    load_prepared(out, verify=False)
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        load_prepared(tmp_path)


def test_prepare_replaces_atomically(tmp_path):
    out = tmp_path / "d"
    prepare_dataset(spec(kind="dead_leaves", size=8, n_train=6, n_test=2), out, "d")
    before = (out / "meta.json").read_text()
    with pytest.raises(ValueError):  # a bad spec: the old folder stays as it was
        prepare_dataset(
            spec(kind="natural_patches", size=8, n_train=2, n_test=2, train_images=["nope"]), out, "d"
        )
    assert (out / "meta.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    prepare_dataset(spec(kind="dead_leaves", size=8, n_train=3, n_test=2), out, "d")
    assert load_prepared(out).meta["n_train"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp or old folders left


def test_anisotropic_field_stretches_the_spectrum_along_x():
    """aspect a: S(k_y, k_x) = S_iso(k_y, k_x / a); k_x = 3 at a = 3 has the power of k_y = 1; rows
    and columns differ, and mean(S) stays the pixel variance."""
    from image_density.data.gaussian_field import spectrum

    s = spectrum(16, gamma=2.0, k0=2.0, std=0.1, aspect=3.0)
    assert s[0, 3] == pytest.approx(s[1, 0], rel=1e-12)
    assert s[0, 3] > s[3, 0]
    assert s.mean() == pytest.approx(0.01, rel=1e-12)
    np.testing.assert_allclose(s, np.roll(np.flip(s, (0, 1)), (1, 1), (0, 1)))  # S(k) = S(-k): real field
