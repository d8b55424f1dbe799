"""tools/relock.py on a real toy DVC project: a code-only change is re-recorded for stages whose outputs are absent,
and a changed param value or a changed output is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC_YAML = """\
stages:
  one:
    cmd: python stages/s.py out1.txt
    deps: [src/lib.py, stages/s.py, raw.txt]
    params: [a]
    outs: [out1.txt]
  two:
    cmd: python stages/s.py out2.csv
    deps: [src/lib.py, out1.txt]
    params: [a.b]
    outs: [{out2.csv: {cache: false}}]
"""


def _sh(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=check, timeout=600)


@pytest.fixture()
def toy(tmp_path):
    d = tmp_path / "toy"
    (d / "src").mkdir(parents=True)
    (d / "stages").mkdir()
    (d / "params.yaml").write_text("a:\n  b: 1\n  c: 2\n")
    (d / "src" / "lib.py").write_text("X = 1\n")
    (d / "stages" / "s.py").write_text("import sys\nopen(sys.argv[1], 'w').write('x')\n")
    (d / "raw.txt").write_text("raw\n")
    (d / "dvc.yaml").write_text(DVC_YAML)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"],
                [str(BIN / "dvc"), "init", "-q"], [str(BIN / "dvc"), "repro", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "init"]):
        _sh(cmd, d)
    # a fresh clone: the cached output is gone; then a code-only change and a finer params listing
    (d / "out1.txt").unlink()
    _sh(["rm", "-rf", ".dvc/cache"], d)
    (d / "src" / "lib.py").write_text("X = 1  # moved\n")
    (d / "dvc.yaml").write_text(DVC_YAML.replace("params: [a]\n", "params: [a.b, a.c]\n"))
    return d


def _status(d):
    return json.loads(_sh([str(BIN / "dvc"), "status", "--json"], d).stdout)


def _relock(d, *args):
    return _sh([sys.executable, str(ROOT / "tools" / "relock.py"), "two", *args], d, check=False)


def test_code_only_change_is_re_recorded(toy):
    assert "src/lib.py" in json.dumps(_status(toy)["one"])
    r = _relock(toy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "re-recorded  one" in r.stdout and "re-recorded  two" in r.stdout
    after = json.dumps(_status(toy))
    assert "src/lib.py" not in after and "params.yaml" not in after    # only the absent output is left
    assert "out1.txt" in after


def test_changed_param_value_is_refused(toy):
    (toy / "params.yaml").write_text("a:\n  b: 1\n  c: 3\n")
    r = _relock(toy)
    assert r.returncode == 1
    assert "refused  one: param a.c = 3 (recorded: 2)" in r.stdout
    assert "src/lib.py" in json.dumps(_status(toy)["one"])   # the refused stage was not re-recorded


def test_changed_output_is_refused_unless_declared(toy):
    (toy / "out2.csv").write_text("converted")
    r = _relock(toy, "--dry")
    assert r.returncode == 1 and "output out2.csv differs" in r.stdout
    r = _relock(toy, "--converted", "*.csv")
    assert r.returncode == 0, r.stdout
    assert "out2.csv" not in json.dumps(_status(toy).get("two", []))


def test_a_declared_param_change_is_admitted_and_printed(toy):
    (toy / "params.yaml").write_text("a:\n  b: 1\n  c: 3\n")
    r = _relock(toy, "--accept-param", "a.c")
    assert r.returncode == 0, r.stdout
    assert "param a.c: 2 -> 3 (admitted)" in r.stdout
