"""`--executor slurm` on a real single-node SLURM (tests/slurm_cluster.py) with a PostgreSQL-backed MLflow server.

One scratch copy of the tiny ``mini`` suite (tools/scratch_repo.py), target: one GReg fine-tune and everything upstream
(7 downloads, pretrain, select, train). First the checks that stop before submitting (no tracking server; --dry-run),
then a run in which pretrain is made to fail (``project.device: cuda:99``): SLURM cancels its dependents and
the runner names the stage and its log. Then, params restored, the same command again: only the stages DVC reports
not done are submitted, and the train job is requeued (``scontrol requeue``: SIGTERM, back to the queue) mid-run.
The result is compared with a serial local ``dvc repro`` of the same target in another copy: dvc.lock byte for byte,
and the model's bytes. The fast tests at the end check the cluster settings file on its own (no SLURM needed).
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

import slurm_cluster
from greg_ood.cli import slurm
from greg_ood.run.runinfo import dvc_file
from test_postgres_tracking import team_server  # noqa: F401  (the fixture: PostgreSQL + tools/mlflow_server.sh)
from tools import scratch_repo

TRAIN = "train_mini@greg-small_cnn-0"
TARGET = f"{dvc_file(TRAIN)}:{TRAIN}"  # its stage group's dvc.yaml
UPSTREAM = ["download@digits", "download@faces", "download@fashion_mnist", "download@gaussian_noise",
            "download@skimage_crops", "download@textures", "download@uniform_noise", "pretrain_mini@small_cnn",
            "select_mini@small_cnn"]
#: the e2e test's tiny suite, with a shorter pretrain and a longer fine-tune (60 steps, a checkpoint every 5) so the
#: requeue lands mid-run
SMALL = {**scratch_repo.TINY, "suites.mini.pretrain.steps_per_epoch": 40, "suites.mini.train.steps_per_epoch": 60,
         "suites.mini.train.checkpoint_every": 5}
CLUSTER_FILE = {"defaults": {"cpus": 1, "time": "30:00", "mem": "2G"}, "kinds": {"train": {"time": "20:00"}},
                "log_dir": "logs/slurm", "signal_grace": 60}
PY = scratch_repo.BIN / "python"


def _sh(args, cwd, env, timeout=1500, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-4000:]}\n"
                             f"{r.stderr[-4000:]}")
    return r


def _lock_entries(d: Path) -> dict[tuple[str, str], str]:
    """``(lock file, stage) -> the stage's entry exactly as DVC wrote it`` for every dvc.lock of the checkout ``d``
    (entries are in the order the stages first finished, which differs between a serial and a parallel run)."""
    out = {}
    for f in [d / "dvc.lock", *sorted(d.glob("pipelines/*/dvc.lock"))]:
        if not f.is_file():
            continue
        head, _, body = f.read_text().partition("\nstages:\n")
        assert head == "schema: '2.0'", (f, head)
        name = None
        for line in body.splitlines(keepends=True):
            if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
                name = line.strip()[:-1]
                out[(f.relative_to(d).as_posix(), name)] = ""
            out[(f.relative_to(d).as_posix(), name)] += line
    return out


def _runner(d: Path, *extra: str) -> list[str]:
    return [PY, "-m", "greg_ood.cli.repro", TARGET, "--executor", "slurm", "--cluster-config", d / "cluster.yaml",
            *extra]


@pytest.fixture(scope="module")
def cluster():
    why = slurm_cluster.why_unavailable()
    if why:
        pytest.skip(why)
    c = slurm_cluster.SlurmCluster().start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The reference: a serial local `dvc repro` of the target (local SQLite store)."""
    d = tmp_path_factory.mktemp("serial") / "repo"
    env = scratch_repo.build(d, SMALL)
    _sh([scratch_repo.BIN / "dvc", "repro", TARGET], d, env, timeout=1800)
    return d


def _requeue_train_mid_run(c: slurm_cluster.SlurmCluster, d: Path, done: dict) -> None:
    """Once the train job runs and has written its first checkpoint, requeue it (SIGTERM, back to the queue) and
    release the requeued job at once (SLURM otherwise holds a requeued job for about two minutes)."""
    deadline = time.monotonic() + 1500
    job = ""
    while time.monotonic() < deadline and not done.get("stop"):
        out = c.run("squeue", "-h", "-n", f"greg:{TRAIN}", "-o", "%i %T", check=False).stdout.split()
        if out and out[1] == "RUNNING" and list(d.glob("checkpoints/mini/*.pt")):
            job = out[0]
            break
        time.sleep(0.2)
    if not job:
        return
    c.scontrol("requeue", job)
    done["requeued"] = job
    while time.monotonic() < deadline:
        state = c.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip()
        if state == "PENDING":
            c.scontrol("update", f"JobId={job}", "StartTime=now", check=False)
        elif state in ("RUNNING", "COMPLETED", ""):
            return
        time.sleep(0.5)


@pytest.fixture(scope="module")
def run(cluster, team_server, tmp_path_factory):  # noqa: F811
    """The SLURM runs in one scratch copy; returns what the tests look at."""
    d = tmp_path_factory.mktemp("slurm") / "repo"
    env = scratch_repo.build(d, SMALL)
    (d / "cluster.yaml").write_text(yaml.safe_dump(CLUSTER_FILE))
    base_env = {**env, **cluster.env()}
    env = {**base_env, "MLFLOW_TRACKING_URI": team_server.url}
    out = {"d": d, "env": env, "cluster": cluster, "server": team_server}
    out["no_server"] = _sh(_runner(d), d, base_env, timeout=300, check=False)
    out["dry"] = _sh(_runner(d, "--dry-run"), d, env, timeout=300, check=False)
    out["queue_after_checks"] = cluster.run("squeue", "-h", "-t", "all").stdout

    params = d / "params.yaml"
    good = params.read_text()
    raw = yaml.safe_load(good)
    raw["project"]["device"] = "cuda:99"  # valid, so planned; pretrain (the first stage that uses it) then fails
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    out["failed"] = _sh(_runner(d), d, env, timeout=1500, check=False)
    out["records_after_failure"] = cluster.job_records()
    params.write_text(good)

    done: dict = {}
    watcher = threading.Thread(target=_requeue_train_mid_run, args=(cluster, d, done), daemon=True)
    watcher.start()
    t0 = time.monotonic()
    out["second"] = _sh(_runner(d), d, env, timeout=1800, check=False)
    out["second_wall"] = time.monotonic() - t0
    done["stop"] = True
    watcher.join(timeout=60)
    out["requeue"] = done
    out["records"] = cluster.job_records()
    return out


def _last_state(records: list[dict], stage: str) -> str:
    states = [r["JobState"] for r in records if r.get("Name") == f"greg:{stage}"]
    return states[-1] if states else "(no record)"


@pytest.mark.slow
def test_checks_stop_before_submitting(run):
    r = run["no_server"]
    assert r.returncode == 2, r.stdout + r.stderr
    assert "needs an MLflow tracking server" in r.stderr and "MLFLOW_TRACKING_URI" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    dry = run["dry"]
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"{len(UPSTREAM) + 1} stage(s) of {TARGET} to submit" in dry.stdout, dry.stdout
    assert "--kill-on-invalid-dep=yes" in dry.stdout and "--requeue" in dry.stdout, dry.stdout
    train_block = dry.stdout.split(f"job {len(UPSTREAM) + 1}: {TRAIN}")[1]
    assert "--time=20:00" in train_block and "afterok on: " in train_block, dry.stdout
    assert "pretrain_mini@small_cnn" in train_block and "select_mini@small_cnn" in train_block, train_block
    assert run["queue_after_checks"].strip() == "", run["queue_after_checks"]  # nothing was submitted


@pytest.mark.slow
def test_a_failed_stage_cancels_its_dependents_and_is_named(run):
    r = run["failed"]
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error: stage pretrain_mini@small_cnn failed" in r.stderr, r.stderr
    log = next(ln.split("its log: ", 1)[1] for ln in r.stderr.splitlines() if "pretrain_mini@small_cnn failed" in ln)
    text = Path(log).read_text()
    assert "CUDA is not available" in text or "invalid device ordinal" in text, text[-3000:]
    assert "select_mini@small_cnn" in r.stderr and TRAIN in r.stderr, r.stderr  # named as cancelled
    rec = run["records_after_failure"]
    assert _last_state(rec, "pretrain_mini@small_cnn") == "FAILED", rec
    for st in ("select_mini@small_cnn", TRAIN):
        assert _last_state(rec, st) == "CANCELLED", (st, rec)
    for st in UPSTREAM[:7]:
        assert _last_state(rec, st) == "COMPLETED", (st, rec)


@pytest.mark.slow
def test_rerun_submits_only_what_is_not_done_and_every_job_completes(run):
    r = run["second"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + run["cluster"].logs()
    assert f"3 stage(s) of {TARGET} to submit" in r.stdout, r.stdout  # pretrain, select, train: not the downloads
    rec = run["records"]
    for st in [*UPSTREAM, TRAIN]:
        assert _last_state(rec, st) == "COMPLETED", (st, rec)
    st = _sh([scratch_repo.BIN / "dvc", "status", TARGET, "--json"], run["d"], run["env"])
    assert json.loads(st.stdout or "{}") == {}, st.stdout


@pytest.mark.slow
def test_dvc_lock_is_byte_identical_to_a_serial_local_run(run, serial):
    """Every stage's lock entry (deps, params, outs with their md5s) is byte-identical to the serial run's, in the same
    dvc.lock file; only the order of the entries follows the order in which the stages finished."""
    ours, ref = _lock_entries(run["d"]), _lock_entries(serial)
    assert len(ref) == len(UPSTREAM) + 1, sorted(ref)
    assert ours == ref


@pytest.mark.slow
def test_requeued_train_job_resumes_to_the_same_model(run, serial):
    job = run["requeue"].get("requeued")
    assert job, "the train job was never seen running with a checkpoint"
    rec = [r for r in run["records"] if r.get("JobId") == job]
    assert len(rec) >= 2 and rec[-1]["JobState"] == "COMPLETED", rec  # a record per run of the job
    log = next((run["d"] / "logs" / "slurm").glob(f"{TRAIN}.{job}.log")).read_text()
    assert "resuming from" in log, log[-3000:]
    model = "models/mini/mini-greg-small_cnn-s0.pt"  # the train stage's out
    assert (run["d"] / model).read_bytes() == (serial / model).read_bytes()


@pytest.mark.slow
def test_mlflow_runs_finished_without_duplicate_steps(run):
    server = run["server"]
    exp = server.get_json("/api/2.0/mlflow/experiments/get-by-name", experiment_name="greg-ood/mini")["experiment"]
    runs = server.post_json("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                             "max_results": 500}).get("runs", [])
    by_stage: dict[str, list] = {}
    for r in runs:
        tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        by_stage.setdefault(tags.get("dvc.stage"), []).append(r)
    for st in ("pretrain_mini@small_cnn", "select_mini@small_cnn", TRAIN):
        assert st in by_stage, sorted(by_stage)
    assert all(r["info"]["status"] != "RUNNING" for r in runs), [(r["info"]["run_name"], r["info"]["status"])
                                                                 for r in runs]
    train = by_stage[TRAIN]
    assert len(train) == 1 and train[0]["info"]["status"] == "FINISHED", train  # the requeued job continued its run
    for st in ("select_mini@small_cnn", TRAIN):
        assert all(r["info"]["status"] == "FINISHED" for r in by_stage[st]), by_stage[st]
    rid = train[0]["info"]["run_id"]
    for key in ("loss/grad_penalty", "train/lr"):
        hist = server.get_json("/api/2.0/mlflow/metrics/get-history", run_id=rid, metric_key=key,
                               max_results=10000)["metrics"]
        steps = [h["step"] for h in hist]
        assert steps and len(steps) == len(set(steps)), (key, sorted(steps))


# ------------------------------------------------------------------------------------------------- no SLURM needed
def test_resources_merge_defaults_kind_and_stage_globs(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"defaults": {"partition": "gpu", "cpus": 4, "gpus": 0, "time": "1:00:00"},
                                 "kinds": {"train": {"gpus": 1, "time": "8:00:00"}, "report": {"partition": "cpu"}},
                                 "stages": {"train_cifar10@greg_plus-*": {"time": "12:00:00", "extra": "--qos=long"}},
                                 "signal_grace": 120}))
    c = slurm.load_cluster(str(f))
    tr = "pipelines/train_cifar10/dvc.yaml:train_cifar10@greg_plus-wrn40_2-0"
    assert slurm.kind(tr) == "train" and slurm.kind("report_cifar10") == "report"
    assert slurm.kind("evaluate_mini_pretrained@small_cnn") == "evaluate"
    assert slurm.sbatch_flags(slurm.resources(c, tr), c.signal_grace) == [
        "--partition=gpu", "--time=12:00:00", "--cpus-per-task=4", "--gpus=1", "--qos=long", "--requeue",
        "--signal=B:USR1@120"]
    assert slurm.sbatch_flags(slurm.resources(c, "report_cifar10"), 300) == [
        "--partition=cpu", "--time=1:00:00", "--cpus-per-task=4", "--requeue", "--signal=B:USR1@300"]
    assert slurm.stage_resources(c, tr, need=4)["gpus"] == 4  # train.nproc = 4 gets 4 GPUs
    assert "gpus" not in slurm.sbatch_flags(slurm.stage_resources(c, "report_cifar10", need=4), 1)


def test_cluster_file_errors_name_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"kinds": {"train": {"gpu": 1}}}))
    with pytest.raises(slurm.ClusterError, match=r"kinds.train has unknown key\(s\) \['gpu'\]"):
        slurm.load_cluster(str(f))
    with pytest.raises(slurm.ClusterError, match="not found"):
        slurm.load_cluster(str(tmp_path / "missing.yaml"))


def test_example_cluster_file_loads():
    c = slurm.load_cluster(str(Path(__file__).resolve().parents[1] / "cluster.example.yaml"))
    assert slurm.resources(c, "train_cifar10@greg-wrn40_2-0")["gpus"] == 1
    assert not slurm.resources(c, "download@cifar10").get("gpus")


def test_tracking_must_be_a_server():
    with pytest.raises(slurm.ClusterError, match="needs an MLflow tracking server"):
        slurm.check_tracking({"MLFLOW_TRACKING_URI": "sqlite:///x/mlflow.db"})
    with pytest.raises(slurm.ClusterError, match="needs an MLflow tracking server"):
        slurm.check_tracking({})


def test_fs_type_finds_the_mount_of_a_path():
    assert slurm.fs_type(Path("/proc/self")) == "proc"
    if Path("/proc/mounts").exists():
        assert slurm.fs_type(Path("/")) != ""


@pytest.mark.slow
def test_job_wrapper_turns_usr1_into_sigint_for_the_stage(tmp_path):
    """The time-limit path without SLURM: USR1 to the job's wrapper reaches the stage as SIGINT (DVC ignores SIGINT
    while the command runs), the stage stops, DVC exits on its own (its rwlock released) and the wrapper returns the
    failure (inside a job it would then requeue itself)."""
    import os
    import signal as sig

    env = scratch_repo.scratch_env(tmp_path)
    stage = ("import signal, sys, time, pathlib\n"
             "def stop(*a):\n    pathlib.Path('stopped').write_text('SIGINT'); sys.exit(1)\n"
             "signal.signal(signal.SIGINT, stop)\npathlib.Path('started').write_text('')\n"
             "[time.sleep(0.1) for _ in range(3000)]\npathlib.Path('out').write_text('done')\n")
    (tmp_path / "stage.py").write_text(stage)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {"cmd": f"{PY} stage.py", "deps": ["stage.py"],
                                                                        "outs": ["out"]}}}))
    _sh(["git", "init", "-q"], tmp_path, env)
    _sh([PY, "-m", "dvc", "init", "-q"], tmp_path, env)
    p = subprocess.Popen([str(PY), "-m", "greg_ood.cli.slurm", "job", "s"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "started").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert (tmp_path / "started").exists(), p.communicate(timeout=60)[0]
    os.kill(p.pid, sig.SIGUSR1)
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0 and "Running stage 's'" in out, out
    assert (tmp_path / "stopped").read_text() == "SIGINT", out
    assert not (tmp_path / "out").exists(), out
    rw = tmp_path / ".dvc" / "tmp" / "rwlock"
    assert not rw.exists() or json.loads(rw.read_text() or "{}") in ({}, {"read": {}, "write": {}}), rw.read_text()
