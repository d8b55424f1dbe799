"""The side-by-side runner (`python -m greg_ood.cli.repro`) on a toy DVC project: it really runs independent stages
at the same time, in dependency order, leaves the same dvc.lock as plain `dvc repro`, plans only what changed, and
stops cleanly on a failing stage.

The two first stages *rendezvous*: each writes a marker and waits for the other's, so they can only both finish if
they run at the same time (with one worker they would wait forever; no clock is compared)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

RENDEZVOUS = """import pathlib, sys, time
me, other = sys.argv[1], sys.argv[2]
pathlib.Path(f"{me}.started").write_text("x")
t0 = time.monotonic()
while not pathlib.Path(f"{other}.started").exists():
    if time.monotonic() - t0 > 600:
        sys.exit(f"{me}: {other} never started beside me")
    time.sleep(0.05)
pathlib.Path(f"{me}.txt").write_text(open("input.txt").read() + me)
"""

STAGES = {
    "a": {"cmd": "python rendezvous.py a b", "deps": ["rendezvous.py", "input.txt"], "outs": ["a.txt"]},
    "b": {"cmd": "python rendezvous.py b a", "deps": ["rendezvous.py", "input.txt"], "outs": ["b.txt"]},
    "c": {"cmd": "python -c \"open('c.txt','w').write(open('a.txt').read()+open('b.txt').read())\"",
          "deps": ["a.txt", "b.txt"], "outs": ["c.txt"]},
    "lone": {"cmd": "python -c \"open('lone.txt','w').write('1')\"", "outs": ["lone.txt"]},
    "bad": {"cmd": "python -c \"import sys; sys.exit(3)\"", "deps": ["input.txt"], "outs": ["bad.txt"]},
    "after_bad": {"cmd": "python -c \"open('after.txt','w').write('1')\"", "deps": ["bad.txt"],
                  "outs": ["after.txt"]},
    "bad_report": {"cmd": "python -c \"open('r.txt','w').write('1')\"", "deps": ["after.txt", "lone.txt"],
                   "outs": ["r.txt"]},
}


def _sh(args, cwd, env, check=True, timeout=900):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture()
def toy(tmp_path):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               PYTHONPATH=str(ROOT / "src"))
    (tmp_path / "rendezvous.py").write_text(RENDEZVOUS)
    (tmp_path / "input.txt").write_text("in-")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": STAGES}))
    _sh(["git", "init", "-q"], tmp_path, env)
    _sh([sys.executable, "-m", "dvc", "init", "-q"], tmp_path, env)
    return tmp_path, env


def _runner(d, env, *args, check=True):
    return _sh([sys.executable, "-m", "greg_ood.cli.repro", *args], d, env, check=check)


def test_independent_stages_run_side_by_side_and_dvc_agrees(toy):
    d, env = toy
    r = _runner(d, env, "c", "--jobs", "2")
    assert (d / "c.txt").read_text() == "in-ain-b"
    assert "3 stage(s) of c to run (0 up to date), 2 at a time" in r.stdout
    for name in ("a", "b", "c"):
        assert f"[{name}] start (" in r.stdout and f"[{name}] done" in r.stdout
    # DVC's own lines are relayed, its boilerplate is not
    assert "[a] Running stage 'a':" in r.stdout
    assert "To track the changes with git" not in r.stdout and "dvc config core.autostage" not in r.stdout
    lock = yaml.safe_load((d / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"a", "b", "c"}
    assert lock["c"]["outs"][0]["md5"] == hashlib.md5(b"in-ain-b").hexdigest()
    assert json.loads(_sh([sys.executable, "-m", "dvc", "status", "c", "--json"], d, env).stdout) == {}
    # the final check is a plain `dvc repro c`, and it found nothing to run
    assert "Running stage" not in r.stdout.split("[c] done")[-1]


def test_plan_holds_what_changed_and_what_is_downstream(toy):
    d, env = toy
    _runner(d, env, "c", "--jobs", "2")
    assert "0 stage(s) of c to run (3 up to date)" in _runner(d, env, "c", "--dry").stdout
    (d / "input.txt").write_text("changed-")
    dry = _runner(d, env, "c", "--dry").stdout
    assert "3 stage(s) of c to run (0 up to date)" in dry and "  c  <- a, b" in dry
    (d / "input.txt").write_text("in-")
    # only a's command changes: c's own deps are unchanged, but it runs after a, so it is planned; b is not
    stages = dict(STAGES, a=dict(STAGES["a"], cmd="python rendezvous.py a b  # edited"))
    (d / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    dry = _runner(d, env, "c", "--dry").stdout
    assert "2 stage(s) of c to run (1 up to date)" in dry
    assert "  a\n" in dry and "  c  <- a\n" in dry and "  b" not in dry


def test_a_failing_stage_stops_new_starts_and_is_named(toy):
    d, env = toy
    r = _runner(d, env, "bad_report", "--jobs", "2", check=False)
    assert r.returncode == 1
    assert "error: stage bad failed" in r.stderr
    assert "exited with 3" in r.stdout and "[bad] " in r.stdout  # DVC's own message, prefixed with the stage
    assert not (d / "after.txt").exists() and not (d / "r.txt").exists()
    lock = yaml.safe_load((d / "dvc.lock").read_text())["stages"] if (d / "dvc.lock").exists() else {}
    assert "bad" not in lock and "after_bad" not in lock


def test_jobs_must_be_positive(toy):
    d, env = toy
    r = _runner(d, env, "c", "--jobs", "0", check=False)
    assert r.returncode == 2 and "--jobs must be at least 1" in r.stderr


def test_unknown_target_is_a_clear_error(toy):
    d, env = toy
    r = _runner(d, env, "no_such_stage", check=False)
    assert r.returncode == 2 and "cannot plan `dvc repro no_such_stage`" in r.stderr


def test_priority_is_the_longest_chain_still_to_run():
    from greg_ood.cli.repro import Plan, priority, short

    p = Plan(order=["dl", "pre", "sel", "side", "tr", "ev", "rep"],
             waits_for={"dl": set(), "pre": {"dl"}, "sel": {"pre"}, "tr": {"sel"}, "ev": {"tr"}, "side": {"pre"},
                        "rep": {"ev", "side"}})
    assert priority(p) == {"rep": 0, "ev": 1, "side": 1, "tr": 2, "sel": 3, "pre": 4, "dl": 5}
    assert short("pipelines/train_mini/dvc.yaml:train_mini@greg-small_cnn-0") == "train_mini@greg-small_cnn-0"
    assert short("report_mini") == "report_mini"


def test_workers_die_with_a_killed_runner():
    """A worker started with the runner's pre-exec hook ends when the runner is SIGKILLed (PR_SET_PDEATHSIG), so
    no orphaned `dvc` worker runs on with nobody reading its output (a finding of the kill storm)."""
    code = ("import subprocess, sys, time\n"
            "from greg_ood.cli.repro import _die_with_parent\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=_die_with_parent)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(120)\n")
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(runner.stdout.readline())
    runner.kill()
    runner.wait()
    deadline = time.monotonic() + 60
    state = "?"
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        if state in ("gone", "Z", "X"):
            break
        time.sleep(0.1)
    assert state in ("gone", "Z", "X"), f"the worker {child} outlived its runner (state {state})"
