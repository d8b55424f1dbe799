"""tools/scratch_repo.py: the scratch copy the end-to-end test, the pipeline benchmark and the soaks run in."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tools import scratch_repo as S


def test_set_dotted_sets_the_leaf_and_refuses_a_missing_parent():
    raw = {"a": {"b": {"c": 1, "d": 2}}}
    S.set_dotted(raw, "a.b.c", [0])
    assert raw == {"a": {"b": {"c": [0], "d": 2}}}
    with pytest.raises(KeyError):
        S.set_dotted(raw, "a.x.c", 1)


def test_build_copies_inputs_applies_overrides_and_commits(tmp_path):
    d = tmp_path / "repo"
    env = S.build(d, {"suites.mini.train.epochs": 7, "suites.mini.seeds": [3, 4]})
    raw = yaml.safe_load((d / "params.yaml").read_text())
    assert raw["suites"]["mini"]["train"]["epochs"] == 7 and raw["suites"]["mini"]["seeds"] == [3, 4]
    src = yaml.safe_load((S.ROOT / "params.yaml").read_text())
    src["suites"]["mini"]["train"]["epochs"], src["suites"]["mini"]["seeds"] = 7, [3, 4]
    assert raw == src  # nothing else changed
    assert (d / "stages" / "train.py").is_file() and (d / "src" / "greg_ood" / "__init__.py").is_file()
    assert (d / ".dvc" / "config").is_file() and not (d / "dvc.lock").exists()
    assert not list(d.rglob("__pycache__"))
    status = subprocess.run(["git", "status", "--porcelain"], cwd=d, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout == ""
    assert env["PYTHONPATH"] == str(d / "src") and "MLFLOW_TRACKING_URI" not in env
    # a DVC project in which nothing has run yet: the report stage and the whole chain below it are to be run
    dvc = subprocess.run(["dvc", "status", "report_mini", "--with-deps", "--json"], cwd=d, env=env,
                         capture_output=True, text=True, timeout=600)
    assert dvc.returncode == 0, dvc.stderr[-3000:]
    pending = json.loads(dvc.stdout)
    trained = sorted(k.rsplit(":", 1)[-1] for k in pending if k.rsplit(":", 1)[-1].startswith("train_mini@greg-"))
    assert "report_mini" in pending and trained == ["train_mini@greg-small_cnn-3", "train_mini@greg-small_cnn-4"]


def test_tiny_params_validate_and_shrink_the_mini_suite(tmp_path):
    from greg_ood.run import config as C

    S.write_params(S.ROOT / "params.yaml", tmp_path / "params.yaml", S.TINY)
    mini = C.load(tmp_path / "params.yaml").params.suites["mini"]
    assert (mini.train.epochs, mini.train.steps_per_epoch, mini.pretrain.steps_per_epoch) == (1, 24, 120)
    assert list(mini.seeds) == [0]
