"""Two `image-density` processes on one output: the second is refused with a clear error while the
first runs, and the first ends with a complete, correct output (real processes).

The first process is frozen (SIGSTOP) in the middle of its work, while it holds its output, so the
second surely starts then; SIGCONT lets it finish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _train_helpers import TINY_UNET
from image_density import atomic, cli
from image_density.checkpoint import load_verified
from image_density.data import load_prepared

UNET = TINY_UNET
TRAIN = {"steps": 40, "batch": 4, "t_min": 1e-4, "t_max": 100.0, "ckpt_every": 10, "log_every": 1}


def _params(root: Path, n_train: int) -> Path:
    cfg = {
        "seed": 0,
        "results": str(root / "results"),
        "datasets": {"field": {"kind": "gaussian_field", "size": 32, "n_train": n_train, "n_test": 4}},
        "energy": {"datasets": ["field"], "unet": UNET, "train": TRAIN},
    }
    path = root / f"params-{n_train}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "image_density.cli", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _until(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"it ended first ({proc.returncode}): {proc.stdout.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def _second_is_refused(first: subprocess.Popen, *args) -> str:
    """Run a second command while `first` is frozen; it must fail, fast, naming the lock."""
    first.send_signal(signal.SIGSTOP)
    try:
        second = _cli(*args)
        try:
            out, _ = second.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate()
            raise AssertionError("the second process ran beside the first instead of being refused") from None
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, out
    return out


def test_a_second_prepare_of_one_dataset_is_refused_while_the_first_writes(tmp_path):
    out = tmp_path / "results/data/field"
    first = _cli("prepare", "--config", _params(tmp_path, 4000), "--dataset", "field")
    _until(lambda: any(out.parent.glob(".field.tmp-*/train.npy")), first)  # mid-write
    # another n_train: a mixed folder would hold one run's arrays beside the other's meta.json
    err = _second_is_refused(first, "prepare", "--config", _params(tmp_path, 8), "--dataset", "field")
    assert f"dataset folder {out}: another process holds {out.parent / '.field.lock'}" in err, err
    assert first.wait(timeout=300) == 0, first.stdout.read()
    data = load_prepared(out)  # checks every array against meta.json's sha256
    assert (data.meta["n_train"], len(data.train)) == (4000, 4000)
    assert sorted(p.name for p in out.parent.iterdir()) == ["field"]  # no temp folder, no lock left


def test_a_second_training_into_one_out_is_refused_while_the_first_trains(tmp_path):
    params = _params(tmp_path, 16)
    assert cli.main(["prepare", "--config", str(params), "--dataset", "field"]) == 0
    out = tmp_path / "model"

    def train(state: str) -> list:
        return ["train", "--config", params, "--model", "energy", "--dataset", "field", "--out", out,
                "--ckpt-dir", tmp_path / state, "--no-progress"]  # fmt: skip

    first = _cli(*train("state-a"))
    live = tmp_path / "state-a/checkpoint.metrics.jsonl"
    _until(lambda: live.exists() and live.read_text().count("\n") >= 2, first)  # training
    err = _second_is_refused(first, *train("state-b"))
    assert f"training output {out}: another process holds {tmp_path / '.model.lock'}" in err, err
    assert not (tmp_path / "state-b/checkpoint.pt").exists()  # refused before its first step
    assert first.wait(timeout=300) == 0, first.stdout.read()
    assert not (tmp_path / ".model.lock").exists()
    model = load_verified(out / "model.pt", kind="model")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert model["step"] == steps[-1] == TRAIN["steps"] and steps == list(range(1, TRAIN["steps"] + 1))


def test_a_held_lock_refuses_and_a_stale_lock_file_is_taken_over(tmp_path):
    lock = tmp_path / ".x.lock"
    lock.write_text("")  # left by a holder killed with -9: no process holds it
    with atomic.exclusive(lock, "output x"):
        with pytest.raises(atomic.Busy, match=f"output x: another process holds {lock}"):
            with atomic.exclusive(lock, "output x"):  # flock: another open file, as another process
                pass
    assert not lock.exists()  # removed by its last holder


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "table.csv"
    atomic.write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer died")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_a_folder_appears_whole_and_a_failed_one_leaves_the_old_folder(tmp_path):
    out = tmp_path / "d"
    with atomic.replacing_dir(out) as tmp:
        (tmp / "a").write_text("1")
        assert not out.exists()  # nothing at `out` until the block ends
    with pytest.raises(RuntimeError), atomic.replacing_dir(out) as tmp:
        (tmp / "b").write_text("half")
        raise RuntimeError("the writer died")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic.replacing_dir(out) as tmp:
        (tmp / "c").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["c"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp or old folder left
