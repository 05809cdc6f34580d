"""`snakemake --profile slurm` against a real one-node SLURM cluster started for this test.

tests/slurm/start_slurm.sh installs slurm-wlm + munge (apt-get) when missing and starts munged,
slurmctld and slurmd; the fixture always stops exactly those daemons (by the PIDs the script
recorded). The profile is the repository's slurm/config.yaml, as a user types it, with command-line
overrides for this machine: no GPUs (`--set-resources`, which replaces the profile's per-rule
requests), small memory and time requests, fast first status check, kept SLURM logs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import torch
import yaml

from _workflow_helpers import BIN, ROOT, TINY, env, report, snakemake
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
    resolved = load_config(tmp_path / f"results/config/{TINY.stem}.resolved.yaml")
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


def _profile(tmp_path: Path, default: dict, **rules: dict) -> Path:
    """The repository's profile with this machine's overrides merged in per key (no GPUs, small
    requests): every other setting (retries, runtime by attempt, the signal) is the profile's own."""
    profile = yaml.safe_load((ROOT / "slurm/config.yaml").read_text())  # `<<: *gpu` merged
    del profile["configfile"]
    profile["default-resources"] |= default
    for rule, values in rules.items():
        profile["set-resources"][rule] |= values
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


@contextlib.contextmanager
def _requeued_jobs_start_at_once():
    """SLURM holds a requeued job about 2 minutes (BeginTime) before it may start again; on this
    one-node test cluster, a thread releases it at once, to keep the test within minutes."""
    done = threading.Event()

    def release():
        while not done.wait(1):
            pending = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], text=True,
                                     capture_output=True, timeout=30).stdout  # fmt: skip
            for job, reason in (line.split() for line in pending.splitlines() if line.strip()):
                if reason == "BeginTime":
                    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=30)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=60)


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_training_past_its_time_limit_checkpoints_and_resumes_identically(slurm_cluster, tmp_path):
    # one energy training of 1-3 minutes on 2 cores against a time limit of 1 minute (SLURM's
    # smallest). slurmctld checks limits every 30 s, so `--signal=TERM@1` arrives 29-59 s into the
    # job, which checkpoints, exits 75 and requeues itself (the profile's requeue: 1), with the same
    # limit, until the training is done. No periodic checkpoint before the end (ckpt_every = steps):
    # a resume can only start from a checkpoint a signal caused.
    raw = yaml.safe_load(TINY.read_text())
    steps = 1500
    raw["energy"]["train"] |= {"steps": steps, "ckpt_every": steps, "log_every": 100}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    name = raw["energy"]["datasets"][0]
    model = f"results/models/energy/{name}/model.pt"
    # meanwhile, the same training uninterrupted, without SLURM
    ref = tmp_path / "ref"
    ref.mkdir()
    cli = [str(BIN / "image-density")]
    reference = subprocess.Popen(
        f"{cli[0]} prepare --config {params} --dataset {name} && {cli[0]} train --config {params}"
        f" --model energy --dataset {name} --out out --no-progress",
        shell=True, cwd=ref, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    profile = _profile(
        tmp_path,
        {"mem_mb": 500, "runtime": 10},
        prepare_data={"mem_mb": 500, "cpus_per_task": 1, "runtime": 10},
        train={
            "gpu": 0,
            "mem_mb": 500,
            "runtime": 1,
            "slurm_extra": "'--signal=TERM@1'",
        },
    )
    with _requeued_jobs_start_at_once():
        res = snakemake(
            model,
            "--profile",
            str(profile),
            "--configfile",
            str(params),
            "--slurm-init-seconds-before-status-checks",
            "2",
            workdir=tmp_path / "run",
            timeout=900,
        )
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out
    assert res.returncode == 0, report(res, tmp_path / "run")
    # submitted once: the time limit's signal stopped it (exit 75) and SLURM requeued the same job,
    # which resumed from the checkpoint written then
    submitted = [line for line in res.stdout.splitlines() if "has been submitted with SLURM jobid" in line]
    (train_job,) = [line.split("SLURM jobid ")[1].split()[0] for line in submitted if "rule_train/" in line]
    job = subprocess.run(["scontrol", "show", "job", train_job], text=True, capture_output=True, timeout=30)
    restarts = int(job.stdout.split("Restarts=")[1].split()[0])
    assert restarts >= 1 and "JobState=COMPLETED" in job.stdout, job.stdout
    log = (tmp_path / f"run/results/logs/train/energy/{name}.log").read_text()  # the last run's
    resumed = int(log.rsplit("(resumed from ", 1)[1].split(")")[0])
    assert 0 < resumed < steps, log
    # bit for bit the weights of the uninterrupted training
    got, want = _weights(tmp_path / "run" / model), _weights(ref / "out/model.pt")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_training_that_failed_for_good_is_submitted_once(slurm_cluster, tmp_path):
    # a NaN (exit 3) under the profile: one submission, no resubmission, the workflow fails
    raw = yaml.safe_load(TINY.read_text())
    raw["energy"]["train"]["lr"] = 1e30  # the loss overflows within the first steps
    params = tmp_path / "nan.yaml"
    params.write_text(yaml.safe_dump(raw))
    name = raw["energy"]["datasets"][0]
    model = f"results/models/energy/{name}/model.pt"
    profile = _profile(
        tmp_path,
        {"mem_mb": 500, "runtime": 10},
        prepare_data={"mem_mb": 500, "cpus_per_task": 1, "runtime": 10},
        train={"gpu": 0, "mem_mb": 500, "runtime": 10},
    )
    res = snakemake(
        model, "--profile", str(profile), "--configfile", str(params),
        "--slurm-init-seconds-before-status-checks", "2", workdir=tmp_path / "run", timeout=400,
    )  # fmt: skip
    assert res.returncode != 0
    submitted = [line for line in res.stdout.splitlines() if "has been submitted with SLURM jobid" in line]
    (train_job,) = [line.split("SLURM jobid ")[1].split()[0] for line in submitted if "rule_train/" in line]
    job = subprocess.run(["scontrol", "show", "job", train_job], text=True, capture_output=True, timeout=30)
    assert "Restarts=0" in job.stdout and "JobState=FAILED" in job.stdout, job.stdout
    log = (tmp_path / f"run/results/logs/train/energy/{name}.log").read_text()
    assert "NonFiniteLoss" in log or "non-finite" in log.lower(), log


def test_snakemake_retries_of_a_training_that_failed_for_good_fail_at_once(tmp_path):
    # `snakemake --retries N` (not the profile's default): the retries of a NaN fail without training
    raw = yaml.safe_load(TINY.read_text())
    raw["energy"]["train"]["lr"] = 1e30
    params = tmp_path / "nan.yaml"
    params.write_text(yaml.safe_dump(raw))
    name = raw["energy"]["datasets"][0]
    model = f"results/models/energy/{name}/model.pt"
    res = snakemake("-c1", model, "--configfile", str(params), "--retries", "2", workdir=tmp_path)
    assert res.returncode != 0
    log = (tmp_path / f"results/logs/train/energy/{name}.log").read_text()  # the last attempt's
    assert "attempt 3 not run: attempt 1 failed with exit 3 (NonFiniteLoss" in log, log


def test_profile_scales_runtime_and_signals_trainings(monkeypatch):
    # runtimes grow with the attempt; trainings get their signal before the limit; partitions and
    # account come from the environment, CPU and GPU jobs each from their own variable
    profile = yaml.safe_load((ROOT / "slurm/config.yaml").read_text())
    resources = {"*": profile["default-resources"], **profile["set-resources"]}
    for rule, values in resources.items():
        runtime = str(values["runtime"])
        assert eval(runtime, {"attempt": 2}) > eval(runtime, {"attempt": 1}), rule
    for rule in ("train", "train_generalization", "train_scale"):
        assert "--signal=TERM@" in resources[rule]["slurm_extra"], rule
        assert resources[rule]["requeue"] == 1, rule  # an interrupted training requeues its job
    # ... and nothing else runs again: Snakemake resubmits no failed job (exit 2, 3 fail once)
    assert profile["retries"] == 0 and profile["slurm-requeue"] is True
    assert not any("requeue" in values for rule, values in resources.items() if not rule.startswith("train"))
    monkeypatch.setenv("IMAGE_DENSITY_CPU_PARTITION", "cpu")
    monkeypatch.setenv("IMAGE_DENSITY_GPU_PARTITION", "gpu")
    partition = {rule: eval(values.get("slurm_partition", "''")) for rule, values in resources.items()}
    assert partition["*"] == "cpu" and partition["train"] == partition["study_nll"] == "gpu"
    assert eval(resources["*"]["slurm_account"]) == ""  # unset: the plugin guesses
