"""Team tracking server, end to end: a real PostgreSQL cluster (the Debian package, run as the `postgres` OS user in a
temp dir on 127.0.0.1), tools/mlflow_server.sh --init-db + the server it starts (proxied local artifacts, --workers 1,
no job runner), real greg-ood stages logging to it through MLFLOW_TRACKING_URI only, and everything read back through
MLflow's REST API. Also: a stage pointed at a closed port fails at start, says "unreachable" and writes no data.

The server tests skip (with the reason) only where PostgreSQL's server binaries are missing (`apt-get install
postgresql`; CI installs it). The closed-port and --dry-run tests need no PostgreSQL. About 30 s in all (server start-up about 11 s).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pg_server  # helper module next to this file

REPO = pg_server.REPO
pytestmark = pytest.mark.slow
PG_PASSWORD = "team's p@ss:w/rd\\"  # quote, @, :, / and backslash: URI- and SQL-escaping must both hold


PY = Path(sys.executable)


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without tracking/DB/DVC/S3 settings; the server script uses this interpreter's mlflow."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PG", "DVC_", "AWS_"))}
    if (PY.parent / "mlflow").exists():
        env["MLFLOW_BIN"] = str(PY.parent / "mlflow")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    why = pg_server.why_unavailable()
    if why:
        pytest.skip(why)
    work = tmp_path_factory.mktemp("team-server")
    pg = pg_server.PgCluster()
    server = None
    try:
        pg.start()
        r = subprocess.run(["bash", str(pg_server.SCRIPT), "--init-db"], capture_output=True, text=True, timeout=60,
                           env=_clean_env(**pg.env(), **({} if pg.as_postgres else {"PGUSER": "postgres"}),
                                          MLFLOW_PG_PASSWORD=PG_PASSWORD, MLFLOW_PG_PORT=str(pg.port),
                                          MLFLOW_PG_DB="greg_team", MLFLOW_PG_USER="greg"))
        assert r.returncode == 0, f"--init-db failed:\n{r.stdout}\n{r.stderr}"
        server = pg_server.MlflowServer(
            _clean_env(MLFLOW_PG_PASSWORD=PG_PASSWORD, MLFLOW_PG_PORT=str(pg.port), MLFLOW_PG_DB="greg_team",
                       MLFLOW_PG_USER="greg", MLFLOW_ARTIFACTS_DESTINATION=str(work / "artifacts"),
                       MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
            work)
        server.start(timeout=60)
        server.pg = pg
        server.artifacts = work / "artifacts"
        yield server
    finally:
        try:
            if server is not None:
                server.stop()
        finally:
            pg.stop()


def _workspace(tmp_path: Path) -> Path:
    """A stand-in project root: params.yaml + stages/ + a dvc.yaml, so repo_root() resolves here and data lands in
    <ws>/data (never in the developer's checkout)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy2(REPO / "params.yaml", ws / "params.yaml")
    shutil.copytree(REPO / "stages", ws / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    (ws / "dvc.yaml").write_text("stages: {}\n")
    return ws


def _run(ws: Path, argv: list[str], uri: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python <argv>` in the workspace, exactly as dvc.yaml runs a stage, with only MLFLOW_TRACKING_URI set."""
    r = subprocess.run([sys.executable, *argv], cwd=ws, capture_output=True, text=True, timeout=timeout,
                       env=_clean_env(MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1"))
    if "partially initialized module 'select'" in r.stderr:
        pytest.fail("`python stages/<x>.py` puts stages/ first on sys.path, and stages/select.py shadows the standard "
                    "library's `select` (imported by subprocess/socket): every stage dies at import. Rename "
                    "stages/select.py (and its dvc.yaml / dvc_suite_template.yaml entries).\n" + r.stderr[-1500:])
    return r


def _experiment(server, name: str) -> dict:
    exps = server.get_json("/api/2.0/mlflow/experiments/search", max_results=100)["experiments"]
    found = [e for e in exps if e["name"] == name]
    assert found, f"experiment {name!r} not on the server; have {[e['name'] for e in exps]}"
    return found[0]


def _runs(server, exp_id: str) -> list[dict]:
    return server.post_json("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]}).get("runs", [])


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


PROBE = '''
from greg_ood.run import tracking
from greg_ood.run.runinfo import RunInfo
with tracking.stage_run(RunInfo("report", suite="pgtest"), params={"train": {"lr": 0.1}}) as run:
    for step in (1, 2, 3):
        run.log_metrics({"loss": 1.0 / step}, step=step)
    run.log_dict({"name": "probe", "rows": [1, 2, 3]}, "manifest.json")
print(run.run_id)
'''


def test_stage_run_logs_params_metrics_artifact_into_postgres(team_server, tmp_path):
    ws = _workspace(tmp_path)
    (ws / "probe.py").write_text(PROBE)
    r = _run(ws, ["probe.py"], team_server.url)
    assert r.returncode == 0, r.stderr[-3000:] + "\n--- server log ---\n" + team_server.log_tail()
    run_id = r.stdout.strip().splitlines()[-1]

    exp = _experiment(team_server, "greg-ood/pgtest")
    assert exp["artifact_location"].startswith("mlflow-artifacts:")  # proxied: the client needs no storage access
    (run,) = _runs(team_server, exp["experiment_id"])
    assert run["info"]["run_id"] == run_id and run["info"]["run_name"] == "report (pgtest)"
    assert run["info"]["status"] == "FINISHED"
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"train.lr": "0.1", "suite": "pgtest"}
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"loss": pytest.approx(1 / 3)}
    assert _tags(run)["dvc.stage"] == "report_pgtest"
    hist = team_server.get_json("/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="loss")["metrics"]
    assert sorted((m["step"], m["value"]) for m in hist) == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    art = json.loads(team_server.get("/get-artifact", path="manifest.json", run_uuid=run_id))
    assert art == {"name": "probe", "rows": [1, 2, 3]}
    # The bytes went through the server into --artifacts-destination; the run rows are in PostgreSQL.
    assert list(team_server.artifacts.rglob("manifest.json"))
    assert not (ws / "mlruns").exists() and not (ws / "mlflow.db").exists()
    rows = team_server.pg.psql("greg_team", f"SELECT name, status FROM runs WHERE run_uuid = '{run_id}'")
    assert rows.strip() == "report (pgtest)|FINISHED"


def test_download_stage_logs_to_team_server(team_server, tmp_path):
    ws = _workspace(tmp_path)
    r = _run(ws, ["stages/download.py", "digits"], team_server.url)
    assert r.returncode == 0, r.stderr[-3000:] + "\n--- server log ---\n" + team_server.log_tail()
    assert any((ws / "data").rglob("*")), "the stage wrote no data"

    exp = _experiment(team_server, "greg-ood/data")
    runs = [x for x in _runs(team_server, exp["experiment_id"]) if x["info"]["run_name"] == "download · digits"]
    assert len(runs) == 1, runs
    run = runs[0]
    assert run["info"]["status"] == "FINISHED"
    tags = _tags(run)
    assert tags["stage"] == "download" and tags["suite"] == "data" and tags["dvc.stage"] == "download@digits" and tags["dataset"] == "digits"
    manifest = json.loads(team_server.get("/get-artifact", path="manifest.json", run_uuid=run["info"]["run_id"]))
    assert manifest["name"] == "digits"
    assert "splits" in manifest


def test_closed_port_fails_at_start_and_writes_no_data(tmp_path):
    ws = _workspace(tmp_path)
    closed = pg_server.free_port()  # bound then released: nothing listens there
    t0 = time.monotonic()
    r = _run(ws, ["stages/download.py", "digits"], f"http://127.0.0.1:{closed}", timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0
    url = f"http://127.0.0.1:{closed}"
    assert any(url in line and "unreachable" in line for line in r.stderr.splitlines()), r.stderr[-3000:]
    assert elapsed < 60, f"took {elapsed:.1f} s to give up"
    # no file (an empty output folder made by the pre-flight writability check is no data)
    assert not [f for f in ws.joinpath("data").rglob("*") if f.is_file()], "data written despite the failure"
    assert not (ws / "mlflow.db").exists() and not (ws / "mlruns").exists()


def test_script_dry_run_keeps_password_out_of_argv_and_requires_boto3_for_s3(tmp_path):
    env = _clean_env(MLFLOW_PG_PASSWORD="hunter2", MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "art"))
    r = subprocess.run(["bash", str(pg_server.SCRIPT), "--dry-run", "--port", "5123"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout + r.stderr
    assert "--backend-store-uri postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow" in r.stdout
    assert "--host 127.0.0.1 --port 5123" in r.stdout and "--artifacts-destination" in r.stdout
    assert not (tmp_path / "art").exists()  # a dry run creates nothing
    s3 = subprocess.run(["bash", str(pg_server.SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=30,
                        env={**env, "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/mlflow"})
    has_boto3 = subprocess.run([sys.executable, "-c", "import boto3"], capture_output=True).returncode == 0
    if has_boto3:
        assert s3.returncode == 0 and "--artifacts-destination s3://bucket/mlflow" in s3.stdout
    else:
        assert s3.returncode != 0 and "boto3" in s3.stderr
