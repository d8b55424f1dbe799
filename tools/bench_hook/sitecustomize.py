"""Phase timer for ``tools/bench_pipeline.py``: loaded by Python at start-up when this folder is on PYTHONPATH and
``GREG_OOD_BENCH_OUT`` names a JSON-lines file. Inert otherwise (and never imported by the project itself).

It wraps a fixed list of library functions (``TARGETS`` below, by module and qualified name) as their modules are
imported, and at exit appends one record to the file: the stage's command line and, per phase, the *exclusive* wall
time in seconds (time inside a nested timed call is charged to the inner phase only). Two phases are timed from
outside any function: ``start`` (process creation, read from /proc, to this file's import: the interpreter's own
start-up) and ``imports`` (from here to the first call of the stage front ``pipeline.stage_cli``). Whatever no
target covers is ``other``.
"""
from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import json
import os
import sys
import time

OUT = os.environ.get("GREG_OOD_BENCH_OUT")

# (module, qualified name, phase). id_accuracy called inside a "work" call (training) is "eval_in_training", else
# "work" (the evaluate stage).
TARGETS = [
    ("greg_ood.pipeline", "stage_cli", "config"),
    ("greg_ood.pipeline", "suite_data", "data"),
    ("greg_ood.pipeline", "load_model", "model_load"),
    ("greg_ood.tracking", "_retry", "tracking"),
    ("greg_ood.tracking", "make_client", "tracking"),
    ("greg_ood.tracking", "stage_run", "tracking"),
    ("greg_ood.tracking", "StageRun.log_metrics", "tracking"),
    ("greg_ood.tracking", "git_info", "tracking"),
    ("greg_ood.trainer", "Trainer.fit", "work"),
    ("greg_ood.trainer", "save_atomic", "checkpoint"),
    ("greg_ood.evaluation", "id_accuracy", "eval_in_training"),
    ("greg_ood.evaluation", "evaluate", "work"),
    ("greg_ood.evaluation", "forward_all", "work"),
    ("greg_ood.sampling", "energy_cluster_select", "work"),
    ("greg_ood.certify", "gradient_norms", "work"),
    ("greg_ood.certify", "certified_radii", "work"),
    ("greg_ood.io", "write_json_atomic", "writing"),
    ("greg_ood.io", "write_bytes_atomic", "writing"),
    ("greg_ood.io", "atomic_open", "writing"),
]


def _process_start_epoch() -> float | None:
    """Wall-clock time at which this process was created (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return None


class _Clock:
    def __init__(self) -> None:
        self.t0 = time.time()
        self.proc_start = _process_start_epoch()
        self.phases: dict[str, float] = {}
        self.stack: list[list] = []          # [phase, start, child_time]
        self.first_stage_call: float | None = None

    def add(self, phase: str, dt: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + dt

    def wrap(self, fn, phase: str):
        clock = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if clock.first_stage_call is None and phase == "config":
                clock.first_stage_call = time.time()
            ph = phase
            if ph == "eval_in_training" and not any(f[0] == "work" for f in clock.stack):
                ph = "work"
            frame = [ph, time.perf_counter(), 0.0]
            clock.stack.append(frame)
            try:
                result = fn(*args, **kwargs)
            finally:
                clock._pop(frame)
            if hasattr(result, "__enter__") and hasattr(result, "__exit__"):
                return _TimedCM(result, clock, ph)
            return result

        return timed

    def _pop(self, frame) -> None:
        self.stack.remove(frame)
        total = time.perf_counter() - frame[1]
        self.add(frame[0], total - frame[2])
        if self.stack:
            self.stack[-1][2] += total

    def record(self) -> dict:
        end = time.time()
        phases = dict(self.phases)
        if self.proc_start is not None:
            phases["start"] = max(0.0, self.t0 - self.proc_start)
        first = self.first_stage_call or end
        phases["imports"] = phases.get("imports", 0.0) + (first - self.t0)
        begin = self.proc_start if self.proc_start is not None else self.t0
        total = end - begin
        phases["other"] = max(0.0, total - sum(v for k, v in phases.items() if k != "other"))
        return {"argv": sys.argv, "total": total, "phases": phases}


class _TimedCM:
    """A context manager returned by a timed call: its enter and exit count in the same phase (its body does not)."""

    def __init__(self, cm, clock: _Clock, phase: str):
        self._cm, self._clock, self._phase = cm, clock, phase

    def __enter__(self):
        frame = [self._phase, time.perf_counter(), 0.0]
        self._clock.stack.append(frame)
        try:
            return self._cm.__enter__()
        finally:
            self._clock._pop(frame)

    def __exit__(self, *exc):
        frame = [self._phase, time.perf_counter(), 0.0]
        self._clock.stack.append(frame)
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
