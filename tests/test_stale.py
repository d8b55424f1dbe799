"""No stale or silently wrong result: a real training process (tests/resume_driver.py) must retrain after a code
change or a forced re-run, refuse a corrupted checkpoint, keep its curve on every stop path, let only one trainer
work on a checkpoint, die with its parent, and leave honest MLflow run states after SIGTERM or a kill."""
from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from tools.resume_soak import DRIVER, driver_env as _env, prep as _prep, run_driver as _run

SRC = Path(__file__).resolve().parents[1] / "src"
SHORT = ("--epochs", "2", "--steps-per-epoch", "5")  # 10 steps, a checkpoint every 3


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run of the current code: its weights and CSV curve."""
    d = _prep(tmp_path_factory.mktemp("ref") / "ref")
    r = _run(d, SHORT)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"weights": _weights(d), "csv": (d / "out" / "train.csv").read_text()}


def _weights(d: Path) -> dict:
    return torch.load(d / "out" / "model.pt", weights_only=True)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _runs(d: Path) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name("greg-ood/mini")
    return c.search_runs([exp.experiment_id]) if exp else []


def _steps(d: Path, run_id: str, key: str = "loss/total") -> list[int]:
    from mlflow.tracking import MlflowClient

    return [m.step for m in MlflowClient(f"sqlite:///{d / 'mlflow.db'}").get_metric_history(run_id, key)]


def _trained_steps(stderr: str) -> int:
    line = next(ln for ln in stderr.splitlines() if " steps in " in ln)
    return int(line.split(": ")[-1].split(" steps in ")[0])


def _csv_steps(p: Path) -> list[int]:
    with open(p, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


# ------------------------------------------------------------------------------------------------ A: code / force
def test_code_change_retrains_instead_of_resuming_a_finished_checkpoint(tmp_path, reference):
    src = tmp_path / "src"
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**_env(tmp_path), "PYTHONPATH": str(src)}
    d = _prep(tmp_path / "run")

    def run():
        return subprocess.run([sys.executable, str(DRIVER), str(d), *SHORT], env=env, capture_output=True, text=True,
                              timeout=600)

    r = run()
    assert r.returncode == 0, r.stderr[-3000:]
    assert _same(_weights(d), reference["weights"])
    losses = src / "greg_ood" / "losses.py"
    losses.write_text(losses.read_text() + "\nLOSS_SCALE_NOTE = 2  # an edit: the code differs\n")
    r = run()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "code changed" in r.stderr and "starting over" in r.stderr
    assert _trained_steps(r.stderr) == 10 and "resuming" not in r.stderr
    assert _same(_weights(d), reference["weights"])  # the edit does not change the math: same model, retrained


def test_forced_rerun_of_a_finished_run_trains_again(tmp_path, reference):
    d = _prep(tmp_path / "run")
    assert _run(d, SHORT).returncode == 0
    r = _run(d, SHORT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "finished run" in r.stderr
    assert _trained_steps(r.stderr) == 10 and "resuming" not in r.stderr
    assert _same(_weights(d), reference["weights"])
    assert sorted(r.info.status for r in _runs(d)) == ["FINISHED", "FINISHED"]


# -------------------------------------------------------------------------------------------- B: corrupted ckpt
def _corrupt_tensor_bytes(path: Path, n: int = 8) -> None:
    """XOR ``n`` bytes in the middle of the largest tensor record of a torch zip file (the zip stays readable)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    for i in range(start, start + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    torch.load(io.BytesIO(bytes(raw)), weights_only=True)  # still loads: only a checksum can tell


def test_corrupted_checkpoint_is_not_resumed(tmp_path, reference):
    d = _prep(tmp_path / "run")
    r = _run(d, (*SHORT, "--crash-at", "5"))
    assert r.returncode == -signal.SIGKILL
    ck = d / "ckpt" / "run.pt"
    assert torch.load(ck, weights_only=True)["global_step"] == 3
    _corrupt_tensor_bytes(ck)
    r = _run(d, SHORT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{ck}" in r.stderr and "does not verify" in r.stderr and "starting over" in r.stderr
    assert _same(_weights(d), reference["weights"])
    assert (d / "out" / "train.csv").read_text() == reference["csv"]


# ------------------------------------------------------------------------------------------------- C: curves
def test_no_stop_path_deletes_the_curve_of_the_last_good_checkpoint(tmp_path):
    d = _prep(tmp_path / "run")
    assert _run(d, (*SHORT, "--crash-at", "8")).returncode == -signal.SIGKILL
    work = d / "ckpt" / "run.train.csv"
    before = work.read_text()
    assert _csv_steps(work) == [5]  # the checkpoint at step 6 covers step 5's row (last step, with the epoch end's)
    r = _run(d, (*SHORT, "--lr", "1e6"))  # a params change that blows up before its first checkpoint
    assert r.returncode == 2 and "non-finite" in r.stderr and "Traceback" not in r.stderr
    assert torch.load(d / "ckpt" / "run.pt", weights_only=True)["global_step"] == 6
    assert work.read_text() == before


def test_curve_is_rebuilt_from_the_checkpoint_after_a_params_change(tmp_path, reference):
    d = _prep(tmp_path / "run")
    assert _run(d, (*SHORT, "--lr", "0.05", "--crash-at", "5")).returncode == -signal.SIGKILL
    assert _run(d, (*SHORT, "--crash-at", "8")).returncode == -signal.SIGKILL  # params back: starts over, killed
    r = _run(d, SHORT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (d / "out" / "train.csv").read_text() == reference["csv"]
    assert _same(_weights(d), reference["weights"])
    finished = [r for r in _runs(d) if r.info.status == "FINISHED"]
    assert len(finished) == 1 and {r.info.status for r in _runs(d)} <= {"FINISHED", "FAILED"}
    steps = _steps(d, finished[0].info.run_id)
    assert steps == sorted(set(steps)) == sorted(set(_csv_steps(d / "out" / "train.csv")))


# ---------------------------------------------------------------------------------- E: one trainer, parent death
def _start(d: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DRIVER), str(d), *SHORT, *extra], env=_env(d),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(pred, timeout: float = 120.0) -> None:
    t = time.time() + timeout
    while not pred():
        assert time.time() < t, "timed out"
        time.sleep(0.1)


def test_second_trainer_on_the_same_checkpoint_exits_naming_the_holder(tmp_path, reference):
    d = _prep(tmp_path / "run")
    first = _start(d, "--slow", "0.4")
    _wait_for(lambda: (d / "ckpt" / "run.pt").exists())
    t0 = time.time()
    second = _run(d, SHORT)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert time.time() - t0 < 60
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    assert _same(_weights(d), reference["weights"])
    assert len(_runs(d)) == 1


def test_stage_dies_with_its_parent_and_the_run_is_continued(tmp_path, reference):
    d = _prep(tmp_path / "run")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess,sys; subprocess.run(sys.argv[1:])",
                               sys.executable, str(DRIVER), str(d), *SHORT, "--slow", "0.4"], env=_env(d),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    lock = d / "ckpt" / "run.pt.lock"
    _wait_for(lambda: (d / "ckpt" / "run.pt").exists() and lock.exists() and lock.read_text().strip())
    child = int(lock.read_text())
    os.kill(parent.pid, signal.SIGKILL)  # like `kill -9` of dvc
    parent.wait()
    _wait_for(lambda: not _alive(child), timeout=60)
    runs = _runs(d)
    assert [r.info.status for r in runs] == ["KILLED"]
    r = _run(d, SHORT)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = _runs(d)
    assert [r.info.status for r in runs] == ["FINISHED"]
    steps = _steps(d, runs[0].info.run_id)
    assert steps == sorted(set(steps))
    assert _same(_weights(d), reference["weights"])
    assert (d / "out" / "train.csv").read_text() == reference["csv"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------------------- honest run states
def test_sigterm_saves_marks_killed_and_the_rerun_continues_the_same_run(tmp_path, reference):
    d = _prep(tmp_path / "run")
    p = _start(d, "--slow", "0.4")
    _wait_for(lambda: (d / "ckpt" / "run.pt").exists())
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 128 + signal.SIGTERM
    assert "SIGTERM" in p.stderr.read()
    (run,) = _runs(d)
    assert run.info.status == "KILLED"
    r = _run(d, SHORT)
    assert r.returncode == 0, r.stderr[-3000:]
    (again,) = _runs(d)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert _same(_weights(d), reference["weights"])


def test_kill_before_the_first_checkpoint_leaves_no_second_running_run(tmp_path):
    d = _prep(tmp_path / "run")
    assert _run(d, (*SHORT, "--crash-at", "1")).returncode == -signal.SIGKILL
    (orphan,) = _runs(d)
    assert orphan.info.status == "RUNNING"
    assert _run(d, (*SHORT, "--crash-at", "1")).returncode == -signal.SIGKILL  # same params: continues that run
    assert [r.info.run_id for r in _runs(d)] == [orphan.info.run_id]
    r = _run(d, (*SHORT, "--lr", "0.05"))  # params changed: the orphan is closed as FAILED, a new run finishes
    assert r.returncode == 0, r.stderr[-3000:]
    states = {x.info.run_id: x.info.status for x in _runs(d)}
    assert states.pop(orphan.info.run_id) == "FAILED" and list(states.values()) == ["FINISHED"]
