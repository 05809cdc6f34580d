"""`snakemake --profile slurm` against a real one-node SLURM cluster started for this test.

tests/slurm/start_slurm.sh installs slurm-wlm + munge (apt-get) when missing and starts munged,
slurmctld and slurmd; the fixture always stops exactly those daemons (by the PIDs the script
recorded). The profile is the repository's slurm/config.yaml, as a user types it, with command-line
overrides for this machine: no GPUs (`--set-resources`, which replaces the profile's per-rule
requests), small memory and time requests, fast first status check, kept SLURM logs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from _workflow_helpers import ROOT, TINY, report, snakemake
from image_density.config import load_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

SCRIPTS = ROOT / "tests" / "slurm"


def _unavailable() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root: starts slurmctld/slurmd/munged and writes /etc/slurm/slurm.conf"
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        return "SLURM is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm-state")
    try:
        subprocess.run(
            [str(SCRIPTS / "start_slurm.sh"), str(state)],
            check=True,
            timeout=900,
            text=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as err:
        _stop(state)
        pytest.fail(f"start_slurm.sh failed:\n{err.stdout}{err.stderr}")
    try:
        yield state
    finally:
        _stop(state)


def _stop(state):
    try:
        subprocess.run([str(SCRIPTS / "stop_slurm.sh"), str(state)], timeout=120, check=False)
    finally:  # if the script could not, end the recorded daemons here (and only those)
        pids = state / "pids"
        for line in pids.read_text().splitlines() if pids.exists() else []:
            name, pid = line.split()
            comm = Path(f"/proc/{pid}/comm")
            if comm.exists() and comm.read_text().strip() == name:  # not a reused PID
                os.kill(int(pid), signal.SIGKILL)


def test_profile_runs_data_and_training_through_sbatch(slurm_cluster, tmp_path):
    cfg = load_config(TINY)
    name = cfg.energy.datasets[0]
    model = f"results/models/energy/{name}/model.pt"
    res = snakemake(
        "data",
        model,
        "--profile",
        "slurm",
        "--configfile",
        str(TINY),
        "--set-resources",
        "train:gpu=0",
        "--default-resources",
        "mem_mb=500",
        "runtime=10",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-keep-successful-logs",
        "--jobs",
        "4",
        workdir=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, report(res, tmp_path)

    for dataset in cfg.datasets:
        assert (tmp_path / "results/data" / dataset / "meta.json").is_file()
    assert (tmp_path / model).stat().st_size > 0
    # the job steps re-read the params without the profile: they must resolve the same ones
    resolved = load_config(tmp_path / "results/config/params.resolved.yaml")
    assert resolved == cfg

    # every job went through sbatch: one SLURM job id per job, a kept SLURM log per job, and
    # slurmctld reports each of them COMPLETED (MinJobAge keeps them visible to squeue)
    submitted = [line for line in res.stdout.splitlines() if "has been submitted with SLURM jobid" in line]
    assert len(submitted) == len(cfg.datasets) + 1, res.stdout
    job_ids = {line.split("SLURM jobid ")[1].split()[0] for line in submitted}
    logs = {p.stem for p in (tmp_path / ".snakemake/slurm_logs").rglob("*.log")}
    assert job_ids <= logs
    squeue = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i %T"], text=True, timeout=30, capture_output=True, check=True
    ).stdout
    states = dict(line.split() for line in squeue.splitlines())
    assert all(states.get(j) == "COMPLETED" for j in job_ids), squeue
