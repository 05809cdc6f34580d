"""Two CPU processes under torchrun (gloo): dual score loss (double backward), identical weights on
both ranks, one checkpoint writer, SIGTERM on one rank stops both and the rerun resumes exactly."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from image_density.checkpoint import load_verified
from image_density.train import EXIT_INTERRUPTED

HELPERS = Path(__file__).with_name("_train_helpers.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def torchrun(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(HELPERS.parent), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*TORCHRUN, str(HELPERS), str(run_dir), *args], env=env, capture_output=True, text=True, timeout=180
    )


def rank_weights(run_dir: Path, rank: int) -> dict:
    return torch.load(run_dir / f"rank{rank}.pt", weights_only=True)


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_agree_and_resume_exactly(tmp_path):
    full = torchrun(tmp_path / "full", "6")
    assert full.returncode == 0, full.stderr[-3000:]
    w0, w1 = rank_weights(tmp_path / "full", 0), rank_weights(tmp_path / "full", 1)
    assert same(w0, w1)  # although the ranks were initialised differently
    assert same(w0, load_verified(tmp_path / "full/model.pt", kind="model")["model"])

    cut = torchrun(tmp_path / "cut", "6", "3")  # rank 1 alone receives SIGTERM inside step 3
    # both ranks stop at step 3 after rank 0 wrote the checkpoint; torchrun itself exits with 1
    assert cut.returncode != 0 and re.search(rf"exitcode\s*:\s*{EXIT_INTERRUPTED}", cut.stderr), cut.stderr
    assert cut.stdout.count("stopped by signal at step 3") >= 1
    assert load_verified(tmp_path / "cut/checkpoint.pt")["step"] == 3

    again = torchrun(tmp_path / "cut", "6")
    assert again.returncode == 0, again.stderr[-3000:]
    assert same(rank_weights(tmp_path / "cut", 0), w0)
