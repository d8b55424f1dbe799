"""bench/suite_phases.py: sums per stage kind, DVC's own CPU and the work's floor, on hand-made hook records."""
from __future__ import annotations

import json

import pytest

from bench import suite_phases as bsp


def _rec(argv, cpu_total, **cpu):
    return {"argv": argv, "total": cpu_total, "cpu_total": cpu_total, "phases": {}, "cpu": cpu}


@pytest.fixture
def log(tmp_path):
    recs = [
        # two training stages: work 30 + 50, evaluation inside training 2 + 2, the rest 8 + 6
        _rec(["stages/train.py", "--suite", "mini"], 40.0, work=30.0, eval_in_training=2.0, imports=2.0),
        _rec(["/x/stages/train.py"], 58.0, work=50.0, eval_in_training=2.0, mlflow_setup=2.5),
        # one evaluation: work 10, rest 5
        _rec(["stages/evaluate.py"], 15.0, work=10.0),
        # two dvc processes: 44 and 60 s in all, of which 40 and 58 are their stage command's
        _rec(["/venv/bin/dvc", "--wait-for-lock", "repro"], 44.0, subprocesses=40.0),
        _rec(["/venv/bin/dvc", "repro"], 60.5, subprocesses=58.0),
        # the runner: 4 s of its own beside its children, who include shells and git without a record
        _rec(["/src/greg_ood/cli/repro.py", "report_mini"], 127.5, subprocesses=123.5),
        # pip and the like are ignored
        _rec(["/venv/lib/pip/__main__.py", "install"], 9.0),
    ]
    path = tmp_path / "hook.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_sums_per_kind_dvc_and_floor(log):
    s = bsp.summarize(bsp.load(log), cores=2)
    train, ev = s["kinds"]["train"], s["kinds"]["evaluate"]
    assert (train["n"], train["total"], train["work"], train["eval_in_training"], train["other"]) == (2, 98, 80, 4, 14)
    assert (ev["n"], ev["work"], ev["other"]) == (1, 10, 5)
    assert set(s["kinds"]) == {"train", "evaluate"}
    assert s["dvc"] == pytest.approx(4.0 + 2.5) and s["dvc_processes"] == 2
    assert s["runner"] == pytest.approx(4.0)
    assert s["work"] == 90 and s["work_floor_s"] == 45
    # the runner's children (120 s in all) hold 4 s of processes without a record beyond 113 + 6.5 + 4 (Python)
    assert s["python"] == pytest.approx(123.5) and s["all"] == 127.5 and s["unrecorded"] == pytest.approx(4.0)
    # all but the work: 127.5 s in all - 90 s of work, over 3 stages
    assert s["overhead_per_stage"] == pytest.approx(37.5 / 3)


def test_writes_markdown_and_json(log, tmp_path):
    bsp.main([str(log), "--cores", "2", "--wall", "90", "--out", str(tmp_path / "r" / "phases")])
    md = (tmp_path / "r" / "phases.md").read_text()
    assert "| train | 2 | 98 | 80 | 4 | 14 | 7.0 |" in md
    assert "90 s CPU / 2 cores = 45 s" in md
    data = json.loads((tmp_path / "r" / "phases.json").read_text())
    assert data["wall"] == 90 and data["work_floor_s"] == 45


def test_without_a_runner_record_the_python_processes_are_the_total(tmp_path):
    path = tmp_path / "hook.jsonl"
    path.write_text(json.dumps(_rec(["stages/evaluate.py"], 15.0, work=10.0)) + "\n"
                    + json.dumps(_rec(["/venv/bin/dvc", "repro"], 18.0, subprocesses=15.0)) + "\n")
    s = bsp.summarize(bsp.load(path), cores=1)
    assert s["all"] == s["python"] == 18.0 and s["unrecorded"] == 0 and s["overhead_per_stage"] == 8.0
