"""jobs.JOBS is the one declaration of what each job reads: the tiny pipeline runs with every
`image-density` command behind a recording config (tests/_reads.py), and each command must read
only keys its job declares; then editing a declared key must rerun exactly the jobs declaring it
(Snakemake's params trigger, derived from the same declaration)."""

import json
import os
import re
import stat
import sys

import pytest

from _workflow_helpers import ROOT, TINY, report, snakemake
from image_density import jobs

# commands that read no params (figure, collect, metrics) or log them whole (track)
UNTRACKED = {"figure", "collect", "metrics", "track"}
SIMPLE = {"prepare": "prepare_data", "nll": "nll", "denoise": "multiscale_denoise",
          "sample": "multiscale_sample", "super-resolve": "multiscale_super_resolve",
          "multiscale-nll": "multiscale_nll"}  # fmt: skip


def job_of(argv: list[str]) -> tuple[str, str | None]:
    """The job kind of one recorded command line, and its --dataset."""
    opt = dict(zip(argv, argv[1:], strict=False))
    command, dataset = argv[0], opt.get("--dataset")
    if command in ("train", "train-scale"):
        return jobs.training_job(command, opt.get("--model", "denoiser"), opt.get("--subset")), dataset
    if command == "study":
        return f"study_{argv[1]}", dataset
    return SIMPLE[command], dataset


def rule_of(job: str) -> str:
    return "train_scale" if job.startswith("train_scale_") else job


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The tiny pipeline, run once with every command's reads recorded."""
    root = tmp_path_factory.mktemp("jobs")
    stand_in = root / "bin" / "image-density"
    stand_in.parent.mkdir()
    stand_in.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT / "tests/_reads.py"} "$@"\n')
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    work, reads = root / "work", root / "reads"
    work.mkdir()
    os.environ["IMAGE_DENSITY_RECORD_READS"] = str(reads)
    try:
        res = snakemake("-c2", "all", "--configfile", str(TINY), workdir=work, timeout=900,
                        first_on_path=stand_in.parent)  # fmt: skip
    finally:
        del os.environ["IMAGE_DENSITY_RECORD_READS"]
    assert res.returncode == 0, report(res, work)
    return work, [json.loads(p.read_text()) for p in sorted(reads.glob("*.json"))]


def test_every_command_reads_only_what_its_job_declares(recorded):
    _, records = recorded
    seen, errors = set(), []
    for record in records:
        argv = record["argv"]
        if argv[0] in UNTRACKED:
            continue
        job, dataset = job_of(argv)
        seen.add(job)
        extra = jobs.undeclared(job, [tuple(k) for k in record["reads"]], dataset)
        if extra:
            errors.append(f"{job} ({' '.join(argv[:2])}) reads undeclared {['.'.join(k) for k in extra]}")
    assert not errors, "\n".join(errors)
    assert seen == set(jobs.JOBS), f"jobs never run by the tiny pipeline: {set(jobs.JOBS) - seen}"


# one edit per kind of setting, as --config takes it: (config override, the key path it changes)
EDITS = [
    ("studies={'batch': 32}", ("studies", "batch")),
    ("seed=5", ("seed",)),
    ("energy={'likelihood': {'logz_draws': 3}}", ("energy", "likelihood", "logz_draws")),
    ("multiscale={'sampler': {'max_iter': 3}}", ("multiscale", "sampler", "max_iter")),
    ("multiscale={'eval_images': 3}", ("multiscale", "eval_images")),
    ("multiscale={'cnn': {'channels': 6}}", ("multiscale", "cnn", "channels")),
]


@pytest.mark.parametrize(("override", "key"), EDITS, ids=[e[0].split("=")[0] for e in EDITS])
def test_editing_a_key_reruns_exactly_the_jobs_declaring_it(recorded, override, key):
    work, _ = recorded
    res = snakemake("-n", "all", "--configfile", str(TINY), "--config", override, workdir=work)
    assert res.returncode == 0, res.stdout
    found = re.search(r"params have changed since last execution:\n\s+(.+)\n", res.stdout)
    rerun = set(found.group(1).split(", ")) if found else set()
    declaring = {
        rule_of(job)
        for job in jobs.JOBS
        if any(k[: len(key)] == key or key[: len(k)] == k for k in jobs.keys(job, "field8"))
    }
    assert rerun == declaring, f"{override}: reran {sorted(rerun)}, declared by {sorted(declaring)}"


def test_a_dataset_placeholder_needs_a_dataset():
    with pytest.raises(ValueError, match="needs a dataset"):
        jobs.keys("prepare_data")
    assert jobs.keys("prepare_data", "a.b") == [("datasets", "a.b")]  # a dotted name stays one part
