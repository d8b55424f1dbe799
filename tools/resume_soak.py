"""Kill-and-resume soaks.

* ``--mode kill-stage`` (default): N SIGKILLs at random points of a real GReg+ training process, then compare with an
  uninterrupted run (weights bit-identical, one MLflow run with contiguous steps, identical CSV curve).
* ``--mode kill-dvc``: in a scratch copy of this repository, SIGKILL the ``dvc repro`` process itself (not the stage)
  N times during one training stage, then finish with ``dvc repro``.
* ``--mode edit-code``: in a scratch copy, SIGKILL ``dvc repro`` during training, edit a code file the stage imports
  (``losses.py``: the cross-entropy is doubled), then finish with ``dvc repro``.

The DVC modes compare with an uninterrupted ``dvc repro`` of the *current* code in a second copy: the model file is
byte-identical, the stage's MLflow runs hold exactly one FINISHED run (the rest FAILED or KILLED, none RUNNING), its
metric steps have no duplicate, and ``dvc status`` of the stage is clean. They need the prepared ``mini`` data
(``--data``, default ``data/`` of this repository) and shrink the mini suite (``--steps``) to stay small.

    .venv/bin/python -m tools.resume_soak --kills 10 [--seed 7]
    .venv/bin/python -m tools.resume_soak --mode kill-dvc --kills 3 --data /path/to/repo/data
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tools.scratch_repo import git_commit_all, scratch_env, write_params

ROOT = Path(__file__).resolve().parents[1]
#: the real training process that is killed: GReg+ on small synthetic arrays through the train stage's run_training
DRIVER = ROOT / "tests" / "resume_driver.py"

STAGE = "train_mini@oe-small_cnn-0"
EXP = "mini-oe-small_cnn-s0"
EDIT = ("    return F.cross_entropy(logits, labels)\n", "    return 2 * F.cross_entropy(logits, labels)\n")


# ----------------------------------------------------------------------------------------------------- kill-stage mode
def prep(d: Path) -> Path:
    """A fresh work folder for one driver run: the repository's params.yaml and an empty dvc.yaml."""
    d.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    (d / "dvc.yaml").write_text("stages: {}\n")
    return d


def driver_env(d: Path) -> dict:
    """The driver's environment: unbuffered, and its own local MLflow store in ``d`` (no inherited tracking URI)."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_driver(d: Path, extra=()) -> subprocess.CompletedProcess:
    """Run the driver to its end in ``d`` (``extra``: its options)."""
    return subprocess.run([sys.executable, str(DRIVER), str(d), *extra], env=driver_env(d), capture_output=True,
                          text=True, timeout=600)


def mlflow_history(d: Path):
    """The runs of ``d``'s MLflow store and, for its first run, the steps logged for three metrics."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = c.get_experiment_by_name("greg-ood/mini")
    runs = c.search_runs([exp.experiment_id])
    hist = {k: [m.step for m in c.get_metric_history(runs[0].info.run_id, k)]
            for k in ("loss/total", "loss/grad_penalty", "train/lr")}
    return runs, hist


def csv_steps(path: Path) -> list[int]:
    """The step column of a training CSV, in file order."""
    import csv

    return [int(r["step"]) for r in csv.DictReader(path.open(newline=""))]


def kill_resume_compare(base: Path, n_kills: int, seed: int = 1234, driver_args=()) -> dict:
    """Reference run, then a run SIGKILLed ``n_kills`` times at random moments (each after a fresh checkpoint) and
    finally resumed to completion; returns what differs (empty lists = identical)."""
    ref = prep(base / "ref")
    r = run_driver(ref, driver_args)
    assert r.returncode == 0, r.stderr[-3000:]
    ref_w = torch.load(ref / "out" / "model.pt", weights_only=True)["model"]
    killed = prep(base / "killed")
    rnd = random.Random(seed)
    kills = 0
    for _ in range(n_kills * 4):
        if kills >= n_kills:
            break
        p = subprocess.Popen([sys.executable, str(DRIVER), str(killed), "--slow", "0.15", *driver_args],
                             env=driver_env(killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
        # wait until training has written a (newer) checkpoint, then kill at a random moment: inside a step,
        # between steps, or while the next checkpoint is being written
        ck = killed / "ckpt" / "run.pt"
        before = ck.stat().st_mtime_ns if ck.exists() else 0
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline and not (ck.exists() and ck.stat().st_mtime_ns != before):
            time.sleep(0.05)
        time.sleep(rnd.uniform(0.0, 1.5))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
        else:
            break
    r = run_driver(killed, driver_args)
    assert r.returncode == 0, r.stderr[-3000:]
    got_w = torch.load(killed / "out" / "model.pt", weights_only=True)["model"]
    runs_ref, hist_ref = mlflow_history(ref)
    runs_k, hist_k = mlflow_history(killed)
    return {
        "kills": kills,
        "weights_differ": [k for k in ref_w if not torch.equal(ref_w[k], got_w[k])],
        "mlflow_runs": len(runs_k),
        "status": runs_k[0].info.status,
        "curves_differ": [k for k in hist_ref if sorted(hist_k[k]) != sorted(hist_ref[k])
                          or len(set(hist_k[k])) != len(hist_k[k])],
        "csv_identical": (killed / "out" / "train.csv").read_bytes() == (ref / "out" / "train.csv").read_bytes(),
        "csv_steps": {name: csv_steps(d / "out" / "train.csv") for name, d in (("ref", ref), ("killed", killed))},
    }


def kill_stage(args) -> dict:
    with tempfile.TemporaryDirectory() as d:
        # enough steps (a checkpoint every 3) for every kill to land after a fresh checkpoint
        res = kill_resume_compare(Path(d), args.kills, seed=args.seed,
                                  driver_args=("--epochs", str(max(2, args.kills // 3 + 2))))
    res["identical"] = res["kills"] >= args.kills and not res["weights_differ"] and not res["curves_differ"] \
        and res["mlflow_runs"] == 1 and res["csv_identical"]
    return res


# ----------------------------------------------------------------------------------------------------- DVC modes
def _sh(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=scratch_env(cwd), capture_output=True, text=True, timeout=3600)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


def _clone(dest: Path, data: Path, steps: int) -> Path:
    """A scratch git+DVC copy of this repository's tracked files, the prepared data, and a small mini suite."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    shutil.copytree(ROOT / "src", dest / "src", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "data").mkdir(exist_ok=True)
    shutil.copytree(data / "prepared", dest / "data" / "prepared", dirs_exist_ok=True)
    write_params(ROOT / "params.yaml", dest / "params.yaml", {
        "suites.mini.pretrain.epochs": 1, "suites.mini.pretrain.steps_per_epoch": steps,
        "suites.mini.select.n_clusters": 10, "suites.mini.train.epochs": 2,
        "suites.mini.train.steps_per_epoch": steps, "suites.mini.train.checkpoint_every": 5})
    git_commit_all(dest, scratch_env(dest), "soak copy")
    return dest


def _dvc() -> str:
    return str(Path(sys.executable).with_name("dvc"))


def _ckpt(repo: Path) -> Path:
    return repo / "checkpoints" / "mini" / f"{EXP}.pt"


def _wait_trainer_gone(repo: Path, timeout: float = 300) -> None:
    """Wait until no process holds the checkpoint's lock (the orphaned stage saved and exited)."""
    import fcntl

    lock = _ckpt(repo).with_name(_ckpt(repo).name + ".lock")
    end = time.time() + timeout
    while lock.exists() and time.time() < end:
        with open(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                time.sleep(0.2)


def _kill_dvc_during_training(repo: Path, rnd: random.Random) -> bool:
    """Start ``dvc repro``, SIGKILL the dvc process (only it) after a fresh checkpoint; False if it finished."""
    ck = _ckpt(repo)
    before = ck.stat().st_mtime_ns if ck.exists() else 0
    p = subprocess.Popen([_dvc(), "repro", STAGE], cwd=repo, env=scratch_env(repo), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    while p.poll() is None and not (ck.exists() and ck.stat().st_mtime_ns != before):
        time.sleep(0.1)
    time.sleep(rnd.uniform(0.0, 2.0))
    if p.poll() is not None:
        return False
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    _wait_trainer_gone(repo)
    return True


def _mlflow_state(repo: Path) -> dict:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = c.get_experiment_by_name("greg-ood/mini")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("dvc.stage") == "train_mini@oe-small_cnn-0"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    steps = [m.step for m in c.get_metric_history(finished[0].info.run_id, "loss/ce")] if len(finished) == 1 else []
    return {"runs": sorted(r.info.status for r in runs), "duplicate_steps": len(steps) - len(set(steps)),
            "steps": len(steps)}


def dvc_soak(args) -> dict:
    data = Path(args.data).resolve()
    rnd = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="soak-") as d:
        base = _clone(Path(d) / "base", data, args.steps)
        _sh([_dvc(), "repro", "select_mini@small_cnn"], base)  # shared inputs, then two copies of the repo
        ref, soak = Path(d) / "ref", Path(d) / "soak"
        for dest in (ref, soak):
            shutil.copytree(base, dest, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db*", "mlruns"))
        kills = 0
        for _ in range(args.kills * 3):
            if kills >= args.kills:
                break
            kills += _kill_dvc_during_training(soak, rnd)
            if args.mode == "edit-code" and kills:
                break
        if args.mode == "edit-code":
            for repo in (ref, soak):
                f = repo / "src" / "greg_ood" / "losses.py"
                assert EDIT[0] in f.read_text(), "the edited line is not in losses.py any more"
                f.write_text(f.read_text().replace(EDIT[0], EDIT[1]))
        _sh([_dvc(), "repro", STAGE], ref)
        t0 = time.time()
        _sh([_dvc(), "repro", STAGE], soak)
        model = f"models/mini/{EXP}.pt"
        status = _sh([_dvc(), "status", STAGE], soak).stdout.strip()
        res = {"mode": args.mode, "kills": kills, "final_repro_seconds": round(time.time() - t0, 1),
               "model_identical": (ref / model).read_bytes() == (soak / model).read_bytes(),
               "csv_identical": (ref / f"metrics/mini/train/{EXP}.train.csv").read_text()
               == (soak / f"metrics/mini/train/{EXP}.train.csv").read_text(),
               "dvc_status": status, **_mlflow_state(soak)}
    res["identical"] = res["kills"] >= 1 and res["model_identical"] and res["csv_identical"] \
        and res["runs"].count("FINISHED") == 1 and "RUNNING" not in res["runs"] and res["duplicate_steps"] == 0 \
        and "up to date" in res["dvc_status"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["kill-stage", "kill-dvc", "edit-code"], default="kill-stage")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--data", default=str(ROOT / "data"), help="a folder with prepared/ (the DVC modes)")
    ap.add_argument("--steps", type=int, default=30, help="steps per epoch of the shrunk mini suite (DVC modes)")
    args = ap.parse_args()
    t0 = time.time()
    res = kill_stage(args) if args.mode == "kill-stage" else dvc_soak(args)
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))
    sys.exit(0 if res["identical"] else 1)


if __name__ == "__main__":
    main()
