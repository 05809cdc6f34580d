"""Running the real `snakemake` of this venv on the repository's Snakefile, for the workflow tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # snakemake, snakefmt and image-density live beside python
TINY = ROOT / "tests" / "params_tiny.yaml"


def env(first_on_path: Path | None = None) -> dict[str, str]:
    """The rules call `image-density` by name: put this venv first on PATH (jobs inherit it), after
    `first_on_path` if given (a stand-in `image-density`). The tracking jobs log to
    sqlite:///mlflow.db in the working directory, never to the user's $MLFLOW_TRACKING_URI."""
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    path = os.pathsep.join(str(p) for p in (first_on_path, BIN) if p)
    return {**base, "PATH": f"{path}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}


def snakemake(
    *args: str, workdir: Path, timeout: float = 120, cwd: Path = ROOT, first_on_path: Path | None = None
) -> subprocess.CompletedProcess:
    """`snakemake -s ROOT/Snakefile --directory WORKDIR ARGS` from `cwd` (the repo root, so that
    `--profile slurm` resolves as it does for a user); output in .stdout (stderr merged)."""
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env(first_on_path),
        timeout=timeout,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def report(res: subprocess.CompletedProcess, workdir: Path) -> str:
    """Snakemake's output plus every job log under WORKDIR/results/logs, for assertion messages."""
    logs = sorted((workdir / "results" / "logs").rglob("*.log"))
    return res.stdout + "".join(f"\n==> {p} <==\n{p.read_text(errors='replace')}" for p in logs)
