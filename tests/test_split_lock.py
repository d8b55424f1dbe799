"""tools/split_lock.py: moving a stage group to a dvc.yaml of its own, with its lock entries, keeps every stage as up
to date as it was (real DVC on a three-stage pipeline of shell commands; a few seconds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tools"))
import split_lock  # noqa: E402

TRAIN = """\
    foreach: ${items}
    do:
      cmd: cat out/prep.txt > out/train_${item}.txt && echo ${tr.lr} >> out/train_${item}.txt
      deps:
        - out/prep.txt
        - src/a.py
      params:
        - tr
      outs:
        - out/train_${item}.txt
"""
ROOT_YAML = """\
stages:
  prep:
    cmd: mkdir -p out && echo prep > out/prep.txt
    deps:
      - src/a.py
    outs:
      - out/prep.txt
{train}  report_x:
    cmd: cat out/train_p.txt out/train_q.txt > out/report.txt
    deps:
      - out/train_p.txt
      - out/train_q.txt
    outs:
      - out/report.txt
"""


def _sh(args, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{args}: {r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


def _status(d: Path) -> dict:
    return json.loads(_sh([str(BIN / "dvc"), "status", "--json"], d) or "{}")


@pytest.mark.slow
def test_moved_group_keeps_its_stages_up_to_date(tmp_path):
    d = tmp_path
    _sh(["git", "init", "-q"], d)
    _sh([str(BIN / "dvc"), "init", "-q"], d)
    (d / "src").mkdir()
    (d / "src" / "a.py").write_text("a = 1\n")
    (d / "params.yaml").write_text("items: [p, q]\ntr:\n  lr: 0.1\n")
    (d / "dvc.yaml").write_text(ROOT_YAML.format(train="  train_x:\n" + TRAIN))
    _sh([str(BIN / "dvc"), "repro", "report_x"], d)
    before = yaml.safe_load((d / "dvc.lock").read_text())["stages"]
    assert _status(d) == {}

    # the group moves as dvcgen writes it: params.yaml as variables, the repository root as working directory
    (d / "dvc.yaml").write_text(ROOT_YAML.format(train=""))
    own = d / "pipelines" / "train_x"
    own.mkdir(parents=True)
    body = TRAIN.replace("    do:\n", "    do:\n      wdir: ../..\n")
    (own / "dvc.yaml").write_text("vars:\n  - ../../params.yaml\nstages:\n  train_x:\n" + body)
    assert {k.rsplit(":", 1)[-1] for k in _status(d)} >= {"train_x@p", "train_x@q"}  # not yet migrated: re-runs

    assert split_lock.split(d) == {"pipelines/train_x/dvc.lock": 2}
    assert _status(d) == {}
    moved = yaml.safe_load((own / "dvc.lock").read_text())["stages"]
    kept = yaml.safe_load((d / "dvc.lock").read_text())["stages"]
    assert moved == {k: v for k, v in before.items() if k.startswith("train_x@")}  # paths as before: wdir = root
    assert kept == {k: v for k, v in before.items() if not k.startswith("train_x@")}
    assert split_lock.split(d) == {}  # a second run has nothing to move


def test_rebase_expresses_paths_from_the_new_working_directory(tmp_path):
    entry = {"cmd": "x", "deps": [{"path": "data/in", "md5": "1"}], "params": {"params.yaml": {"a": 1}},
             "outs": [{"path": "out/y.txt", "md5": "2"}]}
    got = split_lock.rebase(entry, tmp_path, tmp_path / "sub")
    assert got == {"cmd": "x", "deps": [{"path": "../data/in", "md5": "1"}], "params": {"../params.yaml": {"a": 1}},
                   "outs": [{"path": "../out/y.txt", "md5": "2"}]}
    assert split_lock.rebase(entry, tmp_path, tmp_path) == entry
