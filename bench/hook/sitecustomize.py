"""Phase timer for ``bench/pipeline.py``: loaded by Python at start-up when this folder is on PYTHONPATH and
``GREG_OOD_BENCH_OUT`` names a JSON-lines file. Inert otherwise (and never imported by the project itself).

It wraps a fixed list of library functions (``TARGETS`` below, by module and qualified name) as their modules are
imported, and at exit appends one record to the file: the stage's command line and, per phase, the *exclusive* wall
time and CPU time (user + system, all threads of the process) in seconds (time inside a nested timed call is
charged to the inner phase only). Two phases are timed from outside any function: ``start`` (process creation, read
from /proc, to this file's import: the interpreter's own start-up) and ``imports`` (from here to the first call of
the stage front ``stage_cli`` / ``load_config``). Whatever no target covers is ``other``; the CPU time of child
processes the stage waited for (git, torchrun) is ``subprocesses``. A target missing from a revision is skipped, so
one list serves the revisions compared.
"""
from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import json
import os
import resource
import sys
import time

OUT = os.environ.get("GREG_OOD_BENCH_OUT")

# (module, qualified name, phase). id_accuracy called inside a "work" call (training) is "eval_in_training", else
# "work" (the evaluate stage); a "work" call inside "eval_in_training" counts there. "setup" is the device,
# determinism settings and the model built; "resume_check" the content hashes of inputs and code and the checkpoint
# decision. "mlflow_setup" is the MLflow client with its store opened (the import of mlflow and
# SQLAlchemy included); "tracking" is every other MLflow call (run creation, params, metrics, artifacts, git state).
TARGETS = [
    ("greg_ood.run.pipeline", "stage_cli", "config"),
    ("greg_ood.run.pipeline", "load_config", "config"),
    ("greg_ood.run.pipeline", "suite_data", "data"),
    ("greg_ood.run.pipeline", "load_model", "model_load"),
    ("greg_ood.run.pipeline", "id_source", "data"),
    ("greg_ood.run.pipeline", "aux_source", "data"),
    ("greg_ood.run.pipeline", "init_runtime", "setup"),
    ("greg_ood.run.pipeline", "build_model", "setup"),
    ("greg_ood.run.pipeline", "input_hashes", "resume_check"),
    ("greg_ood.run.resume", "fingerprint", "resume_check"),
    ("greg_ood.run.resume", "plan", "resume_check"),
    ("greg_ood.run.resume", "choose_run", "resume_check"),
    ("greg_ood.run.stagecli", "stage_cli", "config"),
    ("greg_ood.run.stagecli", "load_config", "config"),
    ("greg_ood.data", "prepare", "work"),
    ("greg_ood.report.suite", "build_suite_report", "work"),
    ("greg_ood.run.tracking", "_retry", "tracking"),
    ("greg_ood.run.tracking", "make_client", "mlflow_setup"),
    ("greg_ood.run.tracking", "stage_run", "tracking"),
    ("greg_ood.run.tracking", "StageRun.log_metrics", "tracking"),
    ("greg_ood.run.tracking", "git_info", "tracking"),
    ("greg_ood.run.trainer", "Trainer.fit", "work"),
    ("greg_ood.run.trainer", "save_atomic", "checkpoint"),
    ("greg_ood.run.runtime", "save_atomic", "checkpoint"),
    ("greg_ood.run.evaluation", "id_accuracy", "eval_in_training"),
    ("greg_ood.run.evaluation", "evaluate", "work"),
    ("greg_ood.run.evaluation", "forward_all", "work"),
    ("greg_ood.sampling", "energy_cluster_select", "work"),
    ("greg_ood.sampling", "cluster_features", "work"),
    ("greg_ood.certify", "energy_grad_norms", "work"),
    ("greg_ood.gradnorm", "energy_grad_norms", "work"),
    ("greg_ood.certify", "certified_radius", "work"),
    ("greg_ood.run.io", "write_json_atomic", "writing"),
    ("greg_ood.run.io", "write_npz_atomic", "writing"),
    ("greg_ood.run.io", "write_bytes_atomic", "writing"),
    ("greg_ood.run.io", "atomic_open", "writing"),
    ("greg_ood.run.runlog", "write_curve", "writing"),
    ("greg_ood.report.fig_selection", "plot_selection", "writing"),
    ("greg_ood.report.fig_certify", "plot_certify", "writing"),
]

#: targets that return a context manager: its enter and exit are timed too
CONTEXT_MANAGERS = {"stage_run", "atomic_open"}


def _process_start() -> tuple[float | None, float]:
    """Wall-clock time at which this process was created and the CPU time it has used so far (Linux /proc; None and
    0.0 elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        tick = os.sysconf("SC_CLK_TCK")
        return btime + int(fields[19]) / tick, (int(fields[11]) + int(fields[12])) / tick
    except (OSError, ValueError, StopIteration, IndexError):
        return None, 0.0


class _Clock:
    def __init__(self) -> None:
        self.t0 = time.time()
        self.cpu0 = time.process_time()
        self.proc_start, self.start_cpu = _process_start()
        self.phases: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.stack: list[list] = []          # [phase, wall start, child wall, cpu start, child cpu]
        self.first_stage_call: tuple[float, float] | None = None

    def add(self, phase: str, dt: float, dcpu: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + dt
        self.cpu[phase] = self.cpu.get(phase, 0.0) + dcpu

    def push(self, phase: str) -> list:
        frame = [phase, time.perf_counter(), 0.0, time.process_time(), 0.0]
        self.stack.append(frame)
        return frame

    def wrap(self, fn, phase: str):
        clock = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if clock.first_stage_call is None and phase == "config":
                clock.first_stage_call = (time.time(), time.process_time())
            ph = phase
            if ph == "eval_in_training" and not any(f[0] == "work" for f in clock.stack):
                ph = "work"
            elif ph == "work" and any(f[0] == "eval_in_training" for f in clock.stack):
                ph = "eval_in_training"  # the forward passes of the per-epoch evaluation
            frame = clock.push(ph)
            try:
                result = fn(*args, **kwargs)
            finally:
                clock._pop(frame)
            if fn.__name__ in CONTEXT_MANAGERS:
                return _TimedCM(result, clock, ph)
            return result

        return timed

    def _pop(self, frame) -> None:
        self.stack.remove(frame)
        total = time.perf_counter() - frame[1]
        total_cpu = time.process_time() - frame[3]
        self.add(frame[0], total - frame[2], total_cpu - frame[4])
        if self.stack:
            self.stack[-1][2] += total
            self.stack[-1][4] += total_cpu

    def record(self) -> dict:
        end, end_cpu = time.time(), time.process_time()
        phases, cpu = dict(self.phases), dict(self.cpu)
        if self.proc_start is not None:
            phases["start"] = max(0.0, self.t0 - self.proc_start)
            cpu["start"] = self.start_cpu
        first, first_cpu = self.first_stage_call or (end, end_cpu)
        phases["imports"] = phases.get("imports", 0.0) + (first - self.t0)
        cpu["imports"] = cpu.get("imports", 0.0) + (first_cpu - self.cpu0)
        begin = self.proc_start if self.proc_start is not None else self.t0
        total = end - begin
        total_cpu = cpu.get("start", 0.0) + (end_cpu - self.cpu0)
        phases["other"] = max(0.0, total - sum(v for k, v in phases.items() if k != "other"))
        cpu["other"] = max(0.0, total_cpu - sum(v for k, v in cpu.items() if k != "other"))
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu["subprocesses"] = children.ru_utime + children.ru_stime
        return {"argv": sys.argv, "total": total, "cpu_total": total_cpu + cpu["subprocesses"], "phases": phases,
                "cpu": cpu}


class _TimedCM:
    """A context manager returned by a timed call: its enter and exit count in the same phase (its body does not)."""

    def __init__(self, cm, clock: _Clock, phase: str):
        self._cm, self._clock, self._phase = cm, clock, phase

    def __enter__(self):
        frame = self._clock.push(self._phase)
        try:
            return self._cm.__enter__()
        finally:
            self._clock._pop(frame)

    def __exit__(self, *exc):
        frame = self._clock.push(self._phase)
        try:
            return self._cm.__exit__(*exc)
        finally:
            self._clock._pop(frame)


def _patch(module, qualname: str, phase: str, clock: _Clock) -> None:
    owner, _, attr = qualname.rpartition(".")
    target = getattr(module, owner) if owner else module
    fn = getattr(target, attr, None)
    if fn is None or getattr(fn, "_bench_wrapped", False):
        return
    wrapped = clock.wrap(fn, phase)
    wrapped._bench_wrapped = True
    setattr(target, attr, wrapped)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches a target module right after it has executed."""

    def __init__(self, clock: _Clock):
        self.clock = clock
        self.by_module: dict[str, list[tuple[str, str]]] = {}
        for mod, qual, phase in TARGETS:
            self.by_module.setdefault(mod, []).append((qual, phase))

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.by_module:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader, todo, clock = spec.loader, self.by_module[fullname], self.clock

        class _Loader(importlib.abc.Loader):
            def create_module(self, s):
                return loader.create_module(s)

            def exec_module(self, module):
                loader.exec_module(module)
                for qual, phase in todo:
                    _patch(module, qual, phase, clock)

        spec.loader = _Loader()
        return spec


if OUT:
    _clock = _Clock()
    sys.meta_path.insert(0, _Finder(_clock))

    @atexit.register
    def _write() -> None:
        rec = _clock.record()
        with open(OUT, "a") as f:
            f.write(json.dumps(rec) + "\n")
