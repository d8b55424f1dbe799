"""Kill a real training process with SIGKILL at random points, re-run it, and require the final weights, the MLflow
run (same run, contiguous steps, no duplicates) and the CSV curve to equal an uninterrupted run."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("resume_driver.py")


def _prep(d: Path) -> Path:
    d.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    (d / "dvc.yaml").write_text("stages: {}\n")
    return d


def _env(d: Path) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(d: Path, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), str(d), *extra], env=_env(d), capture_output=True, text=True,
                          timeout=600)


def _mlflow_history(d: Path):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name("greg-ood/mini")
    runs = c.search_runs([exp.experiment_id])
    hist = {k: [m.step for m in c.get_metric_history(runs[0].info.run_id, k)] for k in ("loss/total", "loss/grad_penalty", "train/lr")}
    return runs, hist


def kill_resume_compare(base: Path, n_kills: int, seed: int = 1234, driver_args=()) -> dict:
    """Reference run, then a run SIGKILLed ``n_kills`` times at random moments (each after a fresh checkpoint) and
    finally resumed to completion; returns what differs (empty lists = identical)."""
    ref = _prep(base / "ref")
    r = _run(ref, driver_args)
    assert r.returncode == 0, r.stderr[-3000:]
    ref_w = torch.load(ref / "out" / "model.pt", weights_only=True)["model"]
    killed = _prep(base / "killed")
    rnd = random.Random(seed)
    kills = 0
    for _ in range(n_kills * 4):
        if kills >= n_kills:
            break
        p = subprocess.Popen([sys.executable, str(DRIVER), str(killed), "--slow", "0.15", *driver_args], env=_env(killed),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        # wait until training has written a (newer) checkpoint, then kill at a random moment: inside a step,
        # between steps, or while the next checkpoint is being written
        ck = killed / "ckpt" / "run.pt"
        before = ck.stat().st_mtime_ns if ck.exists() else 0
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline and not (ck.exists() and ck.stat().st_mtime_ns != before):
            time.sleep(0.05)
        time.sleep(rnd.uniform(0.0, 1.5))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
        else:
            break
    r = _run(killed, driver_args)
    assert r.returncode == 0, r.stderr[-3000:]
    got_w = torch.load(killed / "out" / "model.pt", weights_only=True)["model"]
    runs_ref, hist_ref = _mlflow_history(ref)
    runs_k, hist_k = _mlflow_history(killed)
    return {
        "kills": kills,
        "weights_differ": [k for k in ref_w if not torch.equal(ref_w[k], got_w[k])],
        "mlflow_runs": len(runs_k),
        "status": runs_k[0].info.status,
        "curves_differ": [k for k in hist_ref if sorted(hist_k[k]) != sorted(hist_ref[k])
                          or len(set(hist_k[k])) != len(hist_k[k])],
        "csv_identical": (killed / "out" / "train.csv").read_bytes() == (ref / "out" / "train.csv").read_bytes(),
        "csv_steps": {name: _csv_steps(d / "out" / "train.csv") for name, d in (("ref", ref), ("killed", killed))},
    }


def _csv_steps(path: Path) -> list[int]:
    """The step column of a training CSV, in file order."""
    import csv

    return [int(r["step"]) for r in csv.DictReader(path.open(newline=""))]


def test_sigkill_at_random_points_resumes_identically(tmp_path):
    res = kill_resume_compare(tmp_path, n_kills=3)
    assert res["kills"] >= 3, "the training finished before it could be killed 3 times; slow it down"
    assert res["weights_differ"] == [], res
    assert res["mlflow_runs"] == 1 and res["status"] == "FINISHED", "a resumed run must continue the same run"
    assert res["curves_differ"] == [], "MLflow curves have gaps or duplicate steps"
    assert res["csv_identical"]
    for name, steps in res["csv_steps"].items():  # one row per step, uninterrupted and resumed alike
        assert steps == sorted(set(steps)), (name, steps)


def test_nan_loss_stops_with_step_and_components_and_keeps_checkpoint(tmp_path):
    d = _prep(tmp_path / "nan")
    import yaml

    raw = yaml.safe_load((d / "params.yaml").read_text())
    raw["suites"]["mini"]["method_params"]["greg_plus"]["optimizer"] = {"name": "sgd", "lr": 1.0e6}
    (d / "params.yaml").write_text(yaml.safe_dump(raw))
    r = _run(d)
    assert r.returncode != 0
    assert "NonFiniteLossError" in r.stderr and "components" in r.stderr and "step" in r.stderr
    ck = d / "ckpt" / "run.pt"
    if ck.exists():  # whatever was saved before the blow-up is a loadable, finite checkpoint
        state = torch.load(ck, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
