"""Kill a real training process with SIGKILL at random points, re-run it, and require the final weights, the MLflow
run (same run, contiguous steps, no duplicates) and the CSV curve to equal an uninterrupted run."""
from __future__ import annotations

import torch

from tools.resume_soak import kill_resume_compare, prep as _prep, run_driver as _run


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
    assert r.returncode == 2, r.stderr[-3000:]  # a problem the user can fix: one sentence, exit 2, no traceback
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite") or last.startswith("error: model weights became non-finite"), last
    assert "components" in last and "step" in last and "learning rate" in last
    ck = d / "ckpt" / "run.pt"
    if ck.exists():  # whatever was saved before the blow-up is a loadable, finite checkpoint
        state = torch.load(ck, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_loss_traceback_only_when_asked(tmp_path):
    d = _prep(tmp_path / "nan")
    import yaml

    raw = yaml.safe_load((d / "params.yaml").read_text())
    raw["suites"]["mini"]["method_params"]["greg_plus"]["optimizer"] = {"name": "sgd", "lr": 1.0e6}
    (d / "params.yaml").write_text(yaml.safe_dump(raw))
    import subprocess
    import sys

    from tools.resume_soak import DRIVER, driver_env

    r = subprocess.run([sys.executable, str(DRIVER), str(d)], env={**driver_env(d), "GREG_OOD_VERBOSE": "1"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" in r.stderr and "NonFiniteLossError" in r.stderr
