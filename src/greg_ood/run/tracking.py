"""MLflow tracking: one run per stage execution in one experiment per suite; its name, identity params/tags
(suite, method, arch, seed, lambda_grad, group), description and real DVC stage name come from
:class:`greg_ood.run.runinfo.RunInfo`.

* Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db`` (an *absolute* path, so DVC's
  temporary experiment copies under ``.dvc/tmp/exps`` log into the same store as the workspace). Artifacts of the local
  store go to ``<repo root>/mlruns``.
* A configured server that does not answer fails the stage at start (:func:`check_reachable`), not mid-run.
* SQLite allows one writer at a time: every write is retried with back-off on "database is locked".
* Resume: a stage that resumes from a checkpoint passes the stored run id and continues the same run; metrics carry
  explicit steps so curves stay contiguous.
* Portable store: the local store's artifact locations must lie inside the current clone. A copied or moved clone
  (whose ``mlflow.db`` still points at the old place) is refused with the fix, ``python -m greg_ood.run.tracking
  relocate``, which rewrites the locations to this clone; it never writes into another clone's ``mlruns``.
* An unreadable ``mlflow.db`` is named with how to move it aside.
No MLflow call lives in the math; the stages and the trainer's logger callback are the only users.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .errors import UserError
from .runinfo import RunInfo

EXPS_MARKER = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; the message says why and how to fix it."""


def repo_root(start: Optional[Path] = None) -> Path:
    """The project's root: the nearest folder with dvc.yaml, escaping DVC's experiment copies (.dvc/tmp/exps/...)."""
    p = Path(start or Path.cwd()).resolve()
    s = str(p) + os.sep
    if EXPS_MARKER in s:
        return Path(s.split(EXPS_MARKER)[0])
    for cand in [p, *p.parents]:
        if (cand / "dvc.yaml").exists() or (cand / ".git").exists():
            return cand
    return p


def tracking_uri() -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def check_reachable(uri: Optional[str] = None, timeout: float = 5.0) -> None:
    """Fail fast when an HTTP tracking server is configured but unreachable."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - user-configured URI
            if r.status != 200:
                raise TrackingError(f"MLflow server {uri} answered {r.status} on /health")
    except (urllib.error.URLError, OSError) as e:
        raise TrackingError(
            f"MLflow tracking server {uri} (from MLFLOW_TRACKING_URI) is unreachable: {e}. Start it (see README, "
            "'Tracking server for a team'), fix MLFLOW_TRACKING_URI, or unset it to log to the local SQLite store."
        ) from None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise creation/migration of a local SQLite store: several stages starting at once (parallel DVC queue
    workers) would otherwise race in MLflow's schema migration."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(str(db) + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def make_client(uri: Optional[str] = None):
    """An MlflowClient whose store is initialised (created + migrated) under an exclusive file lock."""
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    with _store_lock(uri):
        try:
            client = MlflowClient(uri)
            _retry(client.search_experiments, max_results=1)
        except Exception as e:  # noqa: BLE001 - a broken local store gets a message naming the file
            if not uri.startswith("sqlite:///"):
                raise
            db = uri[len("sqlite:///"):]
            raise TrackingError(
                f"{db}: the MLflow store cannot be opened ({str(e).splitlines()[0][:160]}); move it aside "
                f"(`mv {db} {db}.broken`) and re-run: a new empty store is created") from None
    return client


def _retry(fn, *args, attempts: int = 12, **kwargs):
    delay = 0.05
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only lock errors are retried, others re-raised
            msg = str(e).lower()
            if i == attempts - 1 or not ("database is locked" in msg or "database table is locked" in msg
                                         or "busy" in msg):
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


#: what makes a run's code or params differ from its commit (DVC outputs such as dvc.lock, metrics/, results/,
#: reports/ and plots/ are rewritten by every run and say nothing about the code)
CODE_PATHS = ("src", "stages", "tools", "params.yaml", "dvc.yaml", "pipelines/*/dvc.yaml", "pyproject.toml",
              "requirements.txt", "Makefile")


def device_tags() -> dict[str, str]:
    """Where a stage ran: ``device.cuda_visible_devices`` (the devices the runner's ``--gpus`` gave it; ``unset``
    without) and ``device.name`` (the first visible CUDA device's name, or ``cpu``). torch is asked only if the stage
    has imported it (download and report never do, and run on the CPU)."""
    import sys

    torch = sys.modules.get("torch")
    name = torch.cuda.get_device_name() if torch is not None and torch.cuda.is_available() else "cpu"
    return {"device.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), "device.name": name}


def git_info(root: Optional[Path] = None) -> dict[str, str]:
    """``git.commit`` and ``git.dirty`` (true when a file under :data:`CODE_PATHS` differs from the commit or is new
    there)."""
    root = root or repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"git.commit": commit or "unknown", "git.dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


class StageRun:
    """A live MLflow run for one stage execution. Metrics are buffered and written in batches."""

    def __init__(self, client, run_id: str, flush_every: int = 200):
        self.client = client
        self.run_id = run_id
        self._buf: list = []
        self.flush_every = flush_every

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            if v is None:
                continue
            v = float(v)
            if v != v:  # NaN: not logged (MLflow accepts it, but it breaks plots)
                continue
            self._buf.append(Metric(key=_key(k), value=v, timestamp=ts, step=int(step or 0)))
        if len(self._buf) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        while self._buf:
            chunk, self._buf = self._buf[:900], self._buf[900:]
            _retry(self.client.log_batch, self.run_id, metrics=chunk)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = _retry(self.client.get_run, self.run_id).data.params
        items = [Param(_key(k), _val(v)) for k, v in flatten(params).items() if _key(k) not in existing]
        for i in range(0, len(items), 90):
            _retry(self.client.log_batch, self.run_id, params=items[i:i + 90])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        _retry(self.client.log_batch, self.run_id, tags=[RunTag(k, _val(v)) for k, v in tags.items()])

    def log_artifact(self, path: os.PathLike, artifact_path: Optional[str] = None) -> None:
        p = Path(path)
        if not p.exists():
            return
        if p.is_dir():
            _retry(self.client.log_artifacts, self.run_id, str(p), artifact_path)
        else:
            _retry(self.client.log_artifact, self.run_id, str(p), artifact_path)

    def log_file(self, path: os.PathLike, name: str) -> None:
        """Log one file under a fixed artifact name (``results.json``, ``model.pt``, ``curves.csv``), so MLflow's
        compare view finds the same artifact in every run."""
        import tempfile

        p = Path(path)
        if not p.is_file():
            return
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / name
            try:
                os.link(p, dst)
            except OSError:
                shutil.copyfile(p, dst)
            _retry(self.client.log_artifact, self.run_id, str(dst))

    def log_dict(self, d: dict, artifact_file: str) -> None:
        _retry(self.client.log_dict, self.run_id, d, artifact_file)


def _key(k: str) -> str:
    return "".join(c if (c.isalnum() or c in "_-. /") else "_" for c in str(k))[:250]


def _val(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return s[:6000]


#: MLflow 3's experiment-kind tag and the value of a classic (non-GenAI) experiment: with it, the UI opens the
#: experiment on its runs table instead of the GenAI traces overview
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def mark_classic(client, exp) -> bool:
    """Tag the experiment ``exp`` as a classic ML experiment (:data:`EXPERIMENT_KIND`) unless it is; True if it
    was changed."""
    key, value = EXPERIMENT_KIND
    if (exp.tags or {}).get(key) == value:
        return False
    _retry(client.set_experiment_tag, exp.experiment_id, key, value)
    return True


def _experiment_id(client, name: str) -> str:
    exp = _retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    kwargs = {"tags": {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1]}}
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        kwargs["artifact_location"] = (repo_root() / "mlruns" / name.replace("/", "_")).as_uri()
    try:
        return _retry(client.create_experiment, name, **kwargs)
    except Exception:  # noqa: BLE001 - created concurrently by another process
        exp = _retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def _local_root(uri: str) -> Optional[Path]:
    """The clone whose artifacts a local SQLite store keeps (None for a server or another backend)."""
    return repo_root() if uri.startswith("sqlite:") else None


def _check_location(location: str, what: str, root: Optional[Path]) -> None:
    """Refuse an artifact location outside the current clone (a copied or moved clone), naming the fix."""
    if root is None or not location.startswith("file:"):
        return
    from urllib.parse import unquote, urlparse

    where = Path(unquote(urlparse(location).path))
    if not where.resolve().is_relative_to(root.resolve()):
        raise TrackingError(
            f"{root / 'mlflow.db'}: {what} keeps its artifacts in {where}, outside this clone {root} (the store was "
            f"copied or moved); run `python -m greg_ood.run.tracking relocate` here to point it at {root / 'mlruns'}")


@contextlib.contextmanager
def stage_run(info: RunInfo, *, params: Optional[dict] = None, resume_run_id: Optional[str] = None,
              experiment_prefix: str = "greg-ood", config_hash: Optional[str] = None,
              on_open: Optional[Callable[[str], None]] = None) -> Iterator[StageRun]:
    """Open (or resume) the MLflow run of the stage execution ``info`` in the experiment ``<prefix>/<suite>``
    (downloads: ``<prefix>/data``); mark it FAILED/KILLED on error or interrupt. The run carries ``info``'s identity
    as params and tags, its name, description and DVC stage name. ``on_open(run_id)`` runs as soon as the run exists
    (to record its id before anything else happens)."""
    suite = info.suite or "data"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri()
    check_reachable(uri)
    client = make_client(uri)  # explicit client: mlflow.set_tracking_uri would pin the URI in os.environ
    root = _local_root(uri)
    run_id = None
    if resume_run_id:
        try:
            r = _retry(client.get_run, resume_run_id)
        except Exception:  # noqa: BLE001 - the run is gone (store was reset): start a new one
            r = None
        if r is not None:
            _check_location(r.info.artifact_uri, f"run {r.info.run_id}", root)
            run_id = r.info.run_id
            _retry(client.update_run, run_id, status="RUNNING")
            for k, v in device_tags().items():  # a resumed stage may run on other devices
                _retry(client.set_tag, run_id, k, v)
            _retry(client.set_tag, run_id, OWNER_TAG, _owner())
    if run_id is None:
        exp_id = _experiment_id(client, f"{experiment_prefix}/{suite}")
        exp = _retry(client.get_experiment, exp_id)
        _check_location(exp.artifact_location, f"experiment {exp.name!r}", root)
        mark_classic(client, exp)
        tags = {"mlflow.runName": info.run_name, "mlflow.note.content": info.description,
                "dvc.stage": info.dvc_stage, "stage": info.stage, "suite": suite,
                **{k: str(v) for k, v in info.identity().items()}}  # a server's REST API takes string tags only
        tags.update(git_info())
        tags.update(device_tags())
        if os.environ.get("DVC_EXP_NAME"):
            tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
        if config_hash:
            tags["params.hash"] = config_hash
        tags[OWNER_TAG] = _owner()
        close_abandoned(client, exp_id, info.dvc_stage)
        run = _retry(client.create_run, exp_id, run_name=info.run_name, tags=tags)
        run_id = run.info.run_id
    sr = StageRun(client, run_id)
    status = "FINISHED"
    try:
        if on_open is not None:
            on_open(run_id)
        sr.log_params({**(params or {}), **info.identity()})
        yield sr
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        try:
            sr.flush()
        finally:
            _retry(client.set_terminated, run_id, status=status)


#: the tag naming the process that runs (or ran) a run: ``<host>:<pid>``
OWNER_TAG = "greg_ood.process"


def _owner() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def close_abandoned(client, exp_id: str, dvc_stage: str) -> list[str]:
    """Mark KILLED the runs of ``dvc_stage`` left RUNNING by a process of this host that no longer exists (a stage
    killed by SIGKILL cannot close its run); returns their ids. Runs of a live process (a parallel queued
    experiment) and runs without the owner tag are left alone."""
    import socket

    from .io import pid_alive

    closed = []
    runs = _retry(client.search_runs, [exp_id], filter_string=f"tags.`dvc.stage` = '{dvc_stage}'", max_results=1000)
    for r in runs:
        host, _, pid = r.data.tags.get(OWNER_TAG, "").rpartition(":")
        if r.info.status == "RUNNING" and host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            _retry(client.set_terminated, r.info.run_id, status="KILLED")
            closed.append(r.info.run_id)
    return closed


def run_is_fresh(run_id: str) -> bool:
    """Whether the run exists, is not FINISHED and has logged no metric (it can be continued from step 0)."""
    try:
        r = _retry(make_client().get_run, run_id)
    except Exception:  # noqa: BLE001 - gone
        return False
    return r.info.status != "FINISHED" and not r.data.metrics


def fail_if_running(run_id: str) -> None:
    """Mark a run left RUNNING by a killed process FAILED (it will never be continued)."""
    client = make_client()
    try:
        r = _retry(client.get_run, run_id)
    except Exception:  # noqa: BLE001 - gone
        return
    if r.info.status == "RUNNING":
        _retry(client.set_terminated, run_id, status="FAILED")


def relocate(root: Optional[Path] = None) -> int:
    """Point the local store's experiments and runs at ``<root>/mlruns`` (after copying or moving a clone).

    Each location keeps its path below ``mlruns/``; returns how many locations changed."""
    import sqlite3

    root = Path(root or repo_root()).resolve()
    db = root / "mlflow.db"
    if not db.exists():
        raise TrackingError(f"{db}: no local MLflow store here; nothing to relocate")
    con = sqlite3.connect(db)
    changed = 0
    with con:
        for table, key, col in (("experiments", "experiment_id", "artifact_location"), ("runs", "run_uuid",
                                                                                       "artifact_uri")):
            for ident, loc in con.execute(f"SELECT {key}, {col} FROM {table}").fetchall():  # noqa: S608
                new = _relocated(loc, root)
                if new != loc:
                    con.execute(f"UPDATE {table} SET {col} = ? WHERE {key} = ?", (new, ident))  # noqa: S608
                    changed += 1
    con.close()
    return changed


def _relocated(location: Optional[str], root: Path) -> Optional[str]:
    marker = "/mlruns/"
    if not location or not location.startswith("file:") or marker not in location:
        return location
    return (root / "mlruns").as_uri() + "/" + location.rsplit(marker, 1)[1]


def params_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m greg_ood.run.tracking relocate``: rewrite the local store's artifact locations to this clone.
    ``python -m greg_ood.run.tracking classic``: tag every experiment of the store as a classic ML experiment (MLflow 3
    then opens it on the runs table)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m greg_ood.run.tracking", description=main.__doc__)
    ap.add_argument("command", choices=["relocate", "classic"])
    if ap.parse_args(argv).command == "classic":
        client = make_client()
        n = sum(mark_classic(client, e) for e in _retry(client.search_experiments, max_results=1000))
        print(f"{n} experiment(s) newly tagged {EXPERIMENT_KIND[0]}={EXPERIMENT_KIND[1]}")
        return
    try:
        n = relocate()
    except TrackingError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{n} artifact location(s) now point into {repo_root() / 'mlruns'}")


if __name__ == "__main__":
    main()
