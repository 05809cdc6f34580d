"""MLflow tracking, done after the computation from the files it wrote; the only module importing mlflow.

Store. `MLFLOW_TRACKING_URI` when set, else `sqlite:///<cwd>/mlflow.db`: Snakemake, DVC and the SLURM
jobs all run in the repository root, so a bare `mlflow ui` there shows every run. Artifacts go
beside a sqlite store, in `<db dir>/mlartifacts/<experiment>/<run id>/artifacts/`, recorded relative
to it: experiments made here have the artifact location `mlflow-artifacts:/<experiment>`, the URI
`mlflow server`/`mlflow ui` resolve against their `--artifacts-destination` (default ./mlartifacts
of their working directory), and which `artifact_repository` (an MLflow plugin, so in any MLflow
process) resolves against the sqlite file's folder. So the folder holding mlflow.db and
mlartifacts/ can be moved or copied, and read with a plain MlflowClient.

Layout. One experiment per study ("energy", "multiscale", "nll", ...), one run per trained model or
evaluation, found by its name. Rerunning a job adds a run of the same name and keeps the earlier
ones (history to compare: a demo and a paper run, a run before and after a change; the UI lists the
newest first). Metric histories cannot be edited in MLflow, so updating a run in place would mix two
trainings' curves. Rerunning with identical inputs (tag `inputs_sha256`) is a no-op that returns the
existing run. Experiments carry `mlflow.experimentKind=custom_model_development`, which MLflow 3's
UI reads to open on the runs and their charts instead of its GenAI (traces) overview.

Pipeline runs. The runs one pipeline invocation logs are children (`mlflow.parentRunId`) of one
parent run per experiment, `pipeline <id>`, tagged `pipeline.invocation=<id>`; the id comes from
$IMAGE_DENSITY_PIPELINE_RUN (set by the Snakefile's onstart for its jobs), else one per `track` call.

Models and data. A trained model's file is logged as an MLflow model (pyfunc flavor whose loader is
this module's `_load_pyfunc`: predict({"y": (N, C, H, W), "t": (N,)}) -> x_hat, the denoiser every
model exposes; it loads with image_density installed, offline) and registered; with a score
(`best_by`, lower is better, e.g. test NLL in bits/dim) the version with the lowest one carries the
alias `best`. Prepared data folders are logged as run inputs (name, digest of the arrays' sha256
listed in meta.json, source path, profile: shape and sizes).

Batches. Importing mlflow costs ~1-2 s a process and a run then ~25 ms, so the workflow logs each
group of runs in one process (`log_runs`, `image-density track --runs JSON`, workflow/rules/tracking.smk)
rather than one process per run.

Concurrency. Many SLURM jobs write one sqlite file. MLflow already sets `PRAGMA busy_timeout = 20000`
on every session, but SQLite answers "database is locked" without waiting when two transactions would
deadlock, and creating the tables of a new file races. So: (1) a file lock (`<db>.lock`, fcntl) around
making the first client of a new file, which creates the tables; (2) every call retried with jittered
exponential backoff on "locked"/"busy"/TEMPORARILY_UNAVAILABLE (each write is one transaction, rolled
back on failure, so retrying cannot duplicate); (3) few round-trips: curves go in `log_batch` calls of
1000 points. SQLite needs working POSIX locks on the shared file system; where those are missing, run
`mlflow server` and point `MLFLOW_TRACKING_URI` at it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import random
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # beside DB_NAME; `mlflow server`'s default --artifacts-destination
PROXIED = "mlflow-artifacts"
PIPELINE_ENV = "IMAGE_DENSITY_PIPELINE_RUN"
PIPELINE_TAG = "pipeline.invocation"
PARENT_TAG = "mlflow.parentRunId"
BEST_ALIAS = "best"
MODEL_DIR = "model"  # the MLflow model's folder among a run's artifacts
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
DATA_META = "meta.json"  # data/store.py's META, not imported from there: that module imports torch
_METRICS_PER_BATCH = 1000  # MLflow's MAX_METRICS_PER_BATCH
_PARAMS_PER_BATCH = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH
_RETRY_DELAYS_S = [0.1 * 2**k for k in range(12)]  # ~7 min in all, plus 20 s busy wait per try
_DISK_FULL = ("database or disk is full", "disk I/O error")
_TRANSIENT = ("database is locked", "database table is locked", "database is busy", "TEMPORARILY_UNAVAILABLE")


@dataclass(frozen=True)
class RunRecord:
    tracking_uri: str
    experiment: str
    experiment_id: str
    run_name: str
    run_id: str
    reused: bool  # an identical finished run existed; nothing was logged


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / DB_NAME}"


# ----------------------------------------------------------------------------- reading the files


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _key_parts(key: str | Sequence[str]) -> list[str]:
    return key.split(".") if isinstance(key, str) else [str(part) for part in key]


def subtree(tree: Mapping[str, Any], key: str | Sequence[str], what: str = "the config") -> Any:
    """The value at `key`: dotted text ("energy.train") or a list of parts (["datasets", "a.b"], for
    names holding dots)."""
    node: Any = tree
    parts = _key_parts(key)
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping) or part not in node:
            known = sorted(node) if isinstance(node, Mapping) else []
            raise ValueError(f"no key {'.'.join(parts[: i + 1])!r} in {what} (there: {known})")
        node = node[part]
    return node


def select(tree: Mapping[str, Any], keys: Iterable[str | Sequence[str]]) -> dict[str, Any]:
    """The subtrees at `keys` (dotted, e.g. "energy", "datasets.field16", or lists of parts), nested
    as in `tree`; all of `tree` when `keys` is empty."""
    keys = list(keys)
    if not keys:
        return dict(tree)
    out: dict[str, Any] = {}
    for key in keys:
        node = subtree(tree, key)
        parts = _key_parts(key)
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = node
    return out


def param_values(tree: Mapping[str, Any]) -> dict[str, str]:
    """Flattened params as MLflow strings; lists as JSON so they read as written in the YAML."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in flatten(tree).items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_final_metrics(path: Path, key: str | Sequence[str] | None = None) -> dict[str, float]:
    """A JSON file of numbers (nested allowed, e.g. results/metrics.json) -> {"a.b": value}; with
    `key` (as `subtree`'s), only that subtree, its names relative to it (key ["nll", "field16"]:
    "energy_test_bits_per_dim"). Non-numeric leaves are left out, as `dvc metrics show` does."""
    try:
        tree = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"metrics file {path} is not valid JSON: {err}") from None
    if not isinstance(tree, dict):
        raise ValueError(f"metrics file {path}: expected a JSON object at top level")
    if key is not None:
        tree = subtree(tree, key, f"metrics file {path}")
        if not isinstance(tree, dict):
            raise ValueError(f"metrics file {path}: {'.'.join(_key_parts(key))} is not an object")
    return {k: float(v) for k, v in flatten(tree).items() if _is_number(v)}


def read_curves(path: Path) -> list[tuple[int, int | None, dict[str, float]]]:
    """metrics.jsonl, one JSON object per logged step: an int `step`, optionally `timestamp` (unix
    seconds), and numeric fields (loss terms, lr, ...) -> [(step, timestamp_ms | None, {key: value})].
    Non-numeric fields are left out."""
    points = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{i}: not a JSON object: {err}") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{path}:{i}: each line needs an integer 'step', got {line[:80]!r}")
        ts = row.get("timestamp")
        ts_ms = int(ts * 1000) if _is_number(ts) else None
        values = {k: float(v) for k, v in row.items() if k not in ("step", "timestamp") and _is_number(v)}
        points.append((row["step"], ts_ms, values))
    return points


def _hash_into(h, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder (relative paths and contents, in sorted order)."""
    h = hashlib.sha256()
    _hash_into(h, path)
    return h.hexdigest()


def dataset_tags(path: Path) -> dict[str, str]:
    """Tags naming the data a run used: `dataset.<name>.sha256`, and for a prepared folder the
    sha256 of each array as listed in its meta.json (paper-scale arrays are not hashed again)."""
    meta = path / DATA_META
    sums = json.loads(meta.read_text()).get("sha256") if meta.is_file() else None
    if not isinstance(sums, dict) or not sums:
        return {f"dataset.{path.name}.sha256": file_sha256(path)}
    listed = hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()
    return {f"dataset.{path.name}.sha256": listed} | {
        f"dataset.{path.name}.{name}.sha256": digest for name, digest in sums.items()
    }


def dataset_input(path: Path, tags: Mapping[str, str]) -> dict[str, str]:
    """A prepared data folder as an MLflow dataset (name, digest, source, profile); `tags`: its
    `dataset_tags`, whose sha256 (of the arrays' listed sha256) gives the digest (MLflow keeps 36
    characters of it)."""
    meta = path / DATA_META
    info = json.loads(meta.read_text()) if meta.is_file() else {}
    profile = {k: info[k] for k in ("kind", "shape", "dtype", "n_train", "n_test") if k in info}
    return {
        "name": path.name,
        "digest": tags[f"dataset.{path.name}.sha256"][:32],
        "source_type": "local",
        "source": json.dumps({"uri": str(path)}),
        "profile": json.dumps(profile, sort_keys=True),
    }


def best_version(scores: Iterable[tuple[str | int, float]]) -> str | int | None:
    """The model version with the lowest score (test NLL: lower is better); on a tie the newest
    (highest version number). None when nothing is scored."""
    ranked = sorted(scores, key=lambda vs: (vs[1], -int(vs[0])))
    return ranked[0][0] if ranked else None


def config_sha256(tree: Mapping[str, Any]) -> str:
    """Hash of a resolved config (`Config.model_dump(mode="json")`), independent of key order."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


def git_tags(cwd: Path | None = None) -> dict[str, str]:
    """Commit and dirtiness of the working tree; empty outside a git checkout."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
        if out.returncode:
            raise OSError(out.stderr)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "git_dirty": str(dirty).lower()}


# ----------------------------------------------------------------------------- talking to MLflow


def _transient(err: Exception) -> bool:
    text = f"{getattr(err, 'error_code', '')} {err}"
    return any(s in text for s in _TRANSIENT)


def _retry(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    for delay in [*_RETRY_DELAYS_S, None]:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if delay is None or not _transient(err):
                raise
            time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: jobs that collided spread out


@contextmanager
def _store_errors(uri: str):
    """sqlite's answers to a full disk (SQLITE_FULL, or SQLITE_IOERR for a refused write) as one
    OSError naming the store, instead of a SQLAlchemy traceback."""
    try:
        yield
    except Exception as err:
        reason = next((s for s in _DISK_FULL if s in str(err)), None)
        if reason is None or isinstance(err, OSError):
            raise
        raise OSError(errno.ENOSPC, f"cannot write the MLflow store {uri}: {reason}") from err


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _initialized(db: Path) -> bool:
    """The tables exist and alembic has stamped a schema version (the last step of creating them)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)) as con:
            return con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:
        return False


@contextmanager
def _store_lock(uri: str):
    """An exclusive lock (`<db>.lock`, fcntl) beside a sqlite store; nothing for other stores."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def proxied_local_path(artifact_uri: str, uri: str) -> Path | None:
    """Where a `mlflow-artifacts:/<path>` URI lies for a sqlite store: <db dir>/mlartifacts/<path>, as
    `mlflow server` run in the db's folder serves it; None for other URIs or stores."""
    db = _sqlite_path(uri)
    prefix = f"{PROXIED}:"
    if db is None or not artifact_uri.startswith(prefix):
        return None
    rest = artifact_uri[len(prefix) :]
    if rest.startswith("//"):  # mlflow-artifacts://host:port/path names a server: not local
        return None
    return db.resolve().parent / ARTIFACTS_DIR / rest.lstrip("/")


def artifact_repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
    """The artifact repository of the `mlflow-artifacts` scheme, registered for every MLflow process
    of this environment (pyproject's entry point `mlflow.artifact_repository`): with a sqlite store,
    the local folder beside it (no server needed to log or read, by this package or any MLflow
    client); otherwise MLflow's own, through the server."""
    import mlflow
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    local = proxied_local_path(artifact_uri, tracking_uri or mlflow.get_tracking_uri())
    if local is None:
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    return LocalArtifactRepository(str(local))


def client(uri: str | None = None):
    """An MlflowClient on a store whose tables exist. Making the first client of a new sqlite file
    creates the tables (alembic migrations), which races between jobs; so the check and the creation
    happen under an exclusive file lock (`<db>.lock`), held for milliseconds once the tables exist."""
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is not None:
        with _store_lock(uri):
            if not _initialized(db):
                return _retry(MlflowClient, uri)
    return _retry(MlflowClient, uri)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Beside a sqlite store: mlflow-artifacts:/<experiment>, i.e. <db dir>/mlartifacts/<experiment>
    (MLflow's own default is an absolute ./mlruns of whatever directory the first job ran in). Other
    stores keep their server's default."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
    return None if _sqlite_path(uri) is None else f"{PROXIED}:/{safe}"


def experiment_id(c, name: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = _retry(c.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            _retry(c.restore_experiment, exp.experiment_id)
        for key, value in EXPERIMENT_TAGS.items():  # experiments made before the tag existed
            if exp.tags.get(key) != value:
                _retry(c.set_experiment_tag, exp.experiment_id, key, value)
        return exp.experiment_id
    try:
        location = _artifact_location(c.tracking_uri, name)
        return _retry(c.create_experiment, name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in f"{err.error_code} {err}":
            raise
        return _retry(c.get_experiment_by_name, name).experiment_id  # another job made it first


def find_runs(c, exp_id: str, run_name: str) -> list:
    """Active runs of that name, newest first."""
    if "'" in run_name:
        raise ValueError(f"run name {run_name!r} must not contain a single quote")
    return _retry(
        c.search_runs,
        [exp_id],
        filter_string=f"attributes.run_name = '{run_name}'",
        order_by=["start_time DESC"],
    )


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _log_files(c, run_id: str, files: Mapping[str, Iterable[Path]]) -> None:
    """Artifacts: {folder under the run's artifacts ("" = top): files or folders}."""
    for folder, paths in files.items():
        for p in paths:
            try:
                if p.is_dir():  # keep the folder's name: artifacts/<folder>/<name>/...
                    _retry(c.log_artifacts, run_id, str(p), "/".join(filter(None, [folder, p.name])))
                else:
                    _retry(c.log_artifact, run_id, str(p), folder or None)
            except OSError as err:  # a full disk under the artifact store: say what and where
                where = _retry(c.get_run, run_id).info.artifact_uri
                raise OSError(err.errno, f"cannot copy {p} to {where}: {err.strerror or err}") from err


def pipeline_run(c, exp_id: str, invocation: str) -> str:
    """The parent run of `invocation` in the experiment, made by the first job that needs it (under
    the store's lock, so concurrent tracking jobs of one invocation share it)."""
    if "'" in invocation:
        raise ValueError(f"pipeline invocation {invocation!r} must not contain a single quote")
    with _store_lock(c.tracking_uri):
        found = _retry(
            c.search_runs,
            [exp_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{invocation}' and tags.`pipeline.role` = 'parent'",
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        tags = {PIPELINE_TAG: invocation, "pipeline.role": "parent"}
        run = _retry(c.create_run, exp_id, run_name=f"pipeline {invocation}", tags=tags)
        _retry(c.set_terminated, run.info.run_id, "FINISHED")
        return run.info.run_id


def new_invocation() -> str:
    """An id for one pipeline invocation: its start time (sorts as text) and a random suffix."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.urandom(3).hex()}"


def start_pipeline_run() -> str:
    """This invocation's id, made once per process and handed to its jobs through $PIPELINE_ENV (the
    Snakefile's onstart calls it; the local tracking jobs inherit the variable)."""
    return os.environ.setdefault(PIPELINE_ENV, new_invocation())


def _log_datasets(c, run_id: str, datasets: list[dict[str, str]]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [DatasetInput(Dataset(**d), tags=[InputTag("mlflow.data.context", "train")]) for d in datasets]
    _retry(c.log_inputs, run_id, datasets=inputs)


def _log_model(c, run_id: str, model: Path) -> None:
    """The model file as an MLflow pyfunc model under the run's artifacts/model: its loader is this
    module's `_load_pyfunc`, its input named tensors y (N, C, H, W) and t (N,), its output x_hat."""
    import tempfile

    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from image_density import __version__

    signature = ModelSignature(
        inputs=Schema([
            TensorSpec(np.dtype(np.float32), (-1, -1, -1, -1), "y"),
            TensorSpec(np.dtype(np.float32), (-1,), "t"),
        ]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, -1))]),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / MODEL_DIR
        mlflow.pyfunc.save_model(
            str(folder), loader_module=__name__, data_path=str(model), signature=signature,
            pip_requirements=[f"image-density=={__version__}"],
        )  # fmt: skip
        _retry(c.log_artifacts, run_id, str(folder), MODEL_DIR)


def _register(c, run_id: str, name: str, best_by: str | None, score: float | None) -> None:
    """A new version of registered model `name` from the run's artifacts/model, tagged with its score;
    alias `best` moved to the lowest-scored version."""
    from mlflow.exceptions import MlflowException

    try:
        _retry(c.create_registered_model, name)
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in f"{err.error_code} {err}":
            raise
    source = f"{_retry(c.get_run, run_id).info.artifact_uri}/{MODEL_DIR}"
    tags = {} if score is None else {"best_by": best_by, "score": repr(score)}
    _retry(c.create_model_version, name, source, run_id=run_id, tags=tags)
    if best_by is None:
        return
    versions = _retry(c.search_model_versions, f"name = '{name}'")
    scored = [(v.version, float(v.tags["score"])) for v in versions if v.tags.get("best_by") == best_by]
    best = best_version(scored)
    if best is not None:
        _retry(c.set_registered_model_alias, name, BEST_ALIAS, best)


class _Denoiser:
    """What `mlflow.pyfunc.load_model` returns the predictions of: a model file's network,
    x_hat = denoise(y, t) (Tweedie for an energy model)."""

    def __init__(self, path: str):
        from image_density.checkpoint import load_model

        self.model, _ = load_model(Path(path))

    def predict(self, model_input: Mapping[str, Any], params: Mapping[str, Any] | None = None):
        import torch

        y = torch.as_tensor(model_input["y"], dtype=torch.float32)  # (N, C, H, W)
        t = torch.as_tensor(model_input["t"], dtype=torch.float32)  # (N,)
        return self.model.denoise(y, t).detach().numpy()


def _load_pyfunc(data_path: str) -> _Denoiser:
    """The pyfunc flavor's loader (`loader_module` of `_log_model`): `data_path` is the model file."""
    return _Denoiser(data_path)


def log_run(
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    curves: Path | None = None,
    metrics: Mapping[str, float] | None = None,
    tables: Iterable[Path] = (),
    figures: Iterable[Path] = (),
    artifacts: Iterable[Path] = (),
    tags: Mapping[str, str] | None = None,
    datasets: Iterable[Mapping[str, str]] = (),
    model: Path | None = None,
    registered_model: str | None = None,
    best_by: str | None = None,
    pipeline: str | None = None,
    uri: str | None = None,
) -> RunRecord:
    """Log one trained model or evaluation as a new run `run_name` of `experiment` (older runs of that
    name stay). `params` (nested allowed) are flattened; `curves` is a metrics.jsonl replayed with its
    steps; `metrics` are final numbers; tables go under artifacts/tables, figures under
    artifacts/figures, the rest at the top; `datasets` (`dataset_input`s) are the run's inputs;
    `model`, a model file, is logged as an MLflow model (artifacts/model) and registered as
    `registered_model`, its version scored by the final metric `best_by` (alias `best`: the lowest);
    `pipeline`: the invocation whose parent run the run joins. All files are read before MLflow is
    touched."""
    from mlflow.entities import Metric, Param, RunStatus

    tables, figures, artifacts = list(tables), list(figures), list(artifacts)
    datasets = [dict(d) for d in datasets]
    files = [*tables, *figures, *artifacts] + ([curves] if curves else []) + ([model] if model else [])
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise FileNotFoundError(f"files to log do not exist: {missing}")
    if registered_model and model is None:
        raise ValueError(f"run {experiment}/{run_name}: registered_model {registered_model!r} needs a model")
    params_str = param_values(params or {})
    points = read_curves(curves) if curves else []
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    if best_by is not None and registered_model is None:
        raise ValueError(f"run {experiment}/{run_name}: best_by {best_by!r} needs a registered_model")
    described = [params_str, metrics, dict(tags or {}), datasets, registered_model, best_by]
    h = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    groups = (("c", [curves] if curves else []), ("t", tables), ("f", figures), ("a", artifacts),
              ("m", [model] if model else []))  # fmt: skip
    for group, paths in groups:
        for p in paths:
            h.update(f"{group}:{p.name}\0".encode())
            _hash_into(h, p)
    inputs_sha256 = h.hexdigest()

    uri = uri or tracking_uri()
    with _store_errors(uri):
        c = client(uri)
        exp_id = experiment_id(c, experiment)
        old = find_runs(c, exp_id, run_name)
        for run in old:
            if run.info.status == "FINISHED" and run.data.tags.get("inputs_sha256") == inputs_sha256:
                return RunRecord(uri, experiment, exp_id, run_name, run.info.run_id, reused=True)

        run_tags = {**(tags or {}), "inputs_sha256": inputs_sha256}
        if pipeline:  # not part of inputs_sha256: an unchanged run stays with its first parent
            run_tags |= {PIPELINE_TAG: pipeline, PARENT_TAG: pipeline_run(c, exp_id, pipeline)}
        run_id = _retry(c.create_run, exp_id, run_name=run_name, tags=run_tags).info.run_id
        try:
            if datasets:
                _log_datasets(c, run_id, datasets)
            now = int(time.time() * 1000)
            batch = [Param(k, v) for k, v in params_str.items()]
            for chunk in _chunks(batch, _PARAMS_PER_BATCH):
                _retry(c.log_batch, run_id, params=chunk, synchronous=True)
            series = [Metric(k, v, ts or now, step) for step, ts, row in points for k, v in row.items()]
            series += [Metric(k, v, now, 0) for k, v in metrics.items()]
            for chunk in _chunks(series, _METRICS_PER_BATCH):
                _retry(c.log_batch, run_id, metrics=chunk, synchronous=True)
            curve = [curves] if curves else []
            _log_files(c, run_id, {"tables": tables, "figures": figures, "": artifacts, "curves": curve})
            if model is not None:
                _log_model(c, run_id, model)
            if registered_model:
                # a score left out of the metrics (not finite): registered, never `best`
                _register(c, run_id, registered_model, best_by, metrics.get(best_by or ""))
        except BaseException:
            _retry(c.set_terminated, run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        _retry(c.set_terminated, run_id, "FINISHED")
        return RunRecord(uri, experiment, exp_id, run_name, run_id, reused=False)


# ----------------------------------------------------------------------------- during training


class LiveRun:
    """A training's curves in MLflow while it trains: a daemon thread wakes every `every_s` seconds,
    reads the points its live metrics log (train.py's checkpoint.metrics.jsonl) gained and logs them,
    with the time they were read, to the run recorded in `state` (a JSON file in the checkpoint folder,
    so a resumed attempt continues its run; a new training, in a new folder, gets a new run). The run
    is made at the first wake-up, with the params and tags (the commit) of training time: a training
    shorter than `every_s` never imports mlflow (the tracking job logs it afterwards). Errors (store
    down, locked, full) are printed once and retried at the next wake-up; they never reach the
    training, and leaving the context waits at most `every_s` for the last flush."""

    def __init__(self, log: Path, state: Path, experiment: str, run_name: str, *,
                 params: Mapping[str, Any], tags: Mapping[str, str], every_s: float = 60.0,
                 uri: str | None = None):  # fmt: skip
        self.log, self.state, self.every_s = Path(log), Path(state), every_s
        self.experiment, self.run_name, self.params, self.tags = experiment, run_name, params, dict(tags)
        self.uri = uri or tracking_uri()
        self.run_id: str | None = None
        self._offset, self._skip_upto, self._done, self._warned = 0, -1, None, False
        self._thread, self._status = None, "FINISHED"

    def __enter__(self) -> LiveRun:
        import threading

        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow-live", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._status = "FINISHED" if exc_type is None else "KILLED"  # KILLED: stopped, or failed
        self._done.set()
        self._thread.join(timeout=self.every_s)

    def _loop(self) -> None:
        while not self._done.wait(self.every_s):
            self._flush(final=False)
        if self.run_id is not None:  # the last points and the run's end, if it was made
            self._flush(final=True)

    def _flush(self, final: bool) -> None:
        try:
            with _store_errors(self.uri):
                self._log_new_points(final)
        except Exception as err:  # never the training's problem
            if not self._warned:
                print(f"mlflow: live logging to {self.uri} failed ({err}); retrying", flush=True)
                self._warned = True

    def _log_new_points(self, final: bool) -> None:
        from mlflow.entities import Metric, Param

        c = client(self.uri)
        if self.run_id is None:
            known = json.loads(self.state.read_text()) if self.state.is_file() else {}
            if known.get("tracking_uri") == self.uri:
                self.run_id = known["run_id"]
                _retry(c.update_run, self.run_id, status="RUNNING")
            else:
                exp_id = experiment_id(c, self.experiment)
                run = _retry(c.create_run, exp_id, run_name=self.run_name, tags=self.tags)
                self.run_id = run.info.run_id
                batch = [Param(k, v) for k, v in param_values(self.params).items()]
                for chunk in _chunks(batch, _PARAMS_PER_BATCH):
                    _retry(c.log_batch, self.run_id, params=chunk, synchronous=True)
                self.state.write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}) + "\n")
            # points already logged by an earlier attempt: the run's last step
            history = _retry(c.get_metric_history, self.run_id, "loss")
            last = max((m.step for m in history), default=-1)
            self._skip_upto = last
        with open(self.log) as f:
            f.seek(self._offset)
            text = f.read()
        complete = text[: text.rfind("\n") + 1]  # a line being written stays for the next time
        self._offset += len(complete.encode())
        now = int(time.time() * 1000)
        series = [
            Metric(k, float(v), now, int(row["step"]))
            for row in map(json.loads, complete.splitlines())
            if int(row["step"]) > self._skip_upto
            for k, v in row.items()
            if k != "step" and _is_number(v)
        ]
        for chunk in _chunks(series, _METRICS_PER_BATCH):
            _retry(c.log_batch, self.run_id, metrics=chunk, synchronous=True)
        if final:
            _retry(c.set_terminated, self.run_id, self._status)


# ----------------------------------------------------------------------------- many runs, one process


@dataclass(frozen=True)
class RunSpec:
    """One run of a batch (`image-density track --runs JSON`, the workflow's tracking jobs), named by
    the files to log. `sections`: config keys logged as params (as `select`'s; none: all the config);
    `params`: more params; `metrics` + `metrics_key`: final numbers, the subtree at that key of a JSON
    file (as `read_final_metrics`'s); `datasets`: prepared data folders, tagged with their sha256 and
    logged as the run's inputs; `model`: a model file logged as an MLflow model, registered as
    `registered_model` when given, scored by the final metric `best_by` (lower is better)."""

    experiment: str
    run_name: str
    sections: tuple[str | tuple[str, ...], ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    curves: Path | None = None
    metrics: Path | None = None
    metrics_key: str | tuple[str, ...] | None = None
    tables: tuple[Path, ...] = ()
    figures: tuple[Path, ...] = ()
    artifacts: tuple[Path, ...] = ()
    datasets: tuple[Path, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    model: Path | None = None
    registered_model: str | None = None
    best_by: str | None = None

    def files(self) -> list[Path]:
        single = [p for p in (self.curves, self.metrics, self.model) if p is not None]
        return [*single, *self.tables, *self.figures, *self.artifacts, *self.datasets]


_PATHS = {"tables", "figures", "artifacts", "datasets"}


def _key(value: Any, where: str) -> str | tuple[str, ...]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError(f"{where}: expected a dotted key or a list of key parts, got {value!r}")


def parse_runs(runs: Any) -> list[RunSpec]:
    """A JSON list of run objects (keys: RunSpec's fields; paths as strings, lists for the tuples)
    -> RunSpecs. Errors name the run and the key; (experiment, run_name) must be unique."""
    if not isinstance(runs, list):
        raise ValueError(f"runs: expected a JSON list of run objects, got {type(runs).__name__}")
    known = {f.name for f in fields(RunSpec)}
    specs, seen = [], set()
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        if not isinstance(run, dict):
            raise ValueError(f"{where}: expected an object, got {run!r}")
        unknown = sorted(set(run) - known)
        missing = sorted({"experiment", "run_name"} - set(run))
        if unknown or missing:
            raise ValueError(
                f"{where}: unknown keys {unknown}, missing keys {missing} (known: {sorted(known)})"
            )
        kw: dict[str, Any] = {}
        for name, value in run.items():
            at = f"{where}.{name}"
            if name in ("experiment", "run_name", "registered_model", "best_by"):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{at}: expected a non-empty string, got {value!r}")
                kw[name] = value
            elif name in ("curves", "metrics", "model"):
                if not isinstance(value, str):
                    raise ValueError(f"{at}: expected a path, got {value!r}")
                kw[name] = Path(value)
            elif name in _PATHS:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{at}: expected a list of paths, got {value!r}")
                kw[name] = tuple(map(Path, value))
            elif name == "sections":
                if not isinstance(value, list):
                    raise ValueError(f"{at}: expected a list of keys, got {value!r}")
                kw[name] = tuple(_key(v, at) for v in value)
            elif name == "metrics_key":
                kw[name] = _key(value, at)
            else:  # params, tags
                if not isinstance(value, dict):
                    raise ValueError(f"{at}: expected an object, got {value!r}")
                kw[name] = {str(k): (str(v) if name == "tags" else v) for k, v in value.items()}
        spec = RunSpec(**kw)
        if spec.registered_model and spec.model is None:
            raise ValueError(f"{where}: registered_model needs a model file")
        if spec.best_by and not (spec.registered_model and spec.metrics):
            raise ValueError(f"{where}: best_by needs registered_model and metrics")
        if (spec.experiment, spec.run_name) in seen:
            raise ValueError(f"{where}: run {spec.experiment}/{spec.run_name} is listed twice")
        seen.add((spec.experiment, spec.run_name))
        specs.append(spec)
    return specs


def log_runs(
    runs: Iterable[RunSpec],
    config: Mapping[str, Any],
    *,
    tags: Mapping[str, str] | None = None,
    pipeline: str | None = None,
    uri: str | None = None,
) -> list[RunRecord]:
    """Log each run as `log_run` does, in this one process: importing mlflow costs seconds, a run
    then tens of milliseconds. `config`: the resolved params (`sections` select from it); `tags`:
    common to every run (git commit, config hash); `pipeline`: the invocation whose parent runs
    the new runs join. Every run's files are checked and its params,
    metrics and dataset tags read before the store is touched, so a missing or bad file logs
    nothing; a run whose files did not change since it was logged is left as it is."""
    runs = list(runs)
    missing = sorted({str(p) for run in runs for p in run.files() if not p.exists()})
    if missing:
        raise FileNotFoundError(f"files to log do not exist: {missing}")
    data_tags: dict[Path, dict[str, str]] = {}  # a dataset shared by many runs is read once
    inputs: dict[Path, dict[str, str]] = {}
    prepared = []
    for run in runs:
        for folder in run.datasets:
            if folder not in data_tags:
                data_tags[folder] = dataset_tags(folder)
                inputs[folder] = dataset_input(folder, data_tags[folder])
        data = {k: v for folder in run.datasets for k, v in data_tags[folder].items()}
        run_tags = {**(tags or {}), **data, **run.tags}
        metrics = read_final_metrics(run.metrics, run.metrics_key) if run.metrics else None
        if run.curves:
            read_curves(run.curves)  # a malformed line fails here, before any run is logged
        params = {**select(config, run.sections), **run.params}
        prepared.append((run, params, metrics, run_tags))
    return [
        log_run(
            run.experiment, run.run_name, params=params, curves=run.curves, metrics=metrics,
            tables=run.tables, figures=run.figures, artifacts=run.artifacts, tags=run_tags,
            datasets=[inputs[folder] for folder in run.datasets], model=run.model,
            registered_model=run.registered_model, best_by=run.best_by, pipeline=pipeline, uri=uri,
        )
        for run, params, metrics, run_tags in prepared
    ]  # fmt: skip
