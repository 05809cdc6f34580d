"""kill -9 at random moments of `image-density train`, resumed every time: nothing is lost but the
steps since the last checkpoint, and the final weights are bit-identical to those of an
uninterrupted run (CPU); SIGTERM and SIGUSR1 stop it with exit 75 after a checkpoint, and it resumes.

The trainings run as children forked from a "zygote" process (this file run as a script) that has
already imported torch and the package, so each of the ~25 starts costs milliseconds, not seconds.
Kills come from outside at random delays spread over what is left of the run (start-up, any step
of any checkpoint interval, a checkpoint write, the final publish) and from inside at chosen moments:
mid-`torch.save` of a checkpoint or of the final model (a partial temp file on disk), and just before
one of the renames that publish a checkpoint (between them, checkpoint.pt is missing and
checkpoint.prev.pt holds the one before), metrics.jsonl or model.pt.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from _train_helpers import TINY_UNET
from image_density import cli
from image_density.checkpoint import load_latest, load_verified

STEPS, CKPT_EVERY = 24, 4
TRAIN = {"steps": STEPS, "batch": 4, "t_min": 1e-4, "t_max": 100.0, "ckpt_every": CKPT_EVERY, "log_every": 2,
         "ema": 0.9, "hflip": True}  # fmt: skip
# kills from inside, at chosen writes (kind, k-th call, file): mid-write of a checkpoint's temp file
# and of the final model's, before the renames that publish a checkpoint, its predecessor, the final
# metrics.jsonl and model.pt
SELF_KILLS = [("save", 1, "checkpoint.pt.tmp"), ("save", 3, "checkpoint.pt.tmp"), ("save", 1, "model.pt.tmp"),
              ("replace", 2, "checkpoint.pt"), ("replace", 1, "checkpoint.prev.pt"),
              ("replace", 1, "metrics.jsonl"), ("replace", 1, "model.pt")]  # fmt: skip
TIMER_KILLS = 9
UNET = TINY_UNET


# ------------------------------------------------------------------------------------ the zygote


def _child(job: dict) -> int:
    """In the forked child: output to the job's log, the self-kill hook, then the CLI."""
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    kind, k, target = job.get("die_at") or (None, 0, "")
    calls = [0]

    def counted(real, name_of, before_kill=None):
        """real() that kills the process at its k-th call writing a file named `target`."""

        def wrapper(*args, **kwargs):
            if Path(name_of(*args)).name == target:
                calls[0] += 1
                if calls[0] == k:
                    if before_kill is not None:
                        before_kill(real, *args)
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return wrapper

    def partial_save(real, obj, f):  # half a file on disk, then the kill
        real(obj, f)
        f.flush()
        f.truncate(random.Random(k).randrange(1, f.tell()))
        f.flush()

    if kind == "replace":  # before the rename onto `target`
        os.replace = counted(os.replace, lambda src, dst: dst)
    elif kind == "save":  # mid-write of the temp file `target`
        torch.save = counted(torch.save, lambda obj, f: getattr(f, "name", f), partial_save)
    try:
        return cli.main(job["args"])
    except SystemExit as exc:
        return int(exc.code or 0)


def _zygote() -> None:
    """Reads JSON jobs on stdin: {"args", "log", "die_at"} -> forks a child, answers {"pid"};
    {"wait": pid} -> answers {"status"}: the exit code, or -N when killed by signal N."""
    # what a training imports on its first call (torch._dynamo: by Adam), imported once here
    import torch._dynamo
    import tqdm.auto  # noqa: F401

    import image_density.data
    import image_density.losses
    import image_density.models
    import image_density.train  # noqa: F401

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        if "wait" in job:
            _, status = os.waitpid(job["wait"], 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            print(json.dumps({"status": code}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(job)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)


class Zygote:
    def __init__(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=env,
        )  # fmt: skip
        self.ready = False  # its imports run while the test prepares the data

    def _ask(self, msg: dict | None) -> dict:
        if msg is not None:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        return json.loads(line)

    def wait_ready(self) -> None:
        self.ready = self.ready or self._ask(None) == {"ready": True}

    def start(self, args: list[str], log: Path, die_at: tuple[str, int, str] | None = None) -> int:
        self.wait_ready()
        return self._ask({"args": [str(a) for a in args], "log": str(log), "die_at": die_at})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})["status"]

    def close(self):
        self.proc.kill()  # holds nothing; its children have all been waited for
        self.proc.wait(timeout=30)


@pytest.fixture
def zygote():
    z = Zygote()
    yield z
    z.close()


# ----------------------------------------------------------------------------------------- tests


def _logged_steps(live: Path) -> int:
    """The last step in a live metrics log (a line cut by the kill does not count)."""
    last = 0
    if live.exists():
        for line in live.read_text().splitlines():
            try:
                last = max(last, json.loads(line)["step"])
            except (json.JSONDecodeError, KeyError, TypeError):
                pass
    return last


def _checkpoint_step(ckpt: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback to checkpoint.prev.pt warns
        found = load_latest(ckpt)
    return 0 if found is None else found[0]["step"]


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in path.read_text().splitlines()]


@pytest.fixture
def project(tmp_path):
    """(tmp_path, args(name) -> the CLI's train arguments into tmp_path/name/{out,state})."""
    cfg = {
        "seed": 0,
        "results": str(tmp_path / "results"),
        "datasets": {"field": {"kind": "gaussian_field", "size": 4, "n_train": 16, "n_test": 4}},
        "energy": {"datasets": ["field"], "unet": UNET, "train": TRAIN},
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg))
    assert cli.main(["prepare", "--config", str(params), "--dataset", "field"]) == 0

    def args(name):
        return ["train", "--config", params, "--model", "energy", "--dataset", "field", "--no-progress",
                "--out", tmp_path / name / "out", "--ckpt-dir", tmp_path / name / "state"]  # fmt: skip

    return tmp_path, args


def _same_as_uninterrupted(root: Path, name: str) -> None:
    full = load_verified(root / "full/out/model.pt", kind="model")
    cut = load_verified(root / name / "out/model.pt", kind="model")
    assert cut["step"] == full["step"] == STEPS
    assert full["model"].keys() == cut["model"].keys()
    assert all(torch.equal(full["model"][k], cut["model"][k]) for k in full["model"])
    assert _rows(root / name / "out/metrics.jsonl") == _rows(root / "full/out/metrics.jsonl")


def test_kill_9_over_the_whole_run_then_resume_is_bit_identical(project, zygote):
    """Chains of runs of one training, each killed and resumed until one finishes; every finished
    chain must equal the uninterrupted run bit for bit. A kill that a chain ended too early for
    (a checkpoint write after the last checkpoint) is tried again on the next chain."""
    root, args = project
    zygote.wait_ready()
    live = root / "full/state/checkpoint.metrics.jsonl"
    t0 = time.monotonic()
    pid = zygote.start(args("full"), root / "full.log")
    while _logged_steps(live) < 2 and time.monotonic() < t0 + 120:
        time.sleep(0.002)
    start_s = time.monotonic() - t0  # start-up and the first two steps
    assert zygote.wait(pid) == 0
    step_s = (time.monotonic() - t0 - start_s) / (STEPS - 2)

    rng = random.Random(1234)
    pending = [("timer", 0, "")] * TIMER_KILLS + SELF_KILLS
    rng.shuffle(pending)
    state, log = root / "cut/state", root / "cut.log"
    landed, lost, attempts, chains, last_ckpt = [], [], 0, 1, 0
    while pending:
        attempts += 1
        assert attempts <= 3 * (TIMER_KILLS + len(SELF_KILLS)), f"kills left {pending}, landed {landed}"
        how, k, target = pending[0]
        ckpt = _checkpoint_step(state)
        pid = zygote.start(args("cut"), log, None if how == "timer" else (how, k, target))
        if how == "timer":  # in the start-up (1 in 3), else anywhere in the steps left, writes, the end
            left = start_s + rng.uniform(0, 1) * (STEPS - ckpt) * step_s
            time.sleep(rng.uniform(0, start_s) if rng.random() < 1 / 3 else left)
            os.kill(pid, signal.SIGKILL)
        status = zygote.wait(pid)
        assert status in (0, -signal.SIGKILL), f"a resumed run failed (exit {status}):\n{log.read_text()}"
        if status == 0:  # the chain finished first: check it, then start a new one
            _same_as_uninterrupted(root, "cut")
            shutil.rmtree(root / "cut")
            chains, last_ckpt = chains + 1, 0
            if how == "timer":
                pending.pop(0)
            continue
        pending.pop(0)
        logged, ckpt = _logged_steps(state / "checkpoint.metrics.jsonl"), _checkpoint_step(state)
        assert ckpt >= last_ckpt, "a kill lost an older checkpoint"
        assert logged - ckpt <= CKPT_EVERY, f"a kill lost steps {ckpt + 1}..{logged}"
        landed.append((how, target or "-", logged))
        lost.append(logged - ckpt)
        last_ckpt = ckpt

    assert zygote.wait(zygote.start(args("cut"), log)) == 0, log.read_text()
    _same_as_uninterrupted(root, "cut")
    timer = sorted(step for how, _, step in landed if how == "timer")
    publish = [t for h, t, _ in landed if t in ("model.pt", "model.pt.tmp", "metrics.jsonl")]
    assert len(publish) == 3, landed  # every kill at the final publish landed
    fallbacks = log.read_text().count("resuming from the previous checkpoint")
    assert fallbacks >= 1, str(landed)  # after the kill between the two renames
    print(f"\n{len(landed)} kills in {attempts} runs, {chains} chains each bit-identical to the "
          f"uninterrupted run; timer kills at logged steps {timer}; (kind, file, step) of the others "
          f"{[x for x in landed if x[0] != 'timer']}; steps lost per kill {lost}; "
          f"{fallbacks} resumes from checkpoint.prev.pt; start-up {start_s:.2f} s, "
          f"{step_s * 1e3:.0f} ms/step")  # fmt: skip


@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGUSR1)], ids=["SIGTERM+SIGUSR1"])
def test_sigterm_and_sigusr1_through_the_cli_exit_75_and_resume_bit_identical(project, zygote, signals):
    root, args = project
    assert zygote.wait(zygote.start(args("full"), root / "full.log")) == 0
    live, log = root / "sig/state/checkpoint.metrics.jsonl", root / "sig.log"
    rng, stopped = random.Random(7), []
    halves = [range(2, STEPS // 2 - 1, 2), range(STEPS // 2 + 2, STEPS - 1, 2)]
    for signum, steps in zip(signals, halves, strict=True):
        pid = zygote.start(args("sig"), log)
        at = rng.choice(steps)
        deadline = time.monotonic() + 120
        while _logged_steps(live) < at:  # a step well inside a checkpoint interval
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.005)
        os.kill(pid, signum)
        assert zygote.wait(pid) == 75, log.read_text()
        ckpt = _checkpoint_step(root / "sig/state")  # written at the step the signal came in
        assert ckpt >= at and f"stopped by signal at step {ckpt};" in log.read_text()
        stopped.append((signal.Signals(signum).name, at, ckpt))
    assert log.read_text().count("stopped by signal at step") == len(signals)
    assert zygote.wait(zygote.start(args("sig"), log)) == 0, log.read_text()
    _same_as_uninterrupted(root, "sig")
    print(f"\n(signal, step sent at, checkpoint step): {stopped}")


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _zygote()
