"""Kill storm: run the tiny ``mini`` suite through the runner (``python -m greg_ood.cli.repro``) and, N times at
random moments drawn from a seeded generator, SIGKILL a random running stage process, a ``dvc`` process or the runner
itself, then restart the runner; at the end compare with an uninterrupted run of the same suite.

    nice -n 10 python -m tools.kill_storm --kills 20 --seed 28 --md reports/bench/kill-storm.md

Passes (exit 0) when, after the storm: every dvc.lock is byte-identical to the uninterrupted run's (so every output's
md5 is), ``dvc status --with-deps <target>`` reports nothing, every MLflow run is FINISHED or KILLED with exactly one
FINISHED per stage, and every training CSV has each step once, the same steps as the uninterrupted run's. Both runs
are scratch copies (:mod:`tools.scratch_repo`) under ``--workdir``; nothing in the checkout is touched but ``--md``
and ``--json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from tools import scratch_repo

KINDS = ("stage", "dvc", "runner")
#: how long a kill waits for a process of the drawn kind before it takes another kind
WAIT_FOR_KIND_S = 60.0


@dataclass
class Kill:
    """One SIGKILL of the storm: when (seconds since the storm began and since the runner's start), which kind of
    process was chosen, the one killed and what it was running."""

    n: int
    at_s: float
    after_start_s: float
    kind: str
    pid: int
    what: str


@dataclass
class Storm:
    seed: int
    kills_wanted: int
    kills: list = field(default_factory=list)
    runner_starts: int = 0
    refused_while_orphans: int = 0  # restarts that failed while a killed runner's dvc processes still ran
    seconds: float = 0.0
    note: str = ""


# --------------------------------------------------------------------------------------------------- processes
def _proc(pid: int) -> Optional[tuple[int, int, list[str]]]:
    """``(ppid, session id, argv)`` of a live process, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    rest = stat.rsplit(")", 1)[1].split()
    if rest[0] == "Z":
        return None
    return int(rest[1]), int(rest[3]), [a.decode(errors="replace") for a in argv if a]


def session_processes(sessions: set[int]) -> dict[int, list[str]]:
    """Every live process of the given session ids (the runners' sessions: a runner and all it started), by pid."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            info = _proc(int(p.name))
            if info is not None and info[1] in sessions:
                out[int(p.name)] = info[2]
    return out


def kind_of(pid: int, argv: list[str], runners: set[int]) -> Optional[str]:
    """``runner``, ``dvc`` (a ``dvc ... repro`` the runner started), ``stage`` (a stage script's Python) or None."""
    if pid in runners:
        return "runner"
    head = argv[:3]  # `dvc ...`, `python .../dvc ...` or `python -m dvc ...` (what the runner starts)
    if "repro" in argv and any(Path(a).name == "dvc" or a.endswith("dvc/__main__.py") for a in head):
        return "dvc"
    if any(a.startswith("stages/") and a.endswith(".py") for a in argv):
        return "stage"
    return None


def describe(argv: list[str]) -> str:
    """A short name for a process: the stage script and its arguments, or the dvc/runner command's target."""
    for i, a in enumerate(argv):
        if a.startswith("stages/") and a.endswith(".py"):
            return " ".join(argv[i:])
    if "repro" in argv:
        return " ".join(argv[argv.index("repro"):])
    return " ".join(argv[-3:])


# ------------------------------------------------------------------------------------------------------- runs
def runner_cmd(target: str, jobs: int) -> list[str]:
    return [sys.executable, "-m", "greg_ood.cli.repro", target, "--jobs", str(jobs)]


def run_uninterrupted(repo: Path, env: dict, target: str, jobs: int, log: Path) -> int:
    with log.open("ab") as f:
        return subprocess.run(runner_cmd(target, jobs), cwd=repo, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def wait_gone(pids, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end and any(_proc(p) is not None for p in pids):
        time.sleep(0.2)


def storm(repo: Path, env: dict, target: str, jobs: int, kills: int, seed: int, window: tuple[float, float],
          log: Path) -> Storm:
    """Run ``target`` in ``repo`` through the runner, SIGKILLing ``kills`` times (see the module docstring); each
    kill comes ``uniform(*window)`` seconds after the runner's (re)start. Returns what was killed when."""
    rng = random.Random(seed)
    st = Storm(seed=seed, kills_wanted=kills)
    sessions: set[int] = set()
    runners: set[int] = set()
    t0 = time.time()
    failures_without_kill = 0
    with log.open("ab") as out:
        while True:
            out.write(f"\n=== runner start {st.runner_starts + 1} at {time.time() - t0:.1f} s\n".encode())
            out.flush()
            p = subprocess.Popen(runner_cmd(target, jobs), cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            st.runner_starts += 1
            sessions.add(p.pid)
            runners.add(p.pid)
            started = time.time()
            killed_now = False
            if len(st.kills) < kills:
                deadline = started + rng.uniform(*window)
                while time.time() < deadline and p.poll() is None:
                    time.sleep(0.05)
                if p.poll() is None:
                    killed_now = _kill_one(rng, st, sessions, runners, t0, started)
            rc = p.wait()
            if rc == 0 and not killed_now and len(st.kills) >= kills:
                break
            if rc == 0 and len(st.kills) < kills:
                st.note = f"the suite finished after {len(st.kills)} of {kills} kills (the window was too long)"
                break
            orphans = session_processes(sessions - {p.pid})
            if rc != 0 and not killed_now and orphans:
                # a killed runner's `dvc repro` children live on and finish their stage; the new runner refused to
                # plan while they hold their stage's lock: wait for them, as a user would, and try again
                st.refused_while_orphans += 1
                wait_gone(orphans, 1800)
                continue
            failures_without_kill = 0 if killed_now else failures_without_kill + 1
            if failures_without_kill >= 2:
                st.note = f"the runner failed twice in a row without a kill (exit {rc}); see {log}"
                break
    wait_gone(session_processes(sessions), 600)  # orphans of killed runners finish (or die) before the checks
    st.seconds = round(time.time() - t0, 1)
    return st


def _kill_one(rng: random.Random, st: Storm, sessions: set[int], runners: set[int], t0: float,
              started: float) -> bool:
    """SIGKILL one process of a kind drawn from ``rng`` (another kind when none of that kind runs now)."""
    want = rng.choice(KINDS)
    end = time.time() + WAIT_FOR_KIND_S
    while True:  # wait a while for a process of the drawn kind (a stage starts some seconds after the runner)
        procs = session_processes(sessions)
        by_kind: dict[str, list[int]] = {k: [] for k in KINDS}
        for pid, argv in procs.items():
            k = kind_of(pid, argv, runners)
            if k is not None:
                by_kind[k].append(pid)
        if by_kind[want] or time.time() > end or not by_kind["runner"]:
            break
        time.sleep(0.1)
    order = [want] + [k for k in KINDS if k != want]
    kind = next((k for k in order if by_kind[k]), None)
    if kind is None:
        return False
    pid = rng.choice(sorted(by_kind[kind]))
    what = describe(procs[pid])
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    now = time.time()
    st.kills.append(Kill(len(st.kills) + 1, round(now - t0, 1), round(now - started, 1), kind, pid, what))
    print(f"kill {len(st.kills)}: {kind} {what} at {now - t0:.1f} s", file=sys.stderr, flush=True)
    return True


# ------------------------------------------------------------------------------------------------------ checks
def locks(repo: Path) -> dict[str, str]:
    files = [repo / "dvc.lock", *sorted(repo.glob("pipelines/*/dvc.lock"))]
    return {f.relative_to(repo).as_posix(): f.read_text() for f in files if f.is_file()}


def out_md5s(repo: Path) -> dict[str, str]:
    """Every output recorded in ``repo``'s lock files: path -> md5."""
    import yaml

    out = {}
    for text in locks(repo).values():
        for stage in (yaml.safe_load(text) or {}).get("stages", {}).values():
            for o in stage.get("outs", []):
                out[o["path"]] = o.get("md5")
    return out


def lock_entries_differ(ref: Path, got: Path) -> list[str]:
    """``stage: path`` for each dep/out whose recorded hash differs between the two checkouts' lock files (the lock
    files may also differ only in the order of their entries: DVC appends a stage's entry when it finishes)."""
    import yaml

    def entries(repo: Path) -> dict:
        out = {}
        for text in locks(repo).values():
            for name, st in (yaml.safe_load(text) or {}).get("stages", {}).items():
                for part in ("deps", "outs"):
                    for d in st.get(part, []):
                        out[f"{name}: {part} {d['path']}"] = d.get("md5")
        return out

    a, b = entries(ref), entries(got)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def mlflow_runs(repo: Path) -> list[tuple[str, str]]:
    """``(dvc stage, status)`` of every run in ``repo``'s MLflow store."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exps = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(exps, max_results=5000)
    return [(r.data.tags.get("dvc.stage", "?"), r.info.status) for r in runs]


def csv_steps(repo: Path) -> dict[str, list[int]]:
    out = {}
    for f in sorted(repo.glob("metrics/*/train/*.csv")) + sorted(repo.glob("metrics/*/pretrain/*.csv")):
        out[f.relative_to(repo).as_posix()] = [int(r["step"]) for r in csv.DictReader(f.open(newline=""))]
    return out


def compare(ref: Path, got: Path, env: dict, target: str) -> dict:
    """What differs between the uninterrupted run ``ref`` and the storm's ``got`` (empty lists: nothing)."""
    ref_md5, got_md5 = out_md5s(ref), out_md5s(got)
    status = subprocess.run(["dvc", "status", "--with-deps", target], cwd=got, env=env, capture_output=True,
                            text=True)
    runs = mlflow_runs(got)
    finished: dict[str, int] = {}
    for stage, s in runs:
        finished[stage] = finished.get(stage, 0) + (s == "FINISHED")
    ref_stages = {stage for stage, _ in mlflow_runs(ref)}
    steps_ref, steps_got = csv_steps(ref), csv_steps(got)
    return {
        "outputs": len(ref_md5),
        "locks_identical": locks(ref) == locks(got),
        "lock_entries_differ": lock_entries_differ(ref, got),
        "md5_differ": sorted(k for k in ref_md5.keys() | got_md5.keys() if ref_md5.get(k) != got_md5.get(k)),
        "dvc_status": status.stdout.strip() + status.stderr.strip(),
        "dvc_status_clean": status.returncode == 0 and "up to date" in status.stdout,
        "mlflow_runs": len(runs),
        "mlflow_status_counts": {s: sum(1 for _, x in runs if x == s) for s in sorted({x for _, x in runs})},
        "bad_status": sorted({f"{stage}: {s}" for stage, s in runs if s not in ("FINISHED", "KILLED")}),
        "not_one_finished": sorted(f"{k}: {v}" for k, v in finished.items() if v != 1)
        + sorted(f"{k}: no run" for k in ref_stages - finished.keys()),
        "csv_files": len(steps_got),
        "csv_bad": sorted(k for k in steps_ref.keys() | steps_got.keys()
                          if steps_got.get(k) != steps_ref.get(k) or len(set(steps_got.get(k, []))) !=
                          len(steps_got.get(k, []))),
    }


def passed(res: dict) -> bool:
    """Every output's md5 equal, ``dvc status`` clean, MLflow states as required, every CSV step once."""
    return (not res["md5_differ"] and res["dvc_status_clean"] and not res["bad_status"]
            and not res["not_one_finished"] and not res["csv_bad"])


# ----------------------------------------------------------------------------------------------------- report
def markdown(st: Storm, res: dict, cmd: str, ref_seconds: float) -> str:
    ok = passed(res)
    lines = [
        "# Kill storm over the tiny mini suite",
        "",
        f"`{cmd}`",
        "",
        "The tiny `mini` suite (tools/scratch_repo.py's TINY) run through `python -m greg_ood.cli.repro report_mini`;"
        " after each (re)start of the runner, at a moment drawn from `random.Random(seed)`, one process is SIGKILLed:"
        " a running stage script, a `dvc repro` process or the runner itself (the kind drawn first; when none of it"
        f" runs, the first to appear within {WAIT_FOR_KIND_S:.0f} s, else another kind), and the runner is started again until the suite finishes. Then the result is compared"
        " with an uninterrupted run of the same suite in another scratch copy.",
        "",
        f"* seed {st.seed}; kills {len(st.kills)} of {st.kills_wanted} wanted; runner starts {st.runner_starts}; "
        f"storm {st.seconds:.0f} s" + (f", uninterrupted run {ref_seconds:.0f} s (side by side on a shared 2-core "
                                        "machine)" if ref_seconds else ""),
        f"* result: **{'passed' if ok else 'FAILED'}** — outputs with another md5: {len(res['md5_differ'])} of "
        f"{res['outputs']}; `dvc status --with-deps report_mini` clean: {res['dvc_status_clean']}; dvc.lock files "
        f"byte-identical: {res['locks_identical']}; recorded deps/outs with another hash: "
        f"{res.get('lock_entries_differ') or 'none'}",
        f"* MLflow: {res['mlflow_runs']} runs {res['mlflow_status_counts']}; runs neither FINISHED nor KILLED: "
        f"{res['bad_status'] or 'none'}; stages without exactly one FINISHED run: {res['not_one_finished'] or 'none'}",
        f"* training CSVs: {res['csv_files']}; with a duplicated or missing step: {res['csv_bad'] or 'none'}",
    ]
    if st.refused_while_orphans:
        lines.append(f"* runner restarts refused while a killed runner's `dvc repro` children were still running "
                     f"(\"cannot plan ... is busy\"; the storm then waits for them and restarts): "
                     f"{st.refused_while_orphans}")
    if st.note:
        lines.append(f"* note: {st.note}")
    lines += ["", "| # | at (s) | after runner start (s) | killed | process |", "|---|---|---|---|---|"]
    lines += [f"| {k.n} | {k.at_s} | {k.after_start_s} | {k.kind} | `{k.what}` |" for k in st.kills]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=28)
    ap.add_argument("--target", default="report_mini")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--window", type=float, nargs=2, default=(10.0, 50.0), metavar=("MIN_S", "MAX_S"),
                    help="a kill comes uniform(MIN_S, MAX_S) seconds after the runner's (re)start")
    ap.add_argument("--workdir", type=Path, default=None, help="where the two scratch copies go (default: a temp dir)")
    ap.add_argument("--ref", type=Path, default=None,
                    help="an uninterrupted run's finished scratch copy to compare with (default: run one side by side)")
    ap.add_argument("--md", type=Path, default=None, help="write the report here")
    ap.add_argument("--json", type=Path, default=None, help="write the kills and the comparison here")
    args = ap.parse_args(argv)
    import tempfile

    work = args.workdir or Path(tempfile.mkdtemp(prefix="kill-storm-"))
    work.mkdir(parents=True, exist_ok=True)
    ref, got = args.ref or work / "uninterrupted", work / "storm"
    env_got = scratch_repo.build(got)
    ref_rc, ref_t = [0], [0.0]

    def uninterrupted():
        t = time.time()
        ref_rc[0] = run_uninterrupted(ref, scratch_repo.build(ref), args.target, args.jobs, work / "uninterrupted.log")
        ref_t[0] = time.time() - t

    th = threading.Thread(target=uninterrupted if args.ref is None else (lambda: None))
    th.start()
    st = storm(got, env_got, args.target, args.jobs, args.kills, args.seed, tuple(args.window), work / "storm.log")
    th.join()
    if ref_rc[0] != 0:
        print(f"the uninterrupted run failed (exit {ref_rc[0]}); see {work / 'uninterrupted.log'}", file=sys.stderr)
        return 1
    res = compare(ref, got, env_got, args.target)
    cmd = "nice -n 10 python -m tools.kill_storm " + " ".join(
        [f"--kills {args.kills}", f"--seed {args.seed}"] + (["--md", str(args.md)] if args.md else []))
    if args.json:
        args.json.write_text(json.dumps({"storm": asdict(st), "result": res, "passed": passed(res),
                                         "uninterrupted_seconds": round(ref_t[0], 1)}, indent=1) + "\n")
    text = markdown(st, res, cmd, ref_t[0])
    if args.md:
        args.md.write_text(text)
    print(text)
    return 0 if passed(res) and len(st.kills) >= args.kills else 1


if __name__ == "__main__":
    raise SystemExit(main())
