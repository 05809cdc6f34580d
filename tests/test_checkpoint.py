"""Checkpoint files: checksum, atomic writes, truncated/tampered/foreign files, fallback to prev."""

import warnings

import pytest
import torch

from _train_helpers import SPEC, dual_score, fresh_model, make_images, source, tiny_spec
from image_density import checkpoint as ck
from image_density.checkpoint import (
    CheckpointError,
    check_compatible,
    load_latest,
    load_verified,
    payload_sha256,
    save_atomic,
    save_checkpoint,
)
from image_density.train import train


def state(step: int) -> dict:
    torch.manual_seed(step)
    return {
        "step": step,
        "model": {"w": torch.randn(3, 2), "n": torch.tensor(step)},
        "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "fused": None}]},
        "model_spec": SPEC,
        "meta": {"data_sha256": "abc"},
    }


def test_roundtrip_is_a_plain_weights_only_torch_file(tmp_path):
    path = save_atomic(state(1), tmp_path / "x.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == ck.FORMAT and len(raw["sha256"]) == 64
    back = load_verified(path)
    assert back["step"] == 1 and torch.equal(back["model"]["w"], state(1)["model"]["w"])
    assert not path.with_name("x.pt.tmp").exists()


def test_checksum_is_canonical_and_sensitive():
    a = state(1)
    assert payload_sha256(a) == payload_sha256({k: a[k] for k in reversed(list(a))})
    b = state(1)
    b["model"]["w"][0, 0] += 1e-7
    assert payload_sha256(a) != payload_sha256(b)
    assert payload_sha256({"x": 1}) != payload_sha256({"x": 1.0}) != payload_sha256({"x": "1"})


def test_truncated_file_is_refused_naming_it(tmp_path):
    path = save_atomic(state(1), tmp_path / "x.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"x\.pt: unreadable, truncated"):
        load_verified(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"x\.pt"):
        load_verified(path)


def test_tampered_file_is_refused(tmp_path):
    path = save_atomic(state(1), tmp_path / "x.pt")
    raw = torch.load(path, weights_only=True)
    raw["model"]["w"][1, 1] = 42.0
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"x\.pt: checksum mismatch"):
        load_verified(path)
    torch.save({"model": {}}, path)  # a torch file of someone else
    with pytest.raises(CheckpointError, match="not a file written by image-density"):
        load_verified(path)


def test_wrong_kind_and_missing_file(tmp_path):
    path = save_checkpoint(state(1), tmp_path)
    with pytest.raises(CheckpointError, match="expected a 'model' file"):
        load_verified(path, kind="model")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_verified(tmp_path / "nope.pt")


def test_crash_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(state(1), tmp_path)
    save_checkpoint(state(2), tmp_path)
    real_save = torch.save

    def dying_save(obj, f):
        real_save(obj, f)
        f.truncate(100)  # half a file on disk, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(state(3), tmp_path)
    monkeypatch.undo()
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
    # a hard kill leaves the temp file behind: garbage there is never read
    (tmp_path / "checkpoint.pt.tmp").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        payload, path = load_latest(tmp_path)
    assert payload["step"] == 2 and path.name == "checkpoint.pt"
    assert load_verified(tmp_path / "checkpoint.prev.pt")["step"] == 1
    save_checkpoint(state(3), tmp_path)  # the next save overwrites the stale temp file
    assert load_latest(tmp_path)[0]["step"] == 3 and not (tmp_path / "checkpoint.pt.tmp").exists()


def test_bad_latest_falls_back_to_previous_with_warning(tmp_path):
    save_checkpoint(state(1), tmp_path)
    save_checkpoint(state(2), tmp_path)
    latest = tmp_path / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:-50])
    with pytest.warns(UserWarning, match="checkpoint.pt: unreadable.*previous checkpoint"):
        payload, path = load_latest(tmp_path)
    assert payload["step"] == 1 and path.name == "checkpoint.prev.pt"
    latest.unlink()  # a crash between the two renames of a save
    with pytest.warns(UserWarning, match="missing"):
        assert load_latest(tmp_path)[0]["step"] == 1
    (tmp_path / "checkpoint.prev.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_latest(tmp_path)
    assert load_latest(tmp_path / "empty") is None


def test_foreign_architecture_or_data_is_refused(tmp_path):
    path = save_checkpoint(state(1), tmp_path)
    payload = load_verified(path)
    check_compatible(payload, path, SPEC, "abc")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: written for another network \(width"):
        check_compatible(payload, path, {**SPEC, "width": 8}, "abc")
    with pytest.raises(CheckpointError, match="trained on data"):
        check_compatible(payload, path, SPEC, "abd")


def test_training_falls_back_to_previous_checkpoint(tmp_path):
    images = make_images()
    train(fresh_model(), dual_score, source(images), tiny_spec(steps=4), tmp_path, SPEC, progress=False)
    (tmp_path / "checkpoint.pt").write_bytes(b"\0" * 10)  # the step-4 checkpoint is corrupted
    with pytest.warns(UserWarning, match="previous checkpoint"):
        res = train(
            fresh_model(), dual_score, source(images), tiny_spec(steps=6), tmp_path, SPEC, progress=False
        )
    assert res.resumed_from == 2 and res.step == 6


def test_a_corrupted_checkpoint_never_displaces_the_last_good_one(tmp_path):
    """Resuming past a bad checkpoint.pt, the next save must not rotate the bad file into prev."""
    images = make_images()
    spec = tiny_spec(steps=2, ckpt_every=1)
    train(fresh_model(), dual_score, source(images), spec, tmp_path, SPEC, progress=False)
    latest, prev = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    latest.write_bytes(latest.read_bytes()[:-50])  # step 2 truncated; prev holds step 1
    with pytest.warns(UserWarning, match="previous checkpoint"):
        res = train(fresh_model(), dual_score, source(images), spec, tmp_path, SPEC, progress=False)
    assert (res.resumed_from, res.step) == (1, 2)
    # two good checkpoints again: the new step 2, and step 1 kept as prev (not the truncated file)
    assert load_verified(latest)["step"] == 2 and load_verified(prev)["step"] == 1
    save_checkpoint(state(3), tmp_path)  # the normal rotation resumes from here
    assert load_verified(prev)["step"] == 2


def test_model_file_rebuilds_the_network_or_names_the_mismatch(tmp_path):
    from image_density.checkpoint import load_model, save_model
    from image_density.models import build_model

    spec = {"arch": "denoiser_unet", "channels": 1, "widths": [2], "mid_width": 2, "convs_per_block": 1,
            "emb_features": 2, "emb_dim": 2}  # fmt: skip
    torch.manual_seed(0)
    net = build_model(spec)
    save_model(tmp_path / "model.pt", weights=net.state_dict(), model_spec=spec, step=7)
    back, info = load_model(tmp_path / "model.pt")
    theirs = back.state_dict()
    assert info["step"] == 7 and all(torch.equal(v, theirs[k]) for k, v in net.state_dict().items())
    save_model(tmp_path / "bad.pt", weights=net.state_dict(), model_spec={**spec, "widths": [3]})
    with pytest.raises(CheckpointError, match=r"bad\.pt: weights do not fit model_spec"):
        load_model(tmp_path / "bad.pt")


def test_a_checkpoint_of_the_first_unet_layout_is_refused_naming_the_option_and_the_layers(tmp_path):
    """Specs written before `layout` existed lack the key (the network's default, "separate", built
    them): resuming under the release layout names the option; forcing the weights into the release
    network names the layers that do not fit, never a partial load."""
    from image_density.checkpoint import load_model, save_model
    from image_density.models import build_model

    old = {"arch": "energy_unet", "channels": 1, "widths": [4], "mid_width": 4, "convs_per_block": 2,
           "emb_features": 2, "emb_dim": 2, "energy_form": "pure"}  # fmt: skip
    new = {**old, "layout": "release", "embedding": "t", "norm": "release", "init": "release"}
    path = save_checkpoint({**state(1), "model_spec": old}, tmp_path)
    with pytest.raises(CheckpointError, match=r"layout '\(absent\)' -> 'release'"):
        check_compatible(load_verified(path), path, new, None)
    save_model(tmp_path / "old.pt", weights=build_model(old).state_dict(), model_spec=new)
    with pytest.raises(CheckpointError, match=r"(?s)old\.pt: weights do not fit.*net\.down\.0\.weight"):
        load_model(tmp_path / "old.pt")
