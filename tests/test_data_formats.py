"""Datasets read from user files, on tiny copies written in the real formats: ImageNet64 pickled
batches, CelebA (JPEGs + partition file), image folders, .npy/.npz arrays; every bad input is one
clear error naming the file or key, and leaves nothing under the output folder."""

import pickle

import numpy as np
import pytest
import yaml
from PIL import Image

from _data_helpers import leftovers, spec
from image_density import cli
from image_density.config import ConfigError, validate_config
from image_density.data import load_prepared, prepare_dataset


def prepare_fails(s, tmp_path, exc, *fragments):
    """prepare must raise `exc` with every fragment in its message and leave tmp_path/out empty."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(exc) as err:
        prepare_dataset(s, out / "ds", "ds")
    for f in fragments:
        assert str(f) in str(err.value)
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------ ImageNet64


def write_batch(path, n, rng, **replace):
    batch = {
        "data": rng.integers(0, 256, (n, 12288), dtype=np.uint8),
        "labels": list(rng.integers(1, 1001, n)),
    }
    batch.update(replace)
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    return batch["data"]


@pytest.fixture
def imagenet(tmp_path):
    """Train batches 1, 2, 10 (3, 2, 4 images: 10 must come after 2) and val_data (3 images)."""
    folder, rng = tmp_path / "imagenet64", np.random.default_rng(0)
    folder.mkdir()
    train = [write_batch(folder / f"train_data_batch_{i}", n, rng) for i, n in ((1, 3), (2, 2), (10, 4))]
    val = write_batch(folder / "val_data", 3, rng)
    return folder, np.concatenate(train), val


def test_imagenet64_colour_and_grey(tmp_path, imagenet):
    folder, train, val = imagenet
    p = load_prepared(prepare_dataset(spec(kind="imagenet64", path=folder), tmp_path / "c", "c"))
    assert p.shape == (3, 64, 64) and p.train.dtype == np.uint8 and p.quantized
    assert np.array_equal(p.train, train.reshape(-1, 3, 64, 64)) and np.array_equal(
        p.test, val.reshape(-1, 3, 64, 64)
    )
    rgb = train[4].reshape(3, 64, 64).transpose(1, 2, 0)  # channel-major rows: R plane, G plane, B plane
    assert np.array_equal(p.images("train", 4)[0].permute(1, 2, 0).numpy() * 255, rgb.astype(np.float32))
    g = load_prepared(
        prepare_dataset(
            spec(kind="imagenet64", path=folder, grayscale=True, n_train=4, n_test=2), tmp_path / "g", "g"
        )
    )
    assert g.shape == (1, 64, 64) and (len(g.train), len(g.test)) == (4, 2)
    r, gr, b = train[3].reshape(3, 64, 64).astype(int)
    assert (
        np.abs(g.train[3, 0] - (0.299 * r + 0.587 * gr + 0.114 * b)).max() <= 0.5 + 1e-9
    )  # 601 luma, rounded


def test_imagenet64_npz_release(tmp_path):
    folder, rng = tmp_path / "npz", np.random.default_rng(1)
    folder.mkdir()
    data = rng.integers(0, 256, (2, 12288), dtype=np.uint8)
    for name in ("train_data_batch_1.npz", "val_data.npz"):
        np.savez(folder / name, data=data, labels=np.arange(2))
    p = load_prepared(prepare_dataset(spec(kind="imagenet64", path=folder), tmp_path / "o", "o"))
    assert np.array_equal(p.test, data.reshape(2, 3, 64, 64))


def test_imagenet64_bad_inputs(tmp_path, imagenet):
    folder, _, _ = imagenet
    s = spec(kind="imagenet64", path=folder)
    prepare_fails(spec(kind="imagenet64", path=tmp_path / "nowhere"), tmp_path, FileNotFoundError, "nowhere")
    (tmp_path / "empty").mkdir()
    prepare_fails(
        spec(kind="imagenet64", path=tmp_path / "empty"),
        tmp_path,
        FileNotFoundError,
        "no train_data_batch_<i> files",
        "empty",
    )
    rng = np.random.default_rng(2)
    bad = folder / "train_data_batch_2"  # fails after batch 1 was written to the temp folder
    with open(bad, "wb") as f:
        pickle.dump({"labels": [1, 2]}, f)
    prepare_fails(s, tmp_path, ValueError, bad, "no key 'data'", "['labels']")
    write_batch(bad, 2, rng, data=np.zeros((2, 3072), np.uint8))
    prepare_fails(s, tmp_path, ValueError, bad, "(2, 3072)", "12288")
    write_batch(bad, 2, rng)
    bad.write_bytes(bad.read_bytes()[:5000])
    prepare_fails(s, tmp_path, ValueError, bad, "truncated")
    (folder / "val_data").unlink()
    prepare_fails(s, tmp_path, FileNotFoundError, "no val_data")


# ------------------------------------------------------------------------------------ CelebA


@pytest.fixture
def celeba(tmp_path):
    """6 aligned 178 x 218 JPEGs; partitions 0 0 0 1 2 2."""
    folder, rng = tmp_path / "celeba", np.random.default_rng(0)
    (folder / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i, part in enumerate([0, 0, 0, 1, 2, 2], 1):
        img = rng.integers(0, 256, (218 // 2, 178 // 2, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)
        Image.fromarray(img).save(folder / "img_align_celeba" / f"{i:06d}.jpg", quality=95)
        lines.append(f"{i:06d}.jpg {part}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_celeba(tmp_path, celeba):
    p = load_prepared(prepare_dataset(spec(kind="celeba", path=celeba, size=160), tmp_path / "c", "c"))
    assert p.shape == (1, 160, 160) and (len(p.train), len(p.test)) == (3, 2) and not p.quantized
    assert p.test.dtype == np.float32
    with Image.open(celeba / "img_align_celeba" / "000005.jpg") as im:  # first test image
        rgb = np.asarray(im, dtype=np.float64)  # (218, 178, 3)
    # the release's crop rows 29..188, columns 9..168 at native resolution, grey = mean of RGB / 255
    want = rgb[29:189, 9:169].mean(axis=2) / 255
    np.testing.assert_allclose(p.test[0, 0], want, rtol=0, atol=1e-6)
    capped = load_prepared(prepare_dataset(spec(kind="celeba", path=celeba, n_train=2), tmp_path / "d", "d"))
    assert capped.train.shape == (2, 1, 160, 160)


def test_celeba_is_not_upsampled(tmp_path, celeba):
    with pytest.raises(ConfigError, match=r"datasets\.d\.size = 320.*separate 512 x 512 source"):
        validate_config({"datasets": {"d": {"kind": "celeba", "path": str(celeba), "size": 320}}})


def test_celeba_bad_inputs(tmp_path, celeba):
    s = spec(kind="celeba", path=celeba)
    prepare_fails(spec(kind="celeba", path=tmp_path / "nowhere"), tmp_path, FileNotFoundError, "nowhere")
    bad = celeba / "img_align_celeba" / "000002.jpg"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated JPEG
    prepare_fails(s, tmp_path, ValueError, "cannot decode image", bad)
    bad.write_bytes(b"not a jpeg at all")
    prepare_fails(s, tmp_path, ValueError, "cannot decode image", bad)
    bad.unlink()
    prepare_fails(s, tmp_path, FileNotFoundError, "line 2 names 000002.jpg, missing")
    part = celeba / "list_eval_partition.txt"
    part.write_text("000001.jpg 0\n000005.jpg three\n")
    prepare_fails(s, tmp_path, ValueError, part, "line 2")
    part.unlink()
    prepare_fails(s, tmp_path, FileNotFoundError, "list_eval_partition.txt")


def test_celeba_refuses_images_that_are_not_aligned(tmp_path, celeba):
    Image.new("RGB", (178, 178)).save(celeba / "img_align_celeba" / "000002.jpg")
    prepare_fails(spec(kind="celeba", path=celeba), tmp_path, ValueError, "000002.jpg is 178 x 178")


# ------------------------------------------------------------------------------- image folders


def test_image_folder(tmp_path):
    folder, rng = tmp_path / "pics", np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    for i in range(9):
        h, w = (40, 60) if i % 2 else (50, 30)
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img.convert("L" if i % 3 == 0 else "RGB").save(
            folder / ("sub" if i < 3 else ".") / f"{i}.{'png' if i % 2 else 'JPG'}"
        )
    (folder / "notes.txt").write_text("not an image")
    p = load_prepared(
        prepare_dataset(
            spec(kind="image_folder", path=folder, size=16, test_fraction=0.3), tmp_path / "g", "g"
        )
    )
    assert p.shape == (1, 16, 16) and (len(p.train), len(p.test)) == (6, 3)
    c = load_prepared(
        prepare_dataset(
            spec(kind="image_folder", path=folder, size=8, grayscale=False, test_fraction=0.3),
            tmp_path / "c",
            "c",
        )
    )
    assert c.shape == (3, 8, 8) and c.meta["source"]["files"] == 9
    prepare_fails(
        spec(kind="image_folder", path=tmp_path / "nowhere", size=8), tmp_path, FileNotFoundError, "nowhere"
    )
    (tmp_path / "empty").mkdir()
    prepare_fails(
        spec(kind="image_folder", path=tmp_path / "empty", size=8),
        tmp_path,
        ValueError,
        "holds 0 PNG/JPEG images",
    )
    (folder / "sub" / "0.JPG").write_bytes(b"\xff\xd8\xff garbage")
    prepare_fails(
        spec(kind="image_folder", path=folder, size=8), tmp_path, ValueError, folder / "sub" / "0.JPG"
    )


# -------------------------------------------------------------------------------------- arrays


def test_arrays(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    p = load_prepared(
        prepare_dataset(spec(kind="array", path=tmp_path / "u8.npy", test_fraction=0.25), tmp_path / "a", "a")
    )
    assert (
        p.quantized
        and p.train.dtype == np.uint8
        and p.shape == (1, 8, 8)
        and (len(p.train), len(p.test)) == (15, 5)
    )
    assert sorted(map(bytes, np.concatenate([p.train, p.test])[:, 0])) == sorted(map(bytes, u8))
    cont = load_prepared(
        prepare_dataset(spec(kind="array", path=tmp_path / "u8.npy", quantized=False), tmp_path / "b", "b")
    )
    assert not cont.quantized and cont.train.dtype == np.float32 and cont.train.max() <= 1
    grid = rng.integers(0, 256, (10, 3, 4, 4)) / 255.0
    np.savez(tmp_path / "two.npz", x=grid, y=np.ones(3))
    q = load_prepared(
        prepare_dataset(
            spec(kind="array", path=tmp_path / "two.npz", key="x", quantized=True, n_train=4),
            tmp_path / "c",
            "c",
        )
    )
    assert q.train.dtype == np.uint8 and q.shape == (3, 4, 4) and len(q.train) == 4
    f = load_prepared(
        prepare_dataset(spec(kind="array", path=tmp_path / "two.npz", key="x"), tmp_path / "d", "d")
    )
    assert f.train.dtype == np.float32 and not f.quantized


@pytest.mark.parametrize(
    ("name", "array", "fields", "exc", "message"),
    [
        ("missing.npy", None, {}, FileNotFoundError, "file not found"),
        (
            "rank.npy",
            np.zeros((4, 8), np.uint8),
            {},
            ValueError,
            "has shape (4, 8); expected (N, H, W) or (N, C, H, W)",
        ),
        ("range.npy", np.full((4, 8, 8), 1.5), {}, ValueError, "has values in [1.5, 1.5]"),
        ("nan.npy", np.full((4, 8, 8), np.nan), {}, ValueError, "float data must lie in [0, 1]"),
        ("int.npy", np.zeros((4, 8, 8), np.int64), {}, ValueError, "dtype int64"),
        ("last.npy", np.zeros((4, 8, 8, 3), np.uint8), {}, ValueError, "channels first"),
        ("grid.npy", np.full((4, 8, 8), 0.3), {"quantized": True}, ValueError, "not multiples of 1/255"),
        (
            "two.npz",
            {"a": np.zeros((4, 8, 8)), "b": np.zeros(2)},
            {},
            ValueError,
            "holds 2 arrays ['a', 'b']; choose one",
        ),
        (
            "two.npz",
            {"a": np.zeros((4, 8, 8)), "b": np.zeros(2)},
            {"key": "c"},
            ValueError,
            "has no array 'c'",
        ),
        ("one.npy", np.zeros((4, 8, 8)), {"key": "c"}, ValueError, "is a .npy file"),
        ("text.npy", b"hello", {}, ValueError, "cannot read"),
    ],
)
def test_array_bad_inputs(tmp_path, name, array, fields, exc, message):
    path = tmp_path / name
    if isinstance(array, dict):
        np.savez(path, **array)
    elif isinstance(array, bytes):
        path.write_bytes(array)
    elif array is not None:
        np.save(path, array)
    prepare_fails(spec(kind="array", path=path, **fields), tmp_path, exc, path, message)


# ----------------------------------------------------------------------------------------- CLI


def test_cli_prepare(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((10, 8, 8), np.uint8))
    cfg = tmp_path / "params.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "results": str(tmp_path / "results"),
                "datasets": {
                    "good": {"kind": "array", "path": str(tmp_path / "x.npy")},
                    "bad": {"kind": "array", "path": str(tmp_path / "missing.npy")},
                },
            }
        )
    )
    assert cli.main(["prepare", "--config", str(cfg), "--dataset", "bad"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing.npy" in err and "file not found" in err
    assert not (tmp_path / "results" / "data" / "bad").exists()
    assert cli.main(["prepare", "--config", str(cfg), "--dataset", "good"]) == 0
    assert load_prepared(tmp_path / "results" / "data" / "good").meta["n_test"] == 1
    assert sorted(p.name for p in (tmp_path / "results" / "data").iterdir()) == ["good"]
