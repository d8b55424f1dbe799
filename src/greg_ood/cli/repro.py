"""``dvc repro`` of one target with independent stages run side by side (``make mini`` / ``make fmnist``).

DVC 3 runs a pipeline's stages one after the other. Most of a small stage's time is single-threaded start-up (Python
imports, DVC loading and rewriting its lock, MLflow opening its store), so on a 2-core machine two stages at a time
finish the ``mini`` suite in about two thirds of the serial time (reports/bench/pipeline.md). Nothing here decides
*whether* a stage runs: every stage is run by DVC itself, ``dvc --wait-for-lock repro --single-item <stage>``, which
checks its deps, runs its command, caches its outs and writes its lock entry exactly as ``dvc repro <target>`` would.
This module only decides *when*:

1. plan: the target's stages (DVC's own graph, ``Repo.index.graph``), keeping those DVC reports as changed and
   everything downstream of them; a stage that turns out unchanged once its upstream has run is skipped by DVC;
2. run: a stage starts when every planned stage it depends on has finished, at most ``--jobs`` at a time; each
   stage's output lines are printed with its name in front;
3. check: a final plain ``dvc repro <target>`` — it runs whatever the plan missed and normally reports that the
   pipeline is up to date, so the result is the same as running ``dvc repro <target>`` alone.

Concurrency is DVC's own: it releases the repository lock while a stage's command runs (``--wait-for-lock`` makes
the other worker wait for it instead of failing) and guards each stage's deps and outs with its read/write locks.
Two stages never write the same lock file concurrently: DVC rewrites a ``dvc.lock`` only while holding the
repository lock and reads it afresh first.

**Results do not depend on ``--jobs``.** Each stage keeps torch's thread count (``project.num_threads``; 0 = torch's
default), because that count changes floating-point summation order and therefore the bits of a trained model. Two
multi-threaded stages share the cores with ``OMP_WAIT_POLICY=PASSIVE`` (set here unless the caller set it), which
stops OpenMP threads from spinning while they wait; it changes no arithmetic. Checked: the end-to-end test runs its
tiny suite through this runner and re-runs stages one at a time with plain ``dvc repro``, comparing the lock files
byte for byte (tests/test_pipeline_e2e.py); a fresh clone's ``make mini`` reproduced every output md5 of a serial run
(reports/bench/make-mini.md).

    python -m greg_ood.cli.repro report_mini            # two stages at a time (default)
    python -m greg_ood.cli.repro report_mini --jobs 1   # one at a time, like `dvc repro report_mini`
    python -m greg_ood.cli.repro report_mini --dry      # the plan only

A failing stage stops new starts; the stages already running finish (their results are kept, as with ``dvc repro``),
and the command exits non-zero naming the stage. Run it again after the fix: finished stages are not re-run.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

DEFAULT_JOBS = 2


@dataclass
class Plan:
    """The stages to run (DVC addresses, in a dependency order) and, for each, the planned stages it waits for."""

    order: list[str]
    waits_for: dict[str, set[str]] = field(default_factory=dict)
    unchanged: int = 0  # stages of the target's closure that DVC reports up to date and nothing upstream will change


def plan(target: str, root: str = ".", force: bool = False) -> Plan:
    """The target's stages that DVC would run, with their dependencies among themselves.

    A stage is planned if DVC reports it changed (``Stage.changed()``: deps, outs, command or params differ from its
    lock entry, or it never ran) or if any stage it depends on is planned. ``force`` plans every stage."""
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
        return Plan(order=[addr[st] for st in run],
                    waits_for={addr[st]: {addr[up] for up in graph.successors(st) if up in planned} for st in run},
                    unchanged=len(stages) - len(run))


def short(address: str) -> str:
    """A stage's name without its dvc.yaml (``pipelines/train_mini/dvc.yaml:train_mini@x`` -> ``train_mini@x``)."""
    return address.rsplit(":", 1)[-1]


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


def _pump(proc: subprocess.Popen, name: str, lock: threading.Lock) -> None:
    """Print the stage's output lines, each with the stage's name in front."""
    name = short(name)
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[{name}] {line}" if line.strip() else line)
            sys.stdout.flush()


def stage_env(jobs: int) -> dict[str, str]:
    """The workers' environment: OpenMP threads wait passively when stages share the cores (no effect on results)."""
    env = dict(os.environ)
    if jobs > 1:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def run_plan(p: Plan, jobs: int, dvc: list[str], force: bool = False) -> list[tuple[str, int]]:
    """Run the planned stages, at most ``jobs`` at a time, each as ``dvc --wait-for-lock repro -s <stage>``.

    Returns ``(stage, exit status)`` of the stages that failed (empty on success); after a failure no new stage
    starts."""
    env = stage_env(jobs)
    height = priority(p)
    printing = threading.Lock()
    pending = list(p.order)
    done: set[str] = set()
    running: dict[str, tuple[subprocess.Popen, threading.Thread, float]] = {}
    failed: list[tuple[str, int]] = []
    try:
        while pending or running:
            if not failed:
                ready = sorted((n for n in pending if p.waits_for.get(n, set()) <= done), key=lambda n: -height[n])
                for name in ready[: jobs - len(running)]:
                    cmd = [*dvc, "--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []), name]
                    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                            env=env, bufsize=1)
                    pump = threading.Thread(target=_pump, args=(proc, name, printing), daemon=True)
                    pump.start()
                    running[name] = (proc, pump, time.monotonic())
                    pending.remove(name)
            elif not running:
                break
            time.sleep(0.05)
            for name, (proc, pump, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                pump.join()
                del running[name]
                with printing:
                    status = "done" if rc == 0 else f"FAILED (exit {rc})"
                    print(f"[{short(name)}] {status} in {time.monotonic() - t0:.1f} s "
                          f"({len(done) + 1 + len(failed)}/{len(p.order)})", flush=True)
                if rc == 0:
                    done.add(name)
                else:
                    failed.append((name, rc))
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m greg_ood.cli.repro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="a stage of dvc.yaml, e.g. report_mini")
    ap.add_argument("-j", "--jobs", type=int, default=DEFAULT_JOBS,
                    help=f"stages at a time (default {DEFAULT_JOBS}; 1 = one after the other)")
    ap.add_argument("--dry", action="store_true", help="print the plan and stop")
    ap.add_argument("-f", "--force", action="store_true", help="run every stage of the target, changed or not")
    ap.add_argument("--no-check", action="store_true", help="skip the final plain `dvc repro <target>`")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    dvc = [sys.executable, "-m", "dvc"]
    t0 = time.monotonic()
    try:
        p = plan(args.target, force=args.force)
    except Exception as exc:  # DVC's own message names the stage or file
        print(f"error: cannot plan `dvc repro {args.target}`: {exc}", file=sys.stderr)
        return 2
    print(f"{len(p.order)} stage(s) of {args.target} to run ({p.unchanged} up to date), {args.jobs} at a time",
          flush=True)
    if args.dry:
        for name in p.order:
            print(f"  {name}" + (f"  <- {', '.join(sorted(p.waits_for[name]))}" if p.waits_for[name] else ""))
        return 0
    failed = run_plan(p, args.jobs, dvc, force=args.force)
    if failed:
        for name, rc in failed:
            print(f"error: stage {name} failed (exit {rc}); its output is above, prefixed [{short(name)}]. Fix the "
                  f"cause and run the same command again: finished stages are kept and not re-run.", file=sys.stderr)
        return 1
    if not args.no_check:
        rc = subprocess.call([*dvc, "repro", args.target])
        if rc:
            return rc
    print(f"{args.target}: {len(p.order)} stage(s) in {time.monotonic() - t0:.0f} s wall, {args.jobs} at a time",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
