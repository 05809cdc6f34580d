"""kill -9 at random moments of `image-density train`, resumed every time: nothing is lost but the
step in flight, and the final weights are bit-identical to those of an uninterrupted run (CPU).

The trainings run as children forked from a "zygote" process (this file run as a script) that has
already imported torch and the package, so each of the ~25 starts costs milliseconds, not seconds.
Kills come from outside at random delays (anywhere: start-up, a step, a checkpoint write, the final
model write) and from inside at chosen moments: mid-`torch.save` of a checkpoint (a partial temp file
on disk) and just before one of the renames that publish a checkpoint (between them, checkpoint.pt
is missing and checkpoint.prev.pt holds the step before).
"""

from __future__ import annotations

import json
import os
import random
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

from image_density import cli
from image_density.checkpoint import load_latest, load_verified

STEPS, KILLS = 60, 20
TRAIN = {"steps": STEPS, "batch": 4, "t_min": 1e-4, "t_max": 100.0, "ckpt_every": 1, "log_every": 1,
         "ema": 0.9, "hflip": True}  # fmt: skip
UNET = {
    "widths": [4],
    "mid_width": 4,
    "convs_per_block": 1,
    "emb_features": 2,
    "emb_dim": 4,
    "layout": "separate",
}


# ------------------------------------------------------------------------------------ the zygote


def _child(job: dict) -> int:
    """In the forked child: output to the job's log, the self-kill hooks, then the CLI."""
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    kind, k = job.get("die_at") or (None, 0)
    calls = [0]

    def counted(real, before_kill=None):
        def wrapper(*args, **kwargs):
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

    if kind == "replace":
        os.replace = counted(os.replace)
    elif kind == "save":
        torch.save = counted(torch.save, partial_save)
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

    def start(self, args: list[str], log: Path, die_at: tuple[str, int] | None = None) -> int:
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


def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path, zygote):
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

    zygote.wait_ready()
    t0 = time.monotonic()
    assert zygote.wait(zygote.start(args("full"), tmp_path / "full.log")) == 0
    step_s = (time.monotonic() - t0) / STEPS  # an uninterrupted run, per step (start-up included)

    rng = random.Random(1234)
    # self-kills: mid-write of the 1st/2nd checkpoint of a run; before its k-th os.replace (1: the
    # live log rewrite at start, 2: moving checkpoint.pt to prev, 3: publishing the new one, 4: ...)
    plan = [("timer", 0)] * 12 + [("save", k) for k in (1, 2, 1, 2)] + [("replace", k) for k in (1, 2, 3, 4)]
    rng.shuffle(plan)
    state, log = tmp_path / "cut/state", tmp_path / "cut.log"
    kills, lost, attempts = {"timer": 0, "save": 0, "replace": 0}, [], 0
    last_ckpt = 0
    while sum(kills.values()) < KILLS:
        attempts += 1
        assert attempts <= 3 * KILLS, f"only {kills} kills landed in {attempts} attempts"
        how, k = plan[sum(kills.values())]
        die_at = None if how == "timer" else (how, k)
        pid = zygote.start(args("cut"), log, die_at)
        if how == "timer":
            time.sleep(rng.uniform(0, 8 * step_s))  # start-up + a few steps
            os.kill(pid, signal.SIGKILL)
        status = zygote.wait(pid)
        assert status in (0, -signal.SIGKILL), f"a resumed run failed (exit {status}):\n{log.read_text()}"
        if status == 0:
            continue  # it finished before the kill (or before its chosen moment)
        kills[how] += 1
        logged, ckpt = _logged_steps(state / "checkpoint.metrics.jsonl"), _checkpoint_step(state)
        assert ckpt >= last_ckpt, "a kill lost an older checkpoint"
        assert logged - ckpt <= TRAIN["ckpt_every"], f"a kill lost steps {ckpt + 1}..{logged}"
        lost.append(logged - ckpt)
        last_ckpt = ckpt

    assert zygote.wait(zygote.start(args("cut"), log)) == 0, log.read_text()
    full = load_verified(tmp_path / "full/out/model.pt", kind="model")
    cut = load_verified(tmp_path / "cut/out/model.pt", kind="model")
    assert cut["step"] == full["step"] == STEPS
    assert full["model"].keys() == cut["model"].keys()
    assert all(torch.equal(full["model"][k], cut["model"][k]) for k in full["model"])
    assert _rows(tmp_path / "cut/out/metrics.jsonl") == _rows(tmp_path / "full/out/metrics.jsonl")
    fallbacks = log.read_text().count("resuming from the previous checkpoint")
    assert fallbacks >= 1  # after the kill between the two renames
    print(f"\n{kills} kills over {last_ckpt} steps; steps lost per kill {lost}; "
          f"{fallbacks} resumes from checkpoint.prev.pt")  # fmt: skip


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _zygote()
