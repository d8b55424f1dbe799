"""Pre-flight checks: a stage refuses an unwritable output or checkpoint folder, a full disk, a missing input or an
MLflow store that does not accept a write before any compute, in one sentence naming the real path and a fix, with
exit status 2; stale checksum sidecars of removed outputs go with them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greg_ood.run import preflight
from greg_ood.run.io import checksum_path
from greg_ood.run.preflight import Needs, PreflightError

ROOT = Path(__file__).resolve().parents[1]


def _can_write(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.fixture
def unwritable():
    """Make a folder refuse new files, for root too: permissions first (enough for a normal user), else the
    immutable attribute (root ignores permissions; `chattr +i` binds it). Undone afterwards."""
    made = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        made.append(folder)
        if _can_write(folder):
            r = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
            if r.returncode != 0 or _can_write(folder):
                pytest.skip(f"cannot make a folder unwritable here (root, and chattr: {r.stderr.strip()})")
        return folder

    yield make
    for f in made:
        subprocess.run(["chattr", "-i", str(f)], capture_output=True)
        f.chmod(0o755)


def _repo(tmp_path: Path) -> Path:
    d = tmp_path / "repo"
    d.mkdir()
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    (d / "dvc.yaml").write_text("stages: {}\n")
    return d


def _stage(d: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GREG_OOD_VERBOSE")}
    return subprocess.run([sys.executable, str(ROOT / "stages" / script), *args], cwd=d, env=env,
                          capture_output=True, text=True, timeout=600)


def test_unwritable_models_folder_is_refused_before_any_step_naming_the_model(tmp_path, unwritable):
    d = _repo(tmp_path)
    unwritable(d / "models" / "mini")
    t = time.time()
    r = _stage(d, "train.py", "--suite", "mini", "--method", "greg", "--arch", "small_cnn", "--seed", "0")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write models/mini/mini-greg-small_cnn-s0.pt: models/mini "), last
    assert ".tmp-" not in last and "project.data_dir" not in last and "make models/mini writable" in last
    assert not (d / "checkpoints").exists() and not (d / "mlflow.db").exists()  # nothing started
    assert time.time() - t < 120


def test_output_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(PreflightError) as ei:
        preflight.check(Needs(outputs=[tmp_path / "models" / "mini" / "m.pt"], mlflow=False))
    msg = str(ei.value)
    assert str(tmp_path / "models" / "mini" / "m.pt") in msg and "is a file, not a folder" in msg
    assert f"move {tmp_path / 'models'} aside" in msg


def test_unwritable_checkpoint_folder_is_refused(tmp_path, unwritable):
    unwritable(tmp_path / "checkpoints" / "mini")
    ck = tmp_path / "checkpoints" / "mini" / "x.pt"
    with pytest.raises(PreflightError, match=f"cannot write {ck}: "):
        preflight.check(Needs(outputs=[tmp_path / "models" / "x.pt"], checkpoint=ck, mlflow=False))
    assert not list((tmp_path / "checkpoints" / "mini").iterdir())  # the probe left nothing


def test_probe_leaves_nothing_behind(tmp_path):
    preflight.check(Needs(outputs=[tmp_path / "models" / "m.pt"], checkpoint=tmp_path / "ck" / "m.pt", mlflow=False))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ck", "models"]


def test_not_enough_disk_is_named_with_sizes(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(PreflightError) as ei:
        preflight.check_free_space([tmp_path / "models" / "m.pt"], need=free + (1 << 30))
    msg = str(ei.value)
    assert str(tmp_path / "models" / "m.pt") in msg and "MiB needed" in msg and "MiB free" in msg
    preflight.check_free_space([tmp_path / "m.pt"], need=1 << 20)  # a small need passes


def test_training_bytes_counts_weights_and_two_checkpoints():
    import torch

    m = torch.nn.Linear(10, 10)  # 110 float32 parameters = 440 bytes
    assert preflight.model_bytes(m) == 440
    assert preflight.training_bytes(m, "sgd") == 440 + 2 * 880
    assert preflight.training_bytes(m, "adam") == 440 + 2 * 1320


def test_missing_input_names_the_path_and_the_stage_that_makes_it(tmp_path):
    p = tmp_path / "models" / "pretrained" / "mini-small_cnn.pt"
    with pytest.raises(PreflightError) as ei:
        preflight.check(Needs(inputs=[(p, "dvc repro pretrain_mini@small_cnn")], mlflow=False))
    assert str(ei.value) == f"input {p} is missing; make it with `dvc repro pretrain_mini@small_cnn`"


def test_mlflow_store_that_refuses_writes_is_named(tmp_path, monkeypatch, unwritable):
    from greg_ood.run import tracking

    db = tmp_path / "store" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    tracking.make_client()  # a valid store
    preflight.check_mlflow()  # accepts a write
    unwritable(db.parent)
    with pytest.raises(PreflightError) as ei:
        preflight.check_mlflow()
    assert str(db) in str(ei.value) and "writable" in str(ei.value)


def test_stale_sidecar_goes_with_its_removed_output(tmp_path):
    from greg_ood.run.runtime import save_atomic

    m = tmp_path / "models" / "mini" / "x.pt"
    save_atomic({"a": 1}, m)
    assert checksum_path(m).is_file()
    preflight.check(Needs(outputs=[m], mlflow=False))
    assert checksum_path(m).is_file()  # the model is there: its sidecar stays
    m.unlink()  # what DVC does to a stage's outputs before it runs the stage again
    preflight.check(Needs(outputs=[m], mlflow=False))
    assert not checksum_path(m).exists()
