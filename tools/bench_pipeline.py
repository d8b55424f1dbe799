"""Pipeline benchmark: where the wall time of a DVC stage goes (``make bench-pipeline``).

For each git revision given (default: the working tree's HEAD), a scratch clone gets the prepared data of this
checkout (hard links) and runs a representative set of the `mini` suite's stages one by one with
``dvc repro --single-item --force <stage>``, in the order of the pipeline, revisions interleaved stage by stage so a
background load affects them alike. Every stage process runs with ``tools/bench_hook`` on PYTHONPATH, which times
its phases (start-up, imports, config, data loading, the work, evaluation inside training, tracking, checkpoint and
output writes; see ``tools/bench_hook/sitecustomize.py``); DVC's own time is the ``dvc repro`` wall time minus the
stage process's. Writes ``<out>/pipeline.json`` (every measurement) and ``<out>/pipeline.md`` (medians per stage kind
and revision), with the machine named.

    python tools/bench_pipeline.py --rev 8bd208d --rev HEAD --repeat 2 --out reports/bench
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "tools" / "bench_hook"
PHASES = ["start", "imports", "config", "data", "model_load", "work", "eval_in_training", "checkpoint", "tracking",
          "writing", "other", "dvc"]

# (stage kind, DVC stage). The order respects the pipeline's dependencies.
STAGES = [
    ("pretrain", "pretrain_mini@small_cnn"),
    ("select", "select_mini@small_cnn"),
    ("train (energy)", "train_mini@energy-small_cnn-0"),
    ("train (greg)", "train_mini@greg-small_cnn-0"),
    ("train (greg_plus)", "train_mini@greg_plus-small_cnn-0"),
    ("evaluate", "evaluate_mini@greg-small_cnn-0"),
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sh(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def make_clone(rev: str, base: Path) -> Path:
    """A scratch clone at ``rev`` with this checkout's prepared data hard-linked in and the downloads committed."""
    sha = sh(["git", "rev-parse", rev], ROOT).stdout.strip()
    dest = base / sha[:10]
    sh(["git", "clone", "-q", "--no-checkout", str(ROOT), str(dest)], base)
    sh(["git", "checkout", "-q", sha], dest)
    src = ROOT / "data" / "prepared"
    if not src.is_dir():
        raise SystemExit(f"{src}: no prepared data; run `dvc repro download@fashion_mnist ...` (or `make mini`) first")
    shutil.copytree(src, dest / "data" / "prepared", copy_function=os.link)
    return dest


def run_stage(clone: Path, stage: str, log: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HOOK), str(clone / "src")])
    env["GREG_OOD_BENCH_OUT"] = str(log)
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("MLFLOW_TRACKING_URI", None)
    before = log.read_text().count("\n") if log.exists() else 0
    t0 = time.perf_counter()
    r = sh(["dvc", "repro", "--single-item", "--force", stage], clone, env=env, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"dvc repro {stage} failed in {clone}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    recs = [json.loads(x) for x in log.read_text().splitlines()[before:]]
    stage_recs = [x for x in recs if any("stages/" in a for a in x["argv"][:1])]
    proc = sum(x["total"] for x in stage_recs)
    phases: dict[str, float] = {}
    for x in stage_recs:
        for k, v in x["phases"].items():
            phases[k] = phases.get(k, 0.0) + v
    phases["dvc"] = max(0.0, wall - proc)
    return {"wall": wall, "process": proc, "phases": phases}


def summarize(rows: list[dict], revs: list[str]) -> str:
    lines = ["# Pipeline benchmark: where a stage's wall time goes",
             "",
             f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}; "
             f"{time.strftime('%Y-%m-%d', time.gmtime())}. Each stage run alone with "
             "`dvc repro --single-item --force`; revisions interleaved; medians over repeats, seconds.",
             "Phases: start = interpreter start-up; imports = module imports up to the stage front; config = argument "
             "parsing + params validation; data = loading prepared arrays; work = training steps / scoring; "
             "eval_in_training = per-epoch ID accuracy; tracking = MLflow; checkpoint/writing = output files; "
             "dvc = DVC's own time around the process; other = the rest of the process.",
             ""]
    for rev in revs:
        lines += [f"## {rev}", "", "| stage kind | wall | overhead (wall − work) | " + " | ".join(PHASES) + " |",
                  "|---|---:|---:|" + "---:|" * len(PHASES)]
        kinds = [k for k, _ in STAGES]
        for kind in kinds:
            rs = [r for r in rows if r["rev"] == rev and r["kind"] == kind]
            if not rs:
                continue
            med = {p: statistics.median(r["phases"].get(p, 0.0) for r in rs) for p in PHASES}
            wall = statistics.median(r["wall"] for r in rs)
            over = statistics.median(r["wall"] - r["phases"].get("work", 0.0) for r in rs)
            lines.append(f"| {kind} | {wall:.1f} | {over:.1f} | " + " | ".join(f"{med[p]:.2f}" for p in PHASES) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", action="append", help="git revision to measure (repeatable; default HEAD)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default="reports/bench")
    ap.add_argument("--keep", action="store_true", help="keep the scratch clones (printed)")
    args = ap.parse_args(argv)
    revs = args.rev or ["HEAD"]
    base = Path(tempfile.mkdtemp(prefix="greg-bench-pipeline-"))
    clones = {rev: make_clone(rev, base) for rev in revs}
    rows = []
    try:
        for rep in range(args.repeat):
            for kind, stage in STAGES:
                for rev in revs:
                    m = run_stage(clones[rev], stage, base / f"{clones[rev].name}.jsonl")
                    rows.append({"rev": rev, "kind": kind, "stage": stage, "repeat": rep, **m})
                    print(f"{rev:>12} {stage:<36} wall {m['wall']:6.1f} s  work {m['phases'].get('work', 0):6.1f} s",
                          flush=True)
    finally:
        if args.keep:
            print(f"scratch clones kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "revs": revs, "repeat": args.repeat}
    (out / "pipeline.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / "pipeline.md").write_text(summarize(rows, revs))
    print(f"wrote {out / 'pipeline.md'}")


if __name__ == "__main__":
    sys.exit(main())
