"""``dvc repro`` of one target with independent stages run side by side (``make mini`` / ``make fmnist``), optionally
each on GPUs of its own, with progress and an estimate of the time left.

DVC 3 runs a pipeline's stages one after the other. Most of a small stage's time is single-threaded start-up (Python
imports, DVC loading and rewriting its lock, MLflow opening its store), so on a 2-core machine two stages at a time
finish the ``mini`` suite in about two thirds of the serial time (reports/bench/pipeline.md). Nothing here decides
*whether* a stage runs: every stage is run by DVC itself, ``dvc --wait-for-lock repro --single-item <stage>``, which
checks its deps, runs its command, caches its outs and writes its lock entry exactly as ``dvc repro <target>`` would.
This module only decides *when* and *where*:

1. plan: the target's stages (DVC's own graph, ``Repo.index.graph``), keeping those DVC reports as changed and
   everything downstream of them; a stage that turns out unchanged once its upstream has run is skipped by DVC;
2. run: a stage starts when every planned stage it depends on has finished, at most ``--jobs`` at a time, the one
   with the longest chain of stages still waiting for it first; each stage's output lines are printed with its name in
   front, without the tools' boilerplate (:data:`BOILERPLATE`), and one progress line per start and finish gives the
   elapsed time and an estimate of the time left (:func:`estimate_left`); a stage silent for a minute gets a
   ``still running`` line;
3. check: a final plain ``dvc repro <target>``: it runs whatever the plan missed and normally reports that the
   pipeline is up to date, so the result is the same as running ``dvc repro <target>`` alone.

**Many GPUs (``--gpus all|0,1,3``).** Each stage that needs a GPU starts only when enough of the listed devices are
free and gets them as its own ``CUDA_VISIBLE_DEVICES`` (it sees them as ``cuda:0..k-1``; ``project.device: auto``
picks them); a stage that needs none sees no GPU and counts against ``--jobs`` instead. What a stage needs is read
from what it runs (:func:`device_need`): a stage script that picks a device (its import closure holds
``greg_ood/runtime.py``: pretrain, select, train, evaluate, certify) needs one, a train stage under DDP its
``train.nproc``; a script that imports ``greg_ood`` but never picks a device (download, report) needs none; any other
command gets one to be safe; ``meta: {gpus: k}`` on a stage in ``dvc.yaml`` overrides (DVC ignores ``meta``). The
device list lives in the environment only, never in params or ``dvc.lock``, so which GPU ran a stage does not change
what DVC records.

Concurrency is DVC's own: it releases the repository lock while a stage's command runs (``--wait-for-lock`` makes
the other worker wait for it instead of failing) and guards each stage's deps and outs with its read/write locks.
Two stages never write the same lock file concurrently: DVC rewrites a ``dvc.lock`` only while holding the
repository lock and reads it afresh first.

**Results do not depend on ``--jobs`` or ``--gpus``.** Each stage keeps torch's thread count
(``project.num_threads``; 0 = torch's default), because that count changes floating-point summation order and
therefore the bits of a trained model. Two multi-threaded stages share the cores with ``OMP_WAIT_POLICY=PASSIVE``
(set here unless the caller set it), which stops OpenMP threads from spinning while they wait; it changes no
arithmetic. Checked: the end-to-end test runs its tiny suite through this runner and re-runs stages one at a time with
plain ``dvc repro``, comparing the lock files byte for byte (tests/test_pipeline_e2e.py); a fresh clone's ``make
mini`` reproduced every output md5 of a serial run (reports/bench/make-mini.md).

    python -m greg_ood.cli.repro report_mini            # two stages at a time (default)
    python -m greg_ood.cli.repro report_mini --jobs 1   # one at a time, like `dvc repro report_mini`
    python -m greg_ood.cli.repro report_cifar10 --gpus all   # one stage per GPU, downloads/reports 2 at a time
    python -m greg_ood.cli.repro report_mini --dry      # the plan only

A failing stage stops new starts; the stages already running finish (their results are kept, as with ``dvc repro``),
and the command exits non-zero naming the stage. Run it again after the fix: finished stages are not re-run.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, TextIO

DEFAULT_JOBS = 2
HEARTBEAT_S = 60.0  # a running stage that printed nothing for this long gets a `still running` line


@dataclass
class Plan:
    """The stages to run (DVC addresses, in a dependency order) and, for each, the planned stages it waits for."""

    order: list[str]
    waits_for: dict[str, set[str]] = field(default_factory=dict)
    unchanged: int = 0  # stages of the target's closure that DVC reports up to date and nothing upstream will change
    needs: dict[str, int] = field(default_factory=dict)  # GPUs each stage needs (filled only for --gpus)


def plan(target: str, root: str = ".", force: bool = False, devices: bool = False) -> Plan:
    """The target's stages that DVC would run, with their dependencies among themselves.

    A stage is planned if DVC reports it changed (``Stage.changed()``: deps, outs, command or params differ from its
    lock entry, or it never ran) or if any stage it depends on is planned. ``force`` plans every stage. With
    ``devices``, each planned stage's GPU need is read too (:func:`device_need`)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(root) as repo, repo.lock:
        stages = repo.stage.collect(target, with_deps=True)
        graph = repo.index.graph.subgraph(stages)  # edge stage -> the stage that writes one of its deps
        order = list(reversed(list(nx.topological_sort(graph))))  # upstream first
        planned: set = set()
        for st in order:
            if force or any(up in planned for up in graph.successors(st)) or st.changed():
                planned.add(st)
        addr = {st: st.addressing for st in stages}
        run = [st for st in order if st in planned]
        nproc = ExperimentNproc(Path(repo.root_dir) / "params.yaml")
        return Plan(order=[addr[st] for st in run],
                    waits_for={addr[st]: {addr[up] for up in graph.successors(st) if up in planned} for st in run},
                    unchanged=len(stages) - len(run),
                    needs={addr[st]: device_need(st.cmd, st.meta, st.wdir, nproc) for st in run} if devices else {})


def short(address: str) -> str:
    """A stage's name without its dvc.yaml (``pipelines/train_mini/dvc.yaml:train_mini@x`` -> ``train_mini@x``)."""
    return address.rsplit(":", 1)[-1]


def kind(address: str) -> str:
    """A stage's kind: its name before ``@`` (``...:train_mini@greg-small_cnn-0`` -> ``train_mini``)."""
    return short(address).split("@", 1)[0]


def priority(p: Plan) -> dict[str, int]:
    """Each planned stage's height: the number of planned stages on the longest chain that waits for it (the target:
    0). Ready stages start highest first, so the chain to the target (pretrain, select, ...) is never kept waiting
    behind stages that nothing else needs yet."""
    height: dict[str, int] = {}
    for name in reversed(p.order):  # downstream first
        height.setdefault(name, 0)
        for up in p.waits_for.get(name, ()):
            height[up] = max(height.get(up, 0), height[name] + 1)
    return height


# ---------------------------------------------------------------------------------------------- what a stage needs
#: the package module that picks a stage's device (``runtime.resolve_device``), and the one that runs it under DDP
DEVICE_MODULE, DDP_MODULE = "run/runtime.py", "run/distributed.py"


class ExperimentNproc:
    """``train.nproc`` of the experiment a train command names (``--suite --method --arch --seed [--lambda-grad]``),
    read from ``params.yaml`` on first use."""

    def __init__(self, params: Path):
        self.params = params
        self._cfg = None

    def __call__(self, argv: list[str]) -> int:
        ap = argparse.ArgumentParser(add_help=False)
        for opt in ("--suite", "--method", "--arch"):
            ap.add_argument(opt)
        ap.add_argument("--seed", type=int)
        ap.add_argument("--lambda-grad", type=float)
        a, _ = ap.parse_known_args(argv)
        if not (a.suite and a.method and a.arch and a.seed is not None):
            return 1
        if self._cfg is None:
            from greg_ood.run import config

            self._cfg = config.load(self.params)
        return self._cfg.experiment(a.suite, a.method, a.arch, a.seed, ablation_lambda=a.lambda_grad).train.nproc


def _package_modules(script: Path) -> set[str]:
    """The ``greg_ood`` files a script runs (its import closure), relative to the package (``runtime.py``,
    ``data/__init__.py``, ...); empty for a script that imports nothing of the package."""
    from greg_ood.run import codedeps

    return {p.relative_to(codedeps.PACKAGE_DIR).as_posix() for p in codedeps.closure(script)
            if p.is_relative_to(codedeps.PACKAGE_DIR)}


def device_need(cmd: str | list[str], meta: Optional[dict], wdir: str,
                nproc: Callable[[list[str]], int]) -> int:
    """How many GPUs a stage needs, from what it runs: ``meta: {gpus: k}`` if the stage declares it; else, for each
    command, a Python script whose import closure picks a device (holds ``greg_ood/runtime.py``) needs one, or
    ``nproc(its arguments)`` when it can run under DDP (holds ``greg_ood/distributed.py``: the train stage); a script
    that imports ``greg_ood`` but never picks a device (download, report) needs none; any other command needs one,
    to be safe. The stage needs the most any of its commands needs."""
    if isinstance(meta, dict) and meta.get("gpus") is not None:
        k = int(meta["gpus"])
        if k < 0:
            raise ValueError(f"meta.gpus must be 0 or more, got {k}")
        return k
    need = 0
    for one in ([cmd] if isinstance(cmd, str) else list(cmd or [])):
        argv = shlex.split(one)
        at = next((i for i, a in enumerate(argv) if a.endswith(".py")), None)
        script = Path(wdir, argv[at]) if at is not None else None
        mods = _package_modules(script) if script is not None and script.is_file() else set()
        if not mods:
            need = max(need, 1)
        elif DEVICE_MODULE in mods:
            need = max(need, nproc(argv[at + 1:]) if DDP_MODULE in mods else 1)
    return need


# ---------------------------------------------------------------------------------------------------- devices
def detect_devices(env: Optional[dict] = None) -> list[str]:
    """Every GPU this process may use: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set, else the GPUs that
    ``nvidia-smi -L`` lists (by index), else as many as torch counts."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
        found = [m.group(1) for m in re.finditer(r"^GPU (\d+):", out, re.M)]
        if found:
            return found
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def parse_gpus(spec: Optional[str], env: Optional[dict] = None) -> Optional[list[str]]:
    """``--gpus``: None (no placement), ``all`` (:func:`detect_devices`) or a comma-separated list of device ids as
    ``CUDA_VISIBLE_DEVICES`` takes them (indices or UUIDs). Raises ``ValueError`` with a one-sentence message."""
    if spec is None:
        return None
    if spec.strip() == "all":
        devices = detect_devices(env)
        if not devices:
            raise ValueError("--gpus all: no GPU found (CUDA_VISIBLE_DEVICES, `nvidia-smi -L` and torch list none); "
                             "leave out --gpus to run without placing stages on devices")
        return devices
    devices = [d.strip() for d in spec.split(",")]
    if not all(devices):
        raise ValueError(f"--gpus {spec!r}: give `all` or device ids separated by commas, e.g. --gpus 0,1,3")
    if len(set(devices)) != len(devices):
        raise ValueError(f"--gpus {spec!r} names a device twice; each device runs one stage at a time, so list it "
                         f"once")
    return devices


class Slots:
    """What may start now: stages that need no GPU, at most ``jobs`` at a time, and stages that need k GPUs, while k
    of ``devices`` are free. Without a device list (no ``--gpus``) every stage takes one of the ``jobs`` places."""

    def __init__(self, jobs: int, devices: Optional[list[str]] = None):
        self.jobs, self.devices = jobs, devices
        self.free = list(devices or [])
        self.places = 0  # stages running in a `jobs` place

    def take(self, need: int) -> Optional[list[str]]:
        """The devices for a stage that needs ``need`` (``[]``: a `jobs` place), or None if it cannot start now."""
        if self.devices is None or need == 0:
            if self.places >= self.jobs:
                return None
            self.places += 1
            return []
        if len(self.free) < need:
            return None
        got, self.free = self.free[:need], self.free[need:]
        return got

    def give(self, got: list[str]) -> None:
        """Free what :meth:`take` gave."""
        if got:
            self.free = [d for d in self.devices if d in set(self.free) | set(got)]
        else:
            self.places -= 1


def pick(ready: Iterable[str], needs: dict[str, int], slots: Slots) -> list[tuple[str, list[str]]]:
    """The stages of ``ready`` (highest priority first) that start now, with their devices: each in turn takes what
    it needs if that is free. A stage that needs more GPUs than are free waits, and a later one that fits starts
    meanwhile, so no device idles while a stage could use it."""
    started = []
    for name in ready:
        got = slots.take(needs.get(name, 1))
        if got is not None:
            started.append((name, got))
    return started


def stage_env(jobs: int, devices: Optional[list[str]] = None, base: Optional[dict] = None) -> dict[str, str]:
    """A worker's environment: OpenMP threads wait passively when stages share the cores (no effect on results);
    with placement (``devices`` not None) the stage sees exactly ``devices``, numbered as ``nvidia-smi`` numbers
    them (``CUDA_DEVICE_ORDER=PCI_BUS_ID``; none for a stage that needs no GPU)."""
    env = dict(os.environ if base is None else base)
    if jobs > 1 or devices is not None:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env


# ---------------------------------------------------------------------------------------------- the stages' output
#: lines of the tools' boilerplate left out of the relayed output (regular expressions matched against the whole
#: line, without its newline); a line that mentions a warning or an error is always kept (:data:`ALERT`)
BOILERPLATE = [re.compile(p) for p in (
    r"To track the changes with git, run:",                       # DVC after each stage
    r"\s+git add .*",
    r"To enable auto staging, run:",
    r"\s+dvc config core\.autostage true",
    r"Use `dvc push` to send your updates to remote storage\.",
    r"(Generating|Updating) lock file '[^']*'",                    # the runner's `done` line says as much
    r".*\bINFO mlflow\.store\.db\.utils: (Creating initial MLflow database tables\.\.\.|Updating database tables)",
    r"INFO  \[alembic\.[\w.]+\] .*",                                # schema migrations, in alembic's own format
    r"\s*",                                                         # blank lines (unprefixed, they only split output)
)]
ALERT = re.compile(r"\b(WARNING|WARN|ERROR|CRITICAL|FATAL|Traceback)\b|[Ee]rror:|[Ww]arning:")
SKIPPED = re.compile(r"Stage '[^']*' didn't change, skipping")


def shown(line: str) -> bool:
    """Whether a stage's output line is relayed: every line but the boilerplate; warnings and errors always."""
    text = line.rstrip("\r\n")
    return bool(ALERT.search(text)) or not any(p.fullmatch(text) for p in BOILERPLATE)


# ---------------------------------------------------------------------------------------------- progress
def fmt_duration(seconds: float) -> str:
    """``42 s``, ``3 min 10 s``, ``2 h 05 min``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass
class Estimate:
    """Seconds until the last planned stage finishes, and the kinds of the stages still to run that no finished stage
    has timed yet (their duration is guessed as the mean of every finished stage)."""

    seconds: float
    untimed: list[str]

    def __str__(self) -> str:
        text = f"about {fmt_duration(self.seconds)} left"
        if len(self.untimed) > 2:
            text += f" (rough: {len(self.untimed)} kinds not timed yet)"
        elif self.untimed:
            text += f" (rough: {' and '.join(self.untimed)} not timed yet)"
        return text


def estimate_left(p: Plan, durations: dict[str, list[float]], done: Iterable[str], running: dict[str, float],
                  jobs: int, devices: Optional[list[str]] = None) -> Optional[Estimate]:
    """The time left, estimated from the stages already done: each stage is expected to take the mean duration of the
    finished stages of its :func:`kind` (of all finished stages if none of its kind has finished; a running stage the
    rest of that, at least nothing), and the rest of the plan is scheduled as the runner would (:func:`pick`, same
    priority, same places and devices). ``durations``: seconds of the finished stages, by kind; ``running``: the
    stages running now and their elapsed seconds. None until a stage has finished."""
    every = [d for ds in durations.values() for d in ds]
    if not every:
        return None
    guess = statistics.fmean(every)

    def expected(name: str) -> float:
        ds = durations.get(kind(name))
        return statistics.fmean(ds) if ds else guess

    height, finished = priority(p), set(done)
    slots = Slots(jobs, devices)
    busy = []  # (end, name, devices)
    for name, elapsed in running.items():
        got = slots.take(p.needs.get(name, 1))
        busy.append((max(expected(name) - elapsed, 0.0), name, got or []))
    pending = [n for n in p.order if n not in finished and n not in running]
    untimed = sorted({kind(n) for n in [*pending, *running] if kind(n) not in durations})
    now = 0.0
    while pending or busy:
        ready = sorted((n for n in pending if p.waits_for.get(n, set()) <= finished), key=lambda n: -height[n])
        for name, got in pick(ready, p.needs, slots):
            pending.remove(name)
            busy.append((now + expected(name), name, got))
        if not busy:  # nothing can start (a stage needs more devices than exist): estimate what can run
            break
        busy.sort(key=lambda b: b[0])
        now, name, got = busy.pop(0)
        slots.give(got)
        finished.add(name)
    return Estimate(now, untimed)


class Progress:
    """The runner's progress lines: one per stage start and finish, with the elapsed time and the estimate of the
    time left, and a `still running` line for a stage that printed nothing for ``heartbeat`` seconds."""

    def __init__(self, p: Plan, jobs: int, devices: Optional[list[str]], out: TextIO,
                 heartbeat: float = HEARTBEAT_S, clock: Callable[[], float] = time.monotonic):
        self.p, self.jobs, self.devices, self.out = p, jobs, devices, out
        self.heartbeat, self.clock = heartbeat, clock
        self.t0 = clock()
        self.lock = threading.Lock()
        self.durations: dict[str, list[float]] = {}
        self.done: set[str] = set()
        self.started: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}
        self.skipped: set[str] = set()

    def say(self, text: str) -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def status(self) -> str:
        now = self.clock()
        if len(self.done) == len(self.p.order):
            return f"{fmt_duration(now - self.t0)} elapsed"
        est = estimate_left(self.p, self.durations, self.done, {n: now - t for n, t in self.started.items()},
                            self.jobs, self.devices)
        return f"{fmt_duration(now - self.t0)} elapsed, " + (str(est) if est else "time left known after a stage")

    def start(self, name: str, got: list[str]) -> None:
        now = self.clock()
        self.started[name] = self.last_seen[name] = now
        where = f" on GPU {','.join(got)}" if got else (" (no GPU)" if self.devices is not None else "")
        self.say(f"[{short(name)}] start{where} ({len(self.done)}/{len(self.p.order)} done, {len(self.started)} "
                 f"running) · {self.status()}")

    def output(self, name: str, line: str) -> None:
        """Relay one output line of a running stage (or leave it out: :func:`shown`)."""
        if SKIPPED.search(line):
            self.skipped.add(name)
        if shown(line):
            self.last_seen[name] = self.clock()
            self.say(f"[{short(name)}] {line.rstrip()}")

    def finish(self, name: str, rc: int, n_failed: int) -> None:
        took = self.clock() - self.started.pop(name)
        self.last_seen.pop(name, None)
        if rc == 0:
            self.done.add(name)
            if name not in self.skipped:  # a stage DVC found unchanged says nothing about its kind's duration
                self.durations.setdefault(kind(name), []).append(took)
        status = "done" if rc == 0 else f"FAILED (exit {rc})"
        self.say(f"[{short(name)}] {status} in {took:.1f} s ({len(self.done) + n_failed}/{len(self.p.order)}) · "
                 f"{self.status()}")

    def beat(self) -> None:
        """A `still running` line for each stage silent for ``heartbeat`` seconds."""
        if self.heartbeat <= 0:
            return
        now = self.clock()
        for name, seen in list(self.last_seen.items()):
            if now - seen >= self.heartbeat:
                self.last_seen[name] = now
                self.say(f"[{short(name)}] still running ({fmt_duration(now - self.started[name])}) · "
                         f"{self.status()}")


# ---------------------------------------------------------------------------------------------- running
def _load_prctl():
    """libc's ``prctl``, looked up once in the runner (never in a forked child: importing there can deadlock on a
    lock another thread held at fork time); None where there is none."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """In a worker, before ``exec``: the kernel sends it SIGTERM when the runner dies (Linux ``PR_SET_PDEATHSIG``),
    so a killed runner leaves no ``dvc`` worker running on with nobody reading its output (DVC's own handling of a
    killed ``dvc`` then applies: its stage command stops with it, and the stage re-runs next time). Elsewhere a
    no-op. It only calls a function looked up beforehand: it runs between fork and exec."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGTERM))   # PR_SET_PDEATHSIG = 1


def _pump(proc: subprocess.Popen, name: str, progress: Progress) -> None:
    """Relay the stage's output lines, each with the stage's name in front."""
    for line in proc.stdout:
        progress.output(name, line)


def run_plan(p: Plan, jobs: int, dvc: list[str], force: bool = False, devices: Optional[list[str]] = None,
             heartbeat: float = HEARTBEAT_S, out: TextIO = sys.stdout) -> list[tuple[str, int]]:
    """Run the planned stages, each as ``dvc --wait-for-lock repro -s <stage>``: at most ``jobs`` at a time, or, with
    ``devices``, each stage that needs GPUs on free devices of its own (:class:`Slots`).

    Returns ``(stage, exit status)`` of the stages that failed (empty on success); after a failure no new stage
    starts."""
    height = priority(p)
    progress = Progress(p, jobs, devices, out, heartbeat)
    slots = Slots(jobs, devices)
    pending = list(p.order)
    done: set[str] = set()
    running: dict[str, tuple[subprocess.Popen, threading.Thread, list[str]]] = {}
    failed: list[tuple[str, int]] = []
    try:
        while pending or running:
            if not failed:
                ready = sorted((n for n in pending if p.waits_for.get(n, set()) <= done), key=lambda n: -height[n])
                for name, got in pick(ready, p.needs, slots):
                    cmd = [*dvc, "--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []), name]
                    env = stage_env(jobs, got if devices is not None else None)
                    progress.start(name, got)
                    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                            env=env, bufsize=1, preexec_fn=_die_with_parent)
                    pump = threading.Thread(target=_pump, args=(proc, name, progress), daemon=True)
                    pump.start()
                    running[name] = (proc, pump, got)
                    pending.remove(name)
            elif not running:
                break
            time.sleep(0.05)
            for name, (proc, pump, got) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                pump.join()
                del running[name]
                slots.give(got)
                progress.finish(name, rc, len(failed) + (rc != 0))
                if rc == 0:
                    done.add(name)
                else:
                    failed.append((name, rc))
            progress.beat()
            if not running and pending and not failed and not any(p.waits_for.get(n, set()) <= done
                                                                  for n in pending):
                raise RuntimeError(f"no stage can start; waiting: {pending[:3]} (a cycle in the plan?)")
    except KeyboardInterrupt:
        for proc, _, _ in running.values():
            proc.send_signal(signal.SIGINT)
        for proc, _, _ in running.values():
            proc.wait()
        raise
    return failed


def _plan_when_free(target: str, *, wait_s: float = 300.0, **kw) -> Plan:
    """:func:`plan`, waiting up to ``wait_s`` while another DVC process holds the repository lock (a restarted
    runner finds the workers of the one it replaces still finishing); any other error is raised at once."""
    from dvc.lock import LockError   # the repository lock, and a stage's rwlock ('... is busy')

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return plan(target, **kw)
        except LockError:
            if time.monotonic() > deadline:
                raise
            print("waiting for the repository lock (another dvc process is finishing)", flush=True)
            time.sleep(2.0)


def final_check(dvc: list[str], target: str, out: TextIO = sys.stdout) -> int:
    """``dvc repro <target>``, its output relayed without boilerplate and with its `didn't change, skipping` lines
    counted instead of listed; returns its exit status."""
    proc = subprocess.Popen([*dvc, "repro", target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    skipped = 0
    for line in proc.stdout:
        if SKIPPED.search(line) and not ALERT.search(line):
            skipped += 1
        elif shown(line):
            out.write(f"[check] {line.rstrip()}\n")
            out.flush()
    rc = proc.wait()
    out.write(f"[check] dvc repro {target}: {skipped} stage(s) up to date, exit {rc}\n")
    out.flush()
    return rc


def check_device_setting(root: str = ".") -> None:
    """With placement each stage sees its own devices as ``cuda:0..k-1``, so ``project.device: cuda:N`` (N > 0)
    would point past them: refuse it with the fix (``ValueError``)."""
    params = Path(root, "params.yaml")
    if not params.is_file():
        return
    import yaml

    device = str(((yaml.safe_load(params.read_text()) or {}).get("project") or {}).get("device", "auto"))
    if re.fullmatch(r"cuda:[1-9]\d*", device):
        raise ValueError(f"--gpus gives each stage its own devices, seen as cuda:0 and up, but params.yaml sets "
                         f"project.device: {device}; set it to auto (or cuda) and run again")


def build_parser() -> argparse.ArgumentParser:
    """The command line (one option per line, so another option is one more line)."""
    ap = argparse.ArgumentParser(prog="python -m greg_ood.cli.repro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="a stage of dvc.yaml, e.g. report_mini")
    ap.add_argument("-j", "--jobs", type=int, default=DEFAULT_JOBS,
                    help=f"stages at a time (default {DEFAULT_JOBS}; 1 = one after the other); with --gpus: stages "
                         f"that need no GPU at a time")
    ap.add_argument("--gpus", metavar="all|ID,ID,...", default=None,
                    help="place each stage that needs GPUs on free devices of its own (CUDA_VISIBLE_DEVICES): "
                         "`all` or a list such as 0,1,3 (default: no placement, every stage sees every device)")
    ap.add_argument("--dry", action="store_true", help="print the plan and stop")
    ap.add_argument("-f", "--force", action="store_true", help="run every stage of the target, changed or not")
    ap.add_argument("--no-check", action="store_true", help="skip the final plain `dvc repro <target>`")
    ap.add_argument("--heartbeat", type=float, default=HEARTBEAT_S, metavar="SECONDS",
                    help=f"a `still running` line for a stage silent this long (default {HEARTBEAT_S:.0f}; 0 = off)")
    ap.add_argument("--executor", choices=("local", "slurm"), default="local",
                    help="local: run the stages here (default); slurm: one sbatch job per stage (greg_ood.cli.slurm)")
    ap.add_argument("--cluster-config", metavar="PATH", default=None,
                    help="with --executor slurm: resources per stage kind (see cluster.example.yaml)")
    ap.add_argument("--dry-run", action="store_true", help="with --executor slurm: print the jobs, submit nothing")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    if args.executor == "slurm":
        from greg_ood.cli import slurm

        return slurm.run(args.target, args.cluster_config, plan, dry_run=args.dry_run or args.dry, force=args.force)
    try:
        devices = parse_gpus(args.gpus)
        if devices is not None:
            check_device_setting()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dvc = [sys.executable, "-m", "dvc"]
    t0 = time.monotonic()
    try:
        p = _plan_when_free(args.target, force=args.force, devices=devices is not None)
    except Exception as exc:  # DVC's own message names the stage or file
        print(f"error: cannot plan `dvc repro {args.target}`: {exc}", file=sys.stderr)
        return 2
    where = f", GPU stages each on free devices of {','.join(devices)}" if devices is not None else ""
    print(f"{len(p.order)} stage(s) of {args.target} to run ({p.unchanged} up to date), {args.jobs} at a time{where}",
          flush=True)
    too_big = {n: k for n, k in p.needs.items() if devices is not None and k > len(devices)}
    if too_big:
        name, k = next(iter(too_big.items()))
        print(f"error: stage {short(name)} needs {k} GPUs (train.nproc or meta.gpus) but --gpus gives "
              f"{len(devices)}; list more devices or lower its train.nproc", file=sys.stderr)
        return 2
    if args.dry:
        for name in p.order:
            need = f"  [{p.needs[name]} GPU]" if p.needs else ""
            print(f"  {name}" + (f"  <- {', '.join(sorted(p.waits_for[name]))}" if p.waits_for[name] else "") + need)
        return 0
    failed = run_plan(p, args.jobs, dvc, force=args.force, devices=devices, heartbeat=args.heartbeat)
    if failed:
        for name, rc in failed:
            print(f"error: stage {name} failed (exit {rc}); its output is above, prefixed [{short(name)}]. Fix the "
                  f"cause and run the same command again: finished stages are kept and not re-run.", file=sys.stderr)
        return 1
    if not args.no_check:
        rc = final_check(dvc, args.target)
        if rc:
            return rc
    print(f"{args.target}: {len(p.order)} stage(s) in {time.monotonic() - t0:.0f} s wall, {args.jobs} at a time"
          + (f", on GPUs {','.join(devices)}" if devices is not None else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
