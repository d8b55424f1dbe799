"""The kill storm's process classification on the command lines the runner really starts (a wrong match silently
drops a kind of kill from the storm)."""
from __future__ import annotations

from tools.kill_storm import describe, kind_of


def test_kinds_of_the_runner_dvc_and_stage_processes():
    runner = ["/v/bin/python", "-m", "greg_ood.cli.repro", "report_mini", "--jobs", "2"]
    dvc_m = ["/v/bin/python", "-m", "dvc", "--wait-for-lock", "repro", "--single-item", "train_mini@greg-small_cnn-0"]
    dvc_main = ["/v/bin/python", "/v/lib/python3.11/site-packages/dvc/__main__.py", "--wait-for-lock", "repro", "x"]
    dvc_bin = ["/v/bin/dvc", "repro", "x"]
    stage = ["python", "stages/train.py", "--suite", "mini", "--method", "greg", "--arch", "small_cnn", "--seed", "0"]
    assert kind_of(10, runner, {10}) == "runner"
    assert kind_of(11, runner, {10}) is None  # another runner, not one of the storm's
    assert [kind_of(12, a, {10}) for a in (dvc_m, dvc_main, dvc_bin)] == ["dvc"] * 3
    assert kind_of(13, stage, {10}) == "stage"
    assert kind_of(14, ["/bin/sh", "-c", "sleep 1"], {10}) is None
    assert describe(stage) == " ".join(stage[1:]) and describe(dvc_m).startswith("repro --single-item")
