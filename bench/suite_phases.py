"""Where a whole suite's CPU time goes, from a real run with the phase timer on (``bench/hook``).

Run any suite command with the hook on, then summarise its records::

    PYTHONPATH=bench/hook GREG_OOD_BENCH_OUT=/tmp/mini.jsonl make mini
    python -m bench.suite_phases /tmp/mini.jsonl --wall 1504 --out reports/bench/make-mini-phases

The hook appends one record per Python process at its exit. Stage processes (``stages/<x>.py``) are split into their
phases as in ``bench/pipeline.py``; a ``dvc`` process's own CPU is its total minus the children it waited for
(the stage command), and so is the runner's (``greg_ood.cli.repro``). The summary gives, per stage kind, the CPU of
the work (training steps, scoring, preparing a dataset), of the evaluation inside training, and of everything else,
and the floor the work sets on the wall time: work CPU / cores, the time the suite would take if the cores did
nothing but the work and were never idle. Writes ``<out>.md`` and ``<out>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .pipeline import KINDS, PHASES, SCRIPT_KIND, cpu_name


def load(log: Path) -> dict:
    """Stage-process records (with their kind), DVC processes' own CPU, and the runner's own CPU."""
    stages, dvc, runner = [], [], []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        argv = rec.get("argv") or [""]
        kind = SCRIPT_KIND.get(Path(argv[0]).name)
        own = rec["cpu_total"] - rec["cpu"].get("subprocesses", 0.0)
        if kind:
            stages.append({**rec, "kind": kind})
        elif Path(argv[0]).name == "dvc" or argv[0].endswith("dvc/__main__.py"):
            dvc.append({"argv": argv, "own_cpu": own})
        elif "greg_ood.cli.repro" in " ".join(argv) or argv[0].endswith("cli/repro.py"):
            runner.append({"argv": argv, "own_cpu": own, "cpu_total": rec["cpu_total"]})
    return {"stages": stages, "dvc": dvc, "runner": runner}


def summarize(data: dict, cores: int) -> dict:
    """Sums per stage kind (CPU seconds) and the work's floor on the wall time."""
    kinds = {}
    for kind in KINDS:
        rs = [r for r in data["stages"] if r["kind"] == kind]
        if not rs:
            continue
        work = sum(r["cpu"].get("work", 0.0) for r in rs)
        ev = sum(r["cpu"].get("eval_in_training", 0.0) for r in rs)
        total = sum(r["cpu_total"] for r in rs)
        phases = {p: sum(r["cpu"].get(p, 0.0) for r in rs) for p in PHASES}
        kinds[kind] = {"n": len(rs), "total": total, "work": work, "eval_in_training": ev,
                       "other": total - work - ev, "phases": phases}
    stage_total = sum(k["total"] for k in kinds.values())
    work = sum(k["work"] for k in kinds.values())
    dvc = sum(d["own_cpu"] for d in data["dvc"])
    runner = sum(d["own_cpu"] for d in data["runner"])
    python = stage_total + dvc + runner
    # the runner waited for every process of the run: its children's CPU also counts the shells and git that DVC
    # starts, which write no record; without a runner record, the Python processes are all we know
    everything = max(python, sum(d["cpu_total"] for d in data["runner"]))
    return {"kinds": kinds, "stage_processes": stage_total, "work": work,
            "eval_in_training": sum(k["eval_in_training"] for k in kinds.values()),
            "dvc": dvc, "dvc_processes": len(data["dvc"]), "runner": runner, "cores": cores,
            "python": python, "all": everything, "unrecorded": everything - python, "work_floor_s": work / cores,
            "overhead_per_stage": (everything - work) / max(1, sum(k["n"] for k in kinds.values()))}


def render(s: dict, wall: float | None, note: str) -> str:
    m = lambda x: f"{x / 60:.1f} min"  # noqa: E731
    lines = ["# Whole-suite CPU by phase", "", f"Machine: {cpu_name()}, {s['cores']} logical CPUs. {note}".rstrip(), "",
             "CPU seconds (user + system) summed over the stage processes of each kind; work = training steps / "
             "scoring / preparing a dataset; eval in training = the per-epoch ID accuracy; rest = start-up, imports, "
             "config, data loading, MLflow, hashing, writing.", "",
             "| stage kind | n | CPU | work | eval in training | rest | rest per stage |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, k in s["kinds"].items():
        lines.append(f"| {kind} | {k['n']} | {k['total']:.0f} | {k['work']:.0f} | {k['eval_in_training']:.0f} | "
                     f"{k['other']:.0f} | {k['other'] / k['n']:.1f} |")
    n = sum(k["n"] for k in s["kinds"].values())
    lines += [f"| **all stages** | {n} | {s['stage_processes']:.0f} | {s['work']:.0f} | {s['eval_in_training']:.0f} | "
              f"{s['stage_processes'] - s['work'] - s['eval_in_training']:.0f} | "
              f"{(s['stage_processes'] - s['work'] - s['eval_in_training']) / n:.1f} |", "",
              f"DVC's own CPU ({s['dvc_processes']} `dvc` processes): {s['dvc']:.0f} s; the runner's own: "
              f"{s['runner']:.0f} s; processes that write no record (shells, git): {s['unrecorded']:.0f} s. "
              f"Everything: {s['all']:.0f} s CPU; all but the work: {s['overhead_per_stage']:.1f} s per stage.", "",
              f"**Floor set by the work**: {s['work']:.0f} s CPU / {s['cores']} cores = {s['work_floor_s']:.0f} s "
              f"({m(s['work_floor_s'])}): the suite's wall time if every other second of CPU were removed and the "
              f"cores were never idle."]
    if wall:
        lines.append(f"Measured wall time of the run: {wall:.0f} s ({m(wall)}); CPU busy on average "
                     f"{s['all'] / wall:.2f} of {s['cores']} cores.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path, help="the JSON-lines file the hook wrote (GREG_OOD_BENCH_OUT)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--wall", type=float, help="the run's measured wall time in seconds")
    ap.add_argument("--note", default="", help="a sentence naming the run (revision, command, load)")
    ap.add_argument("--out", type=Path, help="write <out>.md and <out>.json (else print the table)")
    a = ap.parse_args(argv)
    s = summarize(load(a.log), a.cores)
    md = render(s, a.wall, a.note)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.with_suffix(".md").write_text(md)
        a.out.with_suffix(".json").write_text(json.dumps({**s, "wall": a.wall, "note": a.note}, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
