"""A stage killed by SIGKILL cannot close its MLflow run; the next execution of the same stage marks that run
KILLED (and leaves a live process's run alone), so a store never keeps a RUNNING run nobody runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from greg_ood.run import tracking
from greg_ood.run.runinfo import RunInfo

INFO = "RunInfo('evaluate', suite='mini', method='greg', arch='small_cnn', seed=0)"
_HOLD = ("import sys, time; from greg_ood.run import tracking; from greg_ood.run.runinfo import RunInfo; "
         f"ctx = tracking.stage_run({INFO}); run = ctx.__enter__(); print(run.run_id, flush=True); time.sleep(600)")


def _start_holder(env) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-c", _HOLD], env=env, stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def test_sigkilled_stage_run_is_marked_killed_by_the_next_execution(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    killed, killed_id = _start_holder(env)
    live, live_id = _start_holder(env)  # e.g. a queued experiment's copy of the same stage, still running
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(60)
        c = MlflowClient(uri)
        assert c.get_run(killed_id).info.status == "RUNNING"  # nobody could close it
        with tracking.stage_run(RunInfo("evaluate", suite="mini", method="greg", arch="small_cnn", seed=0)) as run:
            new_id = run.run_id
        assert c.get_run(killed_id).info.status == "KILLED"
        assert c.get_run(live_id).info.status == "RUNNING"
        assert c.get_run(new_id).info.status == "FINISHED"
    finally:
        live.kill()
        live.wait(60)
