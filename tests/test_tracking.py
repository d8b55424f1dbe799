"""MLflow tracking against a real SQLite store: run naming/tags, resume of the same run, concurrent writers lose no
metric point, an unreachable server fails at start."""
from __future__ import annotations

import multiprocessing as mp
import os
import socket

import pytest

from greg_ood import tracking


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return uri


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_run_named_after_stage_with_tags_params_and_resume(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    with tracking.stage_run("train", "train@mini-greg-small_cnn-s0", suite="mini",
                            params={"train": {"loss": {"lambda_grad": 1.0}}}, config_hash="h1") as run:
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_metrics({"loss": 0.5}, step=2)
        rid = run.run_id
    with tracking.stage_run("train", "train@mini-greg-small_cnn-s0", suite="mini",
                            params={"train": {"loss": {"lambda_grad": 1.0}}}, resume_run_id=rid) as run:
        assert run.run_id == rid
        run.log_metrics({"loss": 0.25}, step=3)
    c = _client(store)
    r = c.get_run(rid)
    assert r.info.run_name == "train@mini-greg-small_cnn-s0" and r.info.status == "FINISHED"
    assert r.data.tags["dvc.exp_name"] == "exp-abc" and r.data.tags["params.hash"] == "h1"
    assert "git.commit" in r.data.tags
    assert r.data.params["train.loss.lambda_grad"] == "1.0"
    hist = c.get_metric_history(rid, "loss")
    assert [m.step for m in hist] == [1, 2, 3]
    assert c.get_experiment(r.info.experiment_id).name == "greg-ood/mini"


def test_failed_stage_marks_run_failed(store):
    with pytest.raises(RuntimeError):
        with tracking.stage_run("train", "train@x", suite="mini") as run:
            rid = run.run_id
            raise RuntimeError("boom")
    assert _client(store).get_run(rid).info.status == "FAILED"


def _writer(uri: str, k: int, n: int) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    with tracking.stage_run("train", f"train@w{k}", suite="load") as run:
        run.flush_every = 7  # many small batches: maximal contention
        for step in range(n):
            run.log_metrics({"a": step, "b": -step}, step=step)


def test_four_concurrent_writers_lose_no_metric_point(store):
    n = 150
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(store, k, n)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    c = _client(store)
    exp = c.get_experiment_by_name("greg-ood/load")
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 4
    for r in runs:
        for key in ("a", "b"):
            assert len(c.get_metric_history(r.info.run_id, key)) == n


def test_unreachable_server_fails_at_start(monkeypatch, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        with tracking.stage_run("train", "train@x", suite="mini"):
            pytest.fail("the stage body must not run")


def test_repo_root_escapes_dvc_experiment_copies(tmp_path):
    inner = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc123"
    inner.mkdir(parents=True)
    assert tracking.repo_root(inner) == tmp_path
