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
    assert r.returncode != 0
    assert "NonFiniteLossError" in r.stderr and "components" in r.stderr and "step" in r.stderr
    ck = d / "ckpt" / "run.pt"
    if ck.exists():  # whatever was saved before the blow-up is a loadable, finite checkpoint
        state = torch.load(ck, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
