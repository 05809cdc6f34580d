"""The project's store served by a real `mlflow server`: runs found over REST, the experiment page
rendered by headless Chromium (installed by tests/system-deps.sh)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from image_density import tracking

pytestmark = pytest.mark.workflow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RUNS = ("field16-energy", "field16-denoiser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Two runs logged the project's way, then `mlflow server` on them; stopped by its process group."""
    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    curves = root / "metrics.jsonl"
    curves.write_text("".join(json.dumps({"step": s, "loss": 1 / (s + 1)}) + "\n" for s in range(100)))
    for name in RUNS:
        tracking.log_run("energy", name, params={"model": name}, curves=curves, uri=uri)

    port = free_port()
    log = (root / "server.log").open("w")
    cmd = [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--backend-store-uri", uri]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_runs_and_curves_over_rest(server):
    url, _ = server
    exp = get_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=energy")["experiment"]
    runs = get_json(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    assert sorted(r["info"]["run_name"] for r in runs) == sorted(RUNS)
    run_id = runs[0]["info"]["run_id"]
    history = get_json(f"{url}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=loss")
    assert len(history["metrics"]) == 100
    files = get_json(f"{url}/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=curves")["files"]
    assert [f["path"] for f in files] == ["curves/metrics.jsonl"]  # served from beside the store


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (tests/system-deps.sh installs it)")
def test_experiment_page_renders_the_runs(server, tmp_path):
    url, _ = server
    exp = get_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=energy")["experiment"]
    # the UI opens on its GenAI views unless asked for the model-training runs table
    page = f"{url}/#/experiments/{exp['experiment_id']}/runs?workflowType=machine_learning"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--virtual-time-budget=20000",  # without it only the loading skeleton is captured
        "--window-size=1400,900",
    ]

    def chromium(action: str, profile: str) -> subprocess.CompletedProcess:
        cmd = [CHROMIUM, *flags, f"--user-data-dir={tmp_path / profile}", action, page]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    dom = chromium("--dump-dom", "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for name in RUNS:
        assert name in dom.stdout
    shot = tmp_path / "mlflow-experiment.png"
    out = chromium(f"--screenshot={shot}", "p2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
