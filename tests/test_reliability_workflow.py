"""Security basics of the workflow: no params value reaches a shell unquoted; MLflow serves on
loopback only. A command run by hand beside the pipeline meets the pipeline's jobs' locks."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest
import yaml

from _workflow_helpers import BIN, ROOT, TINY, env, report, snakemake
from image_density.data import load_prepared

pytestmark = pytest.mark.workflow

# a results folder (free text in the params) that a shell would split and run: `touch PWNED`
HOSTILE = "my results;touch PWNED;x"


@pytest.fixture
def hostile(tmp_path):
    """The tiny params (with generalization models) writing to HOSTILE inside tmp_path."""
    raw = yaml.safe_load(TINY.read_text())
    raw["results"] = HOSTILE
    e = raw["energy"]
    raw["generalization"] = {"dataset": e["datasets"][0], "n": [2], "unet": e["unet"], "train": e["train"]}
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _commands(out: str) -> list[str]:
    """The shell commands a `snakemake -n -p` printed (one line each here)."""
    found = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Shell command:")]
    return [cmd for cmd in found if cmd != "None"]


def _strings(token: str) -> list[str]:
    """A token, or the strings inside it when it is JSON (the tracking jobs' `--runs`: one argument)."""
    try:
        tree = json.loads(token)
    except ValueError:
        return [token]

    def walk(node):
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            return [s for v in node for s in walk(v)]
        return [node] if isinstance(node, str) else []

    return walk(tree)


def test_every_shell_command_quotes_the_params_values(tmp_path, hostile):
    res = snakemake("-n", "-p", "all", "--configfile", str(hostile), workdir=tmp_path)
    assert res.returncode == 0, res.stdout
    commands = _commands(res.stdout)
    rules = set(re.findall(r"^rule (\w+):", res.stdout, re.M))
    assert {"prepare_data", "train", "train_generalization", "nll", "nll_table"} <= rules, res.stdout
    assert len(commands) >= 7 and all("image-density" in cmd for cmd in commands), res.stdout
    for cmd in commands:
        lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        assert ";" not in tokens and "touch" not in tokens, f"the shell would split: {cmd}"
        strings = [v for t in tokens for v in _strings(t)]
        assert all(v.startswith(HOSTILE + "/") for v in strings if "PWNED" in v), cmd
        assert tokens.count(">") == 1 and tokens[tokens.index(">") + 1].startswith(HOSTILE + "/logs/"), cmd


def test_a_job_with_a_hostile_results_path_runs_as_written(tmp_path, hostile):
    target = f"{HOSTILE}/data/field8/meta.json"
    res = snakemake("-c1", target, "--configfile", str(hostile), workdir=tmp_path)
    assert res.returncode == 0, report(res, tmp_path)
    assert (tmp_path / target).is_file() and (tmp_path / HOSTILE / "data/field8/train.npy").is_file()
    assert not list(tmp_path.rglob("PWNED")), "a params value was run as a command"


def test_mlflow_ui_and_server_bind_to_loopback():
    import click
    from mlflow.cli import cli as mlflow_cli

    ctx = click.Context(mlflow_cli)
    for name in ("ui", "server"):  # `mlflow ui`, as the README says, is an alias of `mlflow server`
        host = next(p for p in mlflow_cli.get_command(ctx, name).params if p.name == "host")
        assert host.default == "127.0.0.1", (name, host.default)
    # and nothing in the project starts one on another interface
    files = [ROOT / "README.md", ROOT / "Snakefile", ROOT / "dvc.yaml", *ROOT.glob("slurm/*"),
             *ROOT.glob("workflow/**/*.smk"), *ROOT.glob("src/**/*.py"), *ROOT.glob("benchmarks/*.py"),
             *ROOT.glob("tests/*.py"), *ROOT.glob("tests/*.sh")]  # fmt: skip
    any_interface = "0.0." + "0.0"
    for path in files:
        text = path.read_text(errors="replace")
        assert any_interface not in text, path
        for call in re.findall(r"mlflow\W+(?:ui|server)\b[^\n]*", text):
            host = re.search(r"(?:--host|-h)[ =,\"']+([\w.:]+)", call)
            assert host is None or host.group(1) in ("127.0.0.1", "localhost"), (path, call)


def test_a_cli_prepare_beside_the_pipeline_is_one_result_or_a_clear_refusal(tmp_path):
    """A user's `image-density prepare` holds a dataset folder (frozen mid-way) when the pipeline's
    job for the same folder starts: the job is refused, naming the lock; the user's run finishes."""
    raw = yaml.safe_load(TINY.read_text())
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    data = tmp_path / "results/data/field8"
    lock = data.parent / ".field8.lock"
    cmd = [str(BIN / "image-density"), "prepare", "--config", str(params), "--dataset", "field8"]
    user = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not lock.exists():  # it holds the folder
        assert user.poll() is None and time.monotonic() < deadline, user.stdout.read()
        time.sleep(0.001)
    os.kill(user.pid, signal.SIGSTOP)
    try:
        res = snakemake("-c1", "results/data/field8/meta.json", "--configfile", str(params), workdir=tmp_path)
    finally:
        os.kill(user.pid, signal.SIGCONT)
    log = (tmp_path / "results/logs/prepare_data/field8.log").read_text()
    assert res.returncode != 0 and "dataset folder results/data/field8: another process holds" in log, log
    assert user.wait(timeout=120) == 0, user.stdout.read()
    assert load_prepared(data).meta["n_train"] == raw["datasets"]["field8"]["n_train"]


def test_a_params_file_with_a_key_twice_is_refused_by_snakemake_naming_file_and_line(tmp_path):
    """Snakemake's own YAML reader keeps the last of two `seed:` keys; the workflow reads each params
    file again with the strict reader before any job, so the plan fails naming the file and line."""
    params = tmp_path / "twice.yaml"
    params.write_text("seed: 0\n" + TINY.read_text() + "\nseed: 1\n")
    res = snakemake("-n", "all", "--configfile", str(params), workdir=tmp_path)
    assert res.returncode != 0 and str(params) in res.stdout, res.stdout
    assert "found the key 'seed' twice (first on line 1)" in res.stdout, res.stdout
    assert not (tmp_path / "results").exists()
