"""MLflow tracking against a real SQLite store: run naming/tags, resume of the same run, concurrent writers lose no
metric point, an unreachable server fails at start, a copied clone never writes into the original's artifact folder,
a corrupt store is named with the fix."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from greg_ood.run import tracking
from greg_ood.run.runinfo import RunInfo


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


GREG = RunInfo("train", suite="mini", method="greg", arch="small_cnn", seed=0, lambda_grad=1.0, group="main")


def test_run_named_with_identity_params_tags_description_and_resume(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    with tracking.stage_run(GREG, params={"train": {"loss": {"lambda_grad": 1.0}}}, config_hash="h1") as run:
        run.log_metrics({"loss/total": 1.0}, step=1)
        run.log_metrics({"loss/total": 0.5}, step=2)
        rid = run.run_id
    with tracking.stage_run(GREG, params={"train": {"loss": {"lambda_grad": 1.0}}}, resume_run_id=rid) as run:
        assert run.run_id == rid
        run.log_metrics({"loss/total": 0.25}, step=3)
    c = _client(store)
    r = c.get_run(rid)
    assert r.info.run_name == "greg · s0 · train (mini, small_cnn)" and r.info.status == "FINISHED"
    ident = {"suite": "mini", "method": "greg", "arch": "small_cnn", "seed": "0", "lambda_grad": "1.0",
             "group": "main"}
    assert {k: r.data.params[k] for k in ident} == ident
    assert {k: r.data.tags[k] for k in ident} == ident
    assert r.data.tags["dvc.stage"] == "train_mini@greg-small_cnn-0"
    assert r.data.tags["mlflow.note.content"].startswith("Trains greg on small_cnn, suite mini, seed 0")
    assert r.data.tags["dvc.exp_name"] == "exp-abc" and r.data.tags["params.hash"] == "h1"
    assert "git.commit" in r.data.tags
    assert r.data.params["train.loss.lambda_grad"] == "1.0"
    hist = c.get_metric_history(rid, "loss/total")
    assert [m.step for m in hist] == [1, 2, 3]
    assert c.get_experiment(r.info.experiment_id).name == "greg-ood/mini"


def test_files_are_logged_under_fixed_artifact_names(store, tmp_path):
    (tmp_path / "mini-greg-small_cnn-s0.json").write_text("{}")
    (tmp_path / "mini-energy-small_cnn-s0.json").write_text("{}")
    ids = []
    for m in ("greg", "energy"):
        with tracking.stage_run(RunInfo("evaluate", suite="mini", method=m, arch="small_cnn", seed=0)) as run:
            run.log_file(tmp_path / f"mini-{m}-small_cnn-s0.json", "results.json")
            ids.append(run.run_id)
    c = _client(store)
    assert [[a.path for a in c.list_artifacts(i)] for i in ids] == [["results.json"], ["results.json"]]


def test_git_dirty_counts_code_and_params_only(tmp_path):
    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for f in ("params.yaml", "dvc.lock", "src/m.py", "metrics/x.json", "pipelines/train_s/dvc.yaml",
              "pipelines/train_s/dvc.lock"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("a\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    (tmp_path / "dvc.lock").write_text("b\n")
    (tmp_path / "pipelines" / "train_s" / "dvc.lock").write_text("b\n")  # a stage group's lock: an output too
    (tmp_path / "metrics" / "x.json").write_text("b\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "new.md").write_text("new\n")
    assert tracking.git_info(tmp_path)["git.dirty"] == "false"
    (tmp_path / "params.yaml").write_text("b\n")
    assert tracking.git_info(tmp_path)["git.dirty"] == "true"
    git("checkout", "params.yaml")
    (tmp_path / "src" / "new.py").write_text("x = 1\n")
    assert tracking.git_info(tmp_path)["git.dirty"] == "true"
    (tmp_path / "src" / "new.py").unlink()
    (tmp_path / "pipelines" / "train_s" / "dvc.yaml").write_text("b\n")  # a stage group's pipeline: code
    assert tracking.git_info(tmp_path)["git.dirty"] == "true"


def test_failed_stage_marks_run_failed(store):
    with pytest.raises(RuntimeError):
        with tracking.stage_run(RunInfo("train", suite="mini")) as run:
            rid = run.run_id
            raise RuntimeError("boom")
    assert _client(store).get_run(rid).info.status == "FAILED"


def _writer(uri: str, k: int, n: int) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    with tracking.stage_run(RunInfo("train", suite="load", seed=k)) as run:
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
        with tracking.stage_run(RunInfo("train", suite="mini")):
            pytest.fail("the stage body must not run")


def test_repo_root_escapes_dvc_experiment_copies(tmp_path):
    inner = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc123"
    inner.mkdir(parents=True)
    assert tracking.repo_root(inner) == tmp_path


def test_copied_clone_never_writes_into_the_original(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a = tmp_path / "a"
    a.mkdir()
    (a / "dvc.yaml").write_text("stages: {}\n")
    (a / "curve.csv").write_text("from a\n")
    monkeypatch.chdir(a)
    with tracking.stage_run(RunInfo("train", suite="mini")) as run:
        run.log_artifact(a / "curve.csv", "curves")
        rid = run.run_id
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "curve.csv").write_text("from b\n")
    monkeypatch.chdir(b)
    for resume in (rid, None):  # continuing the copied run, and opening a new run in the copied experiment
        with pytest.raises(tracking.TrackingError, match="outside this clone") as ei:
            with tracking.stage_run(RunInfo("train", suite="mini"), resume_run_id=resume):
                pytest.fail("must not run against another clone's artifact folder")
        assert "python -m greg_ood.run.tracking relocate" in str(ei.value) and str(a) in str(ei.value)
    r = subprocess.run([sys.executable, "-m", "greg_ood.run.tracking", "relocate"], cwd=b, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    resume = ("import sys; from greg_ood.run import tracking; from greg_ood.run.runinfo import RunInfo\n"
              "with tracking.stage_run(RunInfo('train', suite='mini'), resume_run_id=sys.argv[1]) as run:\n"
              "    assert run.run_id == sys.argv[1]; run.log_artifact('curve.csv', 'curves')\n")
    r = subprocess.run([sys.executable, "-c", resume, rid], cwd=b, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rel = Path("mlruns") / "greg-ood_mini" / rid / "artifacts" / "curves" / "curve.csv"
    assert (a / rel).read_text() == "from a\n"
    assert (b / rel).read_text() == "from b\n"
    assert _client(f"sqlite:///{b / 'mlflow.db'}").get_run(rid).info.artifact_uri.startswith((b / "mlruns").as_uri())


def test_corrupt_store_is_named_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "mlflow.db").write_bytes(b"this is not an SQLite file\n" * 200)
    with pytest.raises(tracking.TrackingError) as ei:
        with tracking.stage_run(RunInfo("train", suite="mini")):
            pytest.fail("the stage body must not run")
    msg = str(ei.value)
    assert str(tmp_path / "mlflow.db") in msg and f"mv {tmp_path / 'mlflow.db'}" in msg and "\n" not in msg


def test_queue_ablation_collects_evaluate_results_by_method_tag(store, tmp_path, monkeypatch):
    from greg_ood.cli.exps import collect_results

    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    for m, group in (("greg", "main"), ("greg_plus", "main"), ("greg", "ablation")):
        doc = tmp_path / f"mini-{m}-small_cnn-s0-{group}.json"
        doc.write_text(json.dumps({"experiment": f"mini-{m}-small_cnn-s0", "method": m}))
        kw = {"lambda_grad": 0.1, "label": "0.1"} if group == "ablation" else {}
        with tracking.stage_run(RunInfo("evaluate", suite="mini", method=m, arch="small_cnn", seed=0, group=group,
                                        **kw)) as run:
            run.log_file(doc, "results.json")
    docs = collect_results("mini", "greg")
    # the main-grid greg run only: ablation-stage runs repeat in every experiment
    assert [(d["method"], d["experiment"], d["dvc_exp_name"]) for d in docs] == \
        [("greg", "mini-greg-small_cnn-s0@exp-1", "exp-1")]
