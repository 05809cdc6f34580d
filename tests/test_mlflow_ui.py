"""The project's store served by a real `mlflow server`: runs found over REST; the experiment page, a
run's metric chart and a figure artifact rendered by headless Chromium (tests/system-deps.sh
installs it). The server runs in the store's folder, so it serves the artifacts the project logged
(`mlflow-artifacts:/<experiment>`, tracking.py) from its default ./mlartifacts."""

from __future__ import annotations

import json
import os
import re
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
MAGENTA = (255, 0, 255)
FIGURE_SIZE = (240, 160)  # a magenta figure: its pixels are found in a screenshot of the page


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
    from PIL import Image

    figure = root / "square.png"
    Image.new("RGB", FIGURE_SIZE, MAGENTA).save(figure)
    for name in RUNS:
        tracking.log_run("energy", name, params={"model": name}, curves=curves, figures=[figure], uri=uri)

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


FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # without a virtual time budget only the loading skeleton is captured; the metric charts (drawn
    # lazily) reach --dump-dom only with every compositor stage run and a longer budget
    "--virtual-time-budget=40000",
    "--run-all-compositor-stages-before-draw",
    "--window-size=1400,900",
]


def chromium(page: str, action: str, profile) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", action, page]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def first_run(url: str) -> tuple[str, str]:
    exp = get_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=energy")["experiment"]
    runs = get_json(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    (run,) = [r for r in runs if r["info"]["run_name"] == RUNS[0]]
    return exp["experiment_id"], run["info"]["run_id"]


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (tests/system-deps.sh installs it)"
)


@needs_chromium
def test_experiment_page_renders_the_runs(server, tmp_path):
    url, _ = server
    exp_id, _ = first_run(url)
    # the UI opens on its GenAI views unless asked for the model-training runs table
    page = f"{url}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    dom = chromium(page, "--dump-dom", tmp_path / "p1")
    for name in RUNS:
        assert name in dom.stdout
    shot = tmp_path / "mlflow-experiment.png"
    chromium(page, f"--screenshot={shot}", tmp_path / "p2")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@needs_chromium
def test_run_metric_chart_draws_the_logged_curve(server, tmp_path):
    url, _ = server
    exp_id, run_id = first_run(url)
    page = f"{url}/#/experiments/{exp_id}/runs/{run_id}/model-metrics?workflowType=machine_learning"
    dom = chromium(page, "--dump-dom", tmp_path / "p").stdout
    assert f"{RUNS[0]} (loss)" in dom  # the chart's legend
    # the plotted line (plotly's js-line): the loss 1/(s+1) falls, so its points go down the chart
    # (SVG y grows downward), first at the top
    path = re.search(r'<path class="js-line" d="M([^"]+)"', dom)
    assert path, dom[-3000:]
    ys = [float(point.split(",")[1]) for point in path.group(1).split("L")]
    assert len(ys) > 5 and ys == sorted(ys) and ys[-1] - ys[0] > 100, ys


@needs_chromium
def test_figure_artifact_renders(server, tmp_path):
    from PIL import Image

    url, _ = server
    exp_id, run_id = first_run(url)
    run_page = f"{url}/#/experiments/{exp_id}/runs/{run_id}"
    page = f"{run_page}/artifacts/figures/square.png?workflowType=machine_learning"
    shot = tmp_path / "artifact.png"
    chromium(page, f"--screenshot={shot}", tmp_path / "p")
    pixels = list(Image.open(shot).convert("RGB").getdata())
    shown = sum(p == MAGENTA for p in pixels)  # the figure, fetched through the server and drawn
    area = FIGURE_SIZE[0] * FIGURE_SIZE[1]
    assert 0.5 * area < shown <= 1.05 * area, (shown, area)
