"""Errors a user can fix end a stage with one sentence naming the file and the fix, exit status 2, and a traceback
only with ``-v``: a corrupt or truncated model file, an unwritable data folder."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from greg_ood import models
from greg_ood.run import pipeline, runguard
from greg_ood.run.trainer import save_atomic
from test_stale import _corrupt_tensor_bytes

ROOT = Path(__file__).resolve().parents[1]


def _saved_model(tmp_path: Path) -> Path:
    p = tmp_path / "models" / "m.pt"
    save_atomic({"model": models.build("small_cnn", 6, in_channels=1).state_dict(), "meta": {}}, p)
    return p


def test_model_file_with_flipped_bytes_is_named_with_the_fix(tmp_path):
    p = _saved_model(tmp_path)
    pipeline.load_model(p, models.build("small_cnn", 6, in_channels=1), "cpu")  # intact: loads
    _corrupt_tensor_bytes(p)
    with pytest.raises(runguard.IntegrityError) as ei:
        pipeline.load_model(p, models.build("small_cnn", 6, in_channels=1), "cpu", stage="train_mini@greg-small_cnn-0")
    msg = str(ei.value)
    assert str(p) in msg and "sha256 differs" in msg and "dvc repro -f train_mini@greg-small_cnn-0" in msg


def test_truncated_model_file_without_checksum_is_named(tmp_path):
    p = _saved_model(tmp_path)
    p.with_name("m.pt.sha256").unlink()  # e.g. checked out from the DVC cache: nothing to compare against
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(runguard.IntegrityError) as ei:
        pipeline.load_model(p, models.build("small_cnn", 6, in_channels=1), "cpu", stage="pretrain_mini@small_cnn")
    assert str(p) in str(ei.value) and "unreadable" in str(ei.value) and "dvc repro -f pretrain_mini" in str(ei.value)


_LOAD = ("import sys; from pathlib import Path; from greg_ood import models; from greg_ood.run import pipeline; "
         "pipeline.run_stage(lambda: pipeline.load_model(Path(sys.argv[1]), models.build('small_cnn', 6, "
         "in_channels=1), 'cpu', stage='train_mini@x'))")


@pytest.mark.parametrize("verbose", [False, True])
def test_stage_exits_2_with_one_sentence_and_traceback_only_with_v(tmp_path, verbose):
    p = _saved_model(tmp_path)
    p.write_bytes(b"garbage" * 100)
    r = subprocess.run([sys.executable, "-c", _LOAD, str(p), *(["-v"] if verbose else [])], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {p}: ") and "dvc repro -f train_mini@x" in last
    assert ("Traceback" in r.stderr) == verbose


@pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/sys/kernel").is_dir(),
                    reason="needs a folder no process may create files in (Linux sysfs)")
def test_unwritable_data_folder_is_named_with_the_fix(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["project"]["data_dir"] = "/sys/kernel/greg-ood-data"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    r = subprocess.run([sys.executable, str(ROOT / "stages" / "download.py"), "gaussian_noise"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "/sys/kernel/greg-ood-data" in last and "project.data_dir" in last


def test_checkpoint_checksum_detects_flipped_bytes(tmp_path):
    from greg_ood.run.io import verify_checksum

    p = tmp_path / "c.pt"
    save_atomic({"w": torch.arange(4096.0)}, p)
    assert verify_checksum(p) is None
    save_atomic({"w": torch.arange(4096.0) + 1}, p)  # a rewrite keeps a valid pair
    assert verify_checksum(p) is None
    _corrupt_tensor_bytes(p)
    assert "sha256 differs" in verify_checksum(p)


def test_failed_download_is_one_message_naming_the_suite_check(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["project"]["data_dir"] = str(tmp_path / "data")
    raw.setdefault("datasets", {})["isun"] = {"retries": 1, "timeout": 5}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    closed = "http://127.0.0.1:9"  # every URL goes through a proxy that refuses: no internet needed, fails at once
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "http_proxy": closed,
           "https_proxy": closed, "no_proxy": ""}
    r = subprocess.run([sys.executable, str(ROOT / "stages" / "download.py"), "isun"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    err = r.stderr[r.stderr.index("error: "):]
    assert "iSUN.tar.gz" in err and str(tmp_path / "data" / "raw" / "isun" / "iSUN.tar.gz") in err
    assert "python -m greg_ood.data check --suite cifar10" in err
