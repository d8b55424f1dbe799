"""SLURM as the executor of ``python -m greg_ood.cli.repro <target> --executor slurm``: one job per stage.

The plan is the local runner's (:func:`greg_ood.cli.repro.plan`: DVC's own graph, the stages DVC reports changed and
everything downstream of them). Each planned stage becomes one ``sbatch`` job that runs, in the shared checkout,

    dvc --wait-for-lock repro --single-item <stage>

(through :func:`job`, a thin wrapper that turns SLURM's time-limit warning into a checkpoint and a requeue), with
``--dependency=afterok:<the jobs of its planned upstream stages>`` and ``--kill-on-invalid-dep=yes``: a failed job
makes SLURM cancel everything downstream of it. DVC decides and records as always, so a job whose stage turned out
unchanged does nothing, and running the same command again submits only what DVC says is not done.

Resources come from a cluster settings file (``cluster.example.yaml``), never from ``params.yaml``: a partition or a
time limit is not part of any result. Preemption and time limits: every job is submitted with ``--requeue`` and
``--signal=B:USR1@<grace>``. On SLURM's SIGTERM (preemption, ``scontrol requeue``) the trainer saves its position and
stops; on USR1 (the time limit is near) :func:`job` interrupts the stage the same way and requeues the job itself.
The requeued job runs the same ``dvc repro`` and the trainer resumes from its checkpoint to the same final model.

Why ``sbatch`` and not submitit: the job is a shell command (``dvc repro``), not a pickled Python call, so submitit's
function serialisation adds nothing; its requeue-on-timeout is the few lines in :func:`job`; and ``sbatch`` is on
every SLURM login node while submitit would be one more dependency to install and pin.

Before submitting, the runner checks what many jobs on several nodes need: an MLflow tracking *server*
(``MLFLOW_TRACKING_URI=http(s)://...``; many jobs writing one SQLite file on a network filesystem can corrupt it) and,
when the checkout is on a network filesystem, DVC's ``core.hardlink_lock`` (DVC's default ``flock`` locks are not
reliable there). See docs/scale-out.md, "A cluster: SLURM".
"""
from __future__ import annotations

import fnmatch
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

#: keys a resource block of the cluster file may set
RESOURCE_KEYS = ("partition", "account", "time", "cpus", "mem", "gpus", "extra")
#: a job's states after which it will not run again (``PREEMPTED`` without requeue, ``REQUEUED`` is not one)
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "SPECIAL_EXIT", "UNKNOWN"}
#: filesystem types on which DVC's default (flock) locks cannot be trusted across nodes
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.sshfs", "glusterfs",
              "fuse.glusterfs", "9p", "afs", "panfs", "fuse.cephfs", "wekafs")
DEFAULT_GRACE = 300  # s before the time limit at which a job checkpoints and requeues itself


class ClusterError(RuntimeError):
    """A problem the user must fix before anything is submitted (one sentence)."""


# ------------------------------------------------------------------------------------------------- settings
@dataclass
class Cluster:
    """The cluster settings file: resources per stage kind, per-stage overrides, job set-up lines, log folder."""

    defaults: dict = field(default_factory=dict)
    kinds: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)  # glob on the stage name -> resources (last match wins)
    setup: str = ""
    log_dir: str = "logs/slurm"
    signal_grace: int = DEFAULT_GRACE


def load_cluster(path: Optional[str]) -> Cluster:
    """Read the cluster settings file (``None``: no resources beyond the cluster's defaults)."""
    if path is None:
        return Cluster()
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ClusterError(f"cluster settings file {p} not found; copy cluster.example.yaml and pass its path to "
                           f"--cluster-config")
    raw = yaml.safe_load(p.read_text()) or {}
    known = {"defaults", "kinds", "stages", "setup", "log_dir", "signal_grace"}
    unknown = set(raw) - known
    if unknown:
        raise ClusterError(f"{p}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    blocks = [("defaults", raw.get("defaults") or {})]
    blocks += [(f"kinds.{k}", v or {}) for k, v in (raw.get("kinds") or {}).items()]
    blocks += [(f"stages.{k}", v or {}) for k, v in (raw.get("stages") or {}).items()]
    for where, block in blocks:
        bad = set(block) - set(RESOURCE_KEYS)
        if bad:
            raise ClusterError(f"{p}: {where} has unknown key(s) {sorted(bad)}; allowed: {list(RESOURCE_KEYS)}")
    return Cluster(defaults=raw.get("defaults") or {}, kinds=raw.get("kinds") or {}, stages=raw.get("stages") or {},
                   setup=raw.get("setup") or "", log_dir=raw.get("log_dir") or "logs/slurm",
                   signal_grace=int(raw.get("signal_grace", DEFAULT_GRACE)))


def kind(stage: str) -> str:
    """A stage's kind, the script it runs: ``pipelines/train_mini/dvc.yaml:train_mini@greg-small_cnn-0`` -> train."""
    return stage.rsplit(":", 1)[-1].split("@")[0].split("_")[0]


def short(stage: str) -> str:
    return stage.rsplit(":", 1)[-1]


def resources(cluster: Cluster, stage: str) -> dict:
    """The stage's resources: defaults, then its kind's block, then every ``stages`` glob that matches its name."""
    res = {**cluster.defaults, **(cluster.kinds.get(kind(stage)) or {})}
    for pattern, block in cluster.stages.items():
        if fnmatch.fnmatchcase(short(stage), pattern):
            res.update(block)
    return res


def sbatch_flags(res: dict, grace: int) -> list[str]:
    """sbatch flags for a resource block (always ``--requeue`` and the time-limit warning signal)."""
    flags = []
    for key, flag in (("partition", "--partition"), ("account", "--account"), ("time", "--time"),
                      ("cpus", "--cpus-per-task"), ("mem", "--mem")):
        if res.get(key) not in (None, ""):
            flags.append(f"{flag}={res[key]}")
    if res.get("gpus"):
        flags.append(f"--gpus={res['gpus']}")
    extra = res.get("extra") or []
    flags += shlex.split(extra) if isinstance(extra, str) else [str(x) for x in extra]
    return flags + ["--requeue", f"--signal=B:USR1@{grace}"]


# ------------------------------------------------------------------------------------------------- checks
def check_tracking(env: dict) -> str:
    """The MLflow tracking server's URI; raises when the jobs would write a local SQLite store instead."""
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise ClusterError(
            "--executor slurm needs an MLflow tracking server, because many jobs writing one SQLite file on a shared "
            f"filesystem can corrupt it: start one (tools/mlflow_server.sh, docs/team-server.md) and export "
            f"MLFLOW_TRACKING_URI=http://HOST:PORT (now {uri or 'unset'}).")
    from greg_ood.run import tracking

    try:
        tracking.check_reachable(uri)
    except tracking.TrackingError as exc:
        raise ClusterError(str(exc)) from None
    return uri


def fs_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts; "" when unknown)."""
    path = path.resolve()
    best, typ = "", ""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, typ = mnt, parts[2]
    return typ


def check_dvc_shared(root: Path) -> list[str]:
    """DVC settings the jobs need in a checkout that several nodes share. Raises on what would break; returns notes.

    On a network filesystem DVC's default ``flock`` locks are not reliable across nodes, so ``core.hardlink_lock``
    must be true. On a local filesystem nothing is required, but only jobs on this host can see the checkout."""
    from dvc.repo import Repo

    typ = fs_type(root)
    with Repo(str(root)) as repo:
        core = repo.config.get("core", {})
        hardlink = bool(core.get("hardlink_lock", False))
        site_cache = core.get("site_cache_dir")
    notes = []
    if typ in NETWORK_FS or typ.startswith("nfs"):
        if not hardlink:
            raise ClusterError(f"the checkout {root} is on {typ}, where DVC's default locks are unreliable across "
                               f"nodes: run `dvc config core.hardlink_lock true` (and commit .dvc/config) first.")
        notes.append(f"{root} is on {typ}; core.hardlink_lock is true")
        if site_cache and fs_type(Path(site_cache)) in NETWORK_FS:
            notes.append(f"warning: core.site_cache_dir {site_cache} is on a network filesystem; DVC keeps SQLite "
                         "caches there: leave it unset (a node-local /var/tmp)")
    else:
        notes.append(f"{root} is on a local filesystem ({typ or 'unknown'}): only jobs on this host can see it "
                     "(fine for a one-node cluster; put the checkout on the shared filesystem otherwise)")
    return notes


# ------------------------------------------------------------------------------------------------- jobs
@dataclass
class Job:
    stage: str
    flags: list[str]
    after: list[str]  # the stages (planned upstream) whose jobs must complete first
    job_id: str = ""
    state: str = "PENDING"
    reason: str = ""
    log: str = ""


def stage_resources(cluster: Cluster, stage: str, need: int = 0) -> dict:
    """The stage's resources; a stage that trains on k > 1 processes (``train.nproc``) gets at least k GPUs when its
    block asks for GPUs at all (a CPU-only block stays CPU-only: DDP then runs k gloo processes)."""
    res = resources(cluster, stage)
    if res.get("gpus") and need > int(res["gpus"]):
        res["gpus"] = need
    return res


def jobs_for(p, cluster: Cluster) -> list[Job]:
    """One job per planned stage, upstream first."""
    needs = getattr(p, "needs", {}) or {}
    return [Job(stage=s, flags=sbatch_flags(stage_resources(cluster, s, needs.get(s, 0)), cluster.signal_grace),
                after=[u for u in p.order if u in p.waits_for.get(s, set())]) for s in p.order]


def job_command(stage: str, cluster: Cluster, force: bool = False) -> str:
    """The batch script's body: the cluster's set-up lines, then :func:`job` on the stage."""
    cmd = shlex.join([sys.executable, "-m", "greg_ood.cli.slurm", "job", *(["--force"] if force else []), stage])
    return "\n".join([*(ln for ln in cluster.setup.splitlines() if ln.strip()), f"exec {cmd}"])


def log_path(root: Path, cluster: Cluster, stage: str) -> Path:
    """Where the job's output goes (``%j``: the job id; a requeued job keeps its id and appends)."""
    safe = short(stage).replace("/", "_")
    return (root / cluster.log_dir / f"{safe}.%j.log").absolute()


def sbatch(job: Job, root: Path, cluster: Cluster, env: dict, force: bool = False) -> str:
    """Submit one job; return its id."""
    deps = [f"--dependency=afterok:{':'.join(job.after)}", "--kill-on-invalid-dep=yes"] if job.after else []
    argv = ["sbatch", "--parsable", f"--job-name=greg:{short(job.stage)}", f"--chdir={root}",
            f"--output={log_path(root, cluster, job.stage)}", "--open-mode=append", *deps, *job.flags]
    script = "#!/bin/bash\n" + job_command(job.stage, cluster, force) + "\n"
    r = subprocess.run(argv, input=script, capture_output=True, text=True, env=env, timeout=120)
    if r.returncode:
        raise ClusterError(f"sbatch refused the job of stage {short(job.stage)}: {r.stderr.strip()}")
    return r.stdout.strip().split(";")[0]


def submit(jobs: list[Job], root: Path, cluster: Cluster, env: dict, force: bool = False) -> None:
    """Submit every job, upstream first, each depending on its upstream jobs' ids."""
    ids: dict[str, str] = {}
    for job in jobs:
        up = Job(job.stage, job.flags, [ids[s] for s in job.after])
        try:
            job.job_id = ids[job.stage] = sbatch(up, root, cluster, env, force)
        except ClusterError:
            if ids:  # all or nothing: a half-submitted plan would run without the rest
                subprocess.run(["scancel", *ids.values()], env=env, capture_output=True, timeout=120)
                print(f"cancelled the {len(ids)} job(s) already submitted", file=sys.stderr)
            raise
        job.log = str(log_path(root, cluster, job.stage)).replace("%j", job.job_id)
        print(f"[{short(job.stage)}] job {job.job_id}" + (f" after {', '.join(ids[s] for s in job.after)}"
                                                          if job.after else ""), flush=True)


def states(job_ids: list[str], env: dict) -> dict[str, tuple[str, str]]:
    """``job id -> (state, reason)`` from squeue (jobs SLURM still remembers), then sacct for the others."""
    out: dict[str, tuple[str, str]] = {}
    r = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"],
                       capture_output=True, text=True, env=env, timeout=60)
    for line in r.stdout.splitlines():
        jid, state, reason = (line.split("|") + ["", ""])[:3]
        out[jid.strip()] = (state.strip(), reason.strip())
    missing = [j for j in job_ids if j not in out]
    if missing:
        r = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(missing), "-o", "JobID,State"],
                           capture_output=True, text=True, env=env, timeout=60)
        for line in r.stdout.splitlines():
            jid, _, state = line.partition("|")
            if jid in missing and state:
                out[jid] = (state.split()[0], "")
    return out


def watch(jobs: list[Job], env: dict, poll: float = 5.0) -> None:
    """Wait until every job reached a final state, printing each change of state."""
    by_id = {j.job_id: j for j in jobs}
    t0, unknown_since = time.monotonic(), {}
    while True:
        live = [j for j in jobs if j.state not in FINAL]
        if not live:
            return
        seen = states([j.job_id for j in live], env)
        for jid, (state, reason) in seen.items():
            j = by_id.get(jid)
            if j and (state, reason) != (j.state, j.reason):
                j.state, j.reason = state, reason
                print(f"[{short(j.stage)}] {state}" + (f" ({reason})" if reason and reason != "None" else "")
                      + f" at {time.monotonic() - t0:.0f} s", flush=True)
        for j in live:  # neither squeue nor sacct knows it any more (purged, no accounting): lost after 2 min
            if j.job_id in seen:
                unknown_since.pop(j.job_id, None)
            elif time.monotonic() - unknown_since.setdefault(j.job_id, time.monotonic()) > 120:
                j.state, j.reason = "UNKNOWN", "no longer known to squeue or sacct"
        time.sleep(poll)


def report(jobs: list[Job]) -> int:
    """Name each failed stage and its log; return the exit status (0: every job COMPLETED)."""
    failed = [j for j in jobs if j.state != "COMPLETED" and "Dependency" not in j.reason]
    cancelled = [j for j in jobs if j.state != "COMPLETED" and "Dependency" in j.reason]
    for j in failed:
        print(f"error: stage {short(j.stage)} failed (SLURM job {j.job_id}: {j.state}); its log: {j.log}",
              file=sys.stderr)
    if cancelled:
        print(f"error: {len(cancelled)} stage(s) downstream were cancelled by SLURM: "
              f"{', '.join(short(j.stage) for j in cancelled)}", file=sys.stderr)
    if failed or cancelled:
        print("Fix the cause and run the same command again: DVC keeps the finished stages and only the others are "
              "submitted.", file=sys.stderr)
        return 1
    return 0


def print_dry(jobs: list[Job], root: Path, cluster: Cluster) -> None:
    """What would be submitted: each job's sbatch flags, command and the jobs it waits for."""
    for n, j in enumerate(jobs, 1):
        print(f"job {n}: {short(j.stage)}")
        print(f"  sbatch {' '.join(j.flags)} --output={log_path(root, cluster, j.stage)}")
        if j.after:
            print(f"  --dependency=afterok on: {', '.join(short(s) for s in j.after)} --kill-on-invalid-dep=yes")
        print(f"  runs: dvc --wait-for-lock repro --single-item {j.stage}")


def run(target: str, cluster_config: Optional[str], plan: Callable, dry_run: bool = False, force: bool = False,
        root: str = ".", poll: float = 5.0) -> int:
    """The ``--executor slurm`` path of :mod:`greg_ood.cli.repro`: check, plan, submit, wait, report. ``plan`` is the
    runner's :func:`greg_ood.cli.repro.plan` (passed in, so that this module does not import the runner that
    imports it)."""
    env = dict(os.environ)
    rootp = Path(root).resolve()
    try:
        cluster = load_cluster(cluster_config)
        try:
            p = plan(target, root=str(rootp), force=force, devices=True)  # devices: each stage's GPU need
        except Exception as exc:  # DVC's own message names the stage or file
            raise ClusterError(f"cannot plan `dvc repro {target}`: {exc}") from None
        jobs = jobs_for(p, cluster)
        print(f"{len(jobs)} stage(s) of {target} to submit ({p.unchanged} up to date)", flush=True)
        if dry_run:
            print_dry(jobs, rootp, cluster)
            return 0
        if not jobs:
            return 0
        check_tracking(env)
        for note in check_dvc_shared(rootp):
            print(note, flush=True)
        (rootp / cluster.log_dir).mkdir(parents=True, exist_ok=True)
        submit(jobs, rootp, cluster, env, force)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        watch(jobs, env, poll)
    except KeyboardInterrupt:
        print(f"interrupted: the jobs keep running; cancel them with scancel {' '.join(j.job_id for j in jobs)}",
              file=sys.stderr)
        return 130
    rc = report(jobs)
    if rc == 0:
        left = plan(target, root=str(rootp)).order
        if left:
            print(f"error: every job COMPLETED but DVC still reports {len(left)} stage(s) not done, e.g. "
                  f"{short(left[0])}; run the same command again.", file=sys.stderr)
            return 1
        print(f"{target}: {len(jobs)} SLURM job(s) COMPLETED", flush=True)
    return rc


# ------------------------------------------------------------------------------------------------- inside a job
def job(stage: str, force: bool = False) -> int:
    """Run ``dvc --wait-for-lock repro --single-item <stage>`` inside a SLURM job.

    SIGTERM (preemption, ``scontrol requeue``, ``scancel``) reaches every process of the job: the stage saves its
    checkpoint and stops; this process waits for it instead of dying first. SIGUSR1 (``--signal=B:USR1@grace``: the
    time limit is near) reaches only this process: it interrupts the stage with SIGINT (DVC ignores SIGINT while the
    stage's command runs; the trainer checkpoints on it), waits, then requeues its own job so it resumes."""
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []),
           stage]
    proc = subprocess.Popen(cmd, start_new_session=True)
    state = {"requeue": False}

    def on_usr1(signum, frame):
        state["requeue"] = True
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, lambda *a: None)  # wait for the stage's own checkpoint-and-stop
    rc = proc.wait()
    _wait_group(proc.pid)
    if state["requeue"] and os.environ.get("SLURM_JOB_ID"):
        print(f"time limit near: stage {short(stage)} stopped at its checkpoint; requeueing job "
              f"{os.environ['SLURM_JOB_ID']}", flush=True)
        subprocess.call(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]])
        time.sleep(60)  # SLURM signals and ends this run of the job
    return rc if rc >= 0 else 128 - rc


def _wait_group(pgid: int, timeout: float = 600) -> None:
    """Wait until no process of the stage's process group is left (a checkpoint may still be being written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m greg_ood.cli.slurm",
                                 description="inside a SLURM job: run one stage (see python -m greg_ood.cli.repro "
                                             "--executor slurm)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("job", help="run one stage as this job")
    j.add_argument("stage")
    j.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    return job(args.stage, args.force)


if __name__ == "__main__":
    sys.exit(main())
