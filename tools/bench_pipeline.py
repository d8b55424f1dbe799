"""Pipeline benchmark: where the wall time and the CPU time of a DVC stage go (``make bench-pipeline``).

For each git revision given (default: HEAD), a scratch clone at that revision gets the tiny `mini` configuration of
``tests/test_pipeline_e2e.py`` (a few dozen training steps per stage, so the start-up and bookkeeping around the work
dominate, as they do on 2 cores) and runs, with ``tools/bench_hook`` on PYTHONPATH:

1. the whole suite, ``dvc repro report_mini`` (every stage kind: download, pretrain, select, train, evaluate,
   certify, report). The hook records per stage process and phase the wall and CPU time (start-up, imports, config,
   data loading, model loading, the work, evaluation inside training, MLflow set-up, other tracking, checkpoint and
   output writes; see ``tools/bench_hook/sitecustomize.py``). DVC's own time per stage is the ``dvc repro`` time
   minus its stage processes', divided by the number of stages;
2. DVC probes per stage kind: ``dvc repro --single-item`` of an up-to-date stage (DVC alone: load the pipeline,
   hash, compare) and ``dvc repro --single-item --force`` (a changed stage: DVC's time = the probe minus the stage
   process), ``dvc status report_mini``, and one ``dvc.lock`` update as DVC does it after every stage (round-trip
   parse + dump);
3. the imports of each stage script (``python -X importtime stages/<x>.py --help``): CPU time of the process and the
   cumulative import time of the heaviest top-level packages.

CPU time (user + system, children included) is the comparison on a loaded machine; wall time is shown too. Writes
``<out>/pipeline.json`` (every measurement) and ``<out>/pipeline.md`` (medians per stage kind and revision), with the
machine named.

    python tools/bench_pipeline.py --rev 041b738 --rev HEAD --out reports/bench
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "tools" / "bench_hook"
sys.path.insert(0, str(ROOT / "tests"))
from test_pipeline_e2e import TINY, _set  # noqa: E402 - the tiny configuration the end-to-end test runs

PHASES = ["start", "imports", "config", "data", "model_load", "work", "eval_in_training", "mlflow_setup", "tracking",
          "checkpoint", "writing", "other", "subprocesses"]
KINDS = ["download", "pretrain", "select", "train", "evaluate", "certify", "report"]
SCRIPT_KIND = {"download.py": "download", "pretrain.py": "pretrain", "select_aux.py": "select", "train.py": "train",
               "evaluate.py": "evaluate", "certify.py": "certify", "report.py": "report"}
# one DVC stage per kind for the DVC probes (cheap ones where a kind has several)
PROBES = {"download": "download@gaussian_noise", "pretrain": "pretrain_mini@small_cnn",
          "select": "select_mini@small_cnn", "train": "train_mini@energy-small_cnn-0",
          "evaluate": "evaluate_mini@energy-small_cnn-0", "certify": "certify_mini", "report": "report_mini"}
HEAVY = ["torch", "numpy", "mlflow", "pandas", "pydantic", "yaml", "scipy", "sklearn", "matplotlib", "PIL",
         "greg_ood"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; return the result, its wall time and its CPU time (user + system, its children included)."""
    c0, t0 = children_cpu(), time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r, wall, cpu


def clone_env(clone: Path, log: Path) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({"PYTHONPATH": os.pathsep.join([str(HOOK), str(clone / "src")]), "GREG_OOD_BENCH_OUT": str(log),
                "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
                "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"})
    return env


def make_clone(rev: str, base: Path) -> tuple[str, Path]:
    """A scratch clone at ``rev`` with the tiny `mini` configuration committed (so the git state MLflow records is
    clean, as in a user's clone)."""
    sha = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = base / sha[:10]
    env = clone_env(dest, base / "unused.jsonl")
    timed(["git", "clone", "-q", "--no-checkout", str(ROOT), str(dest)], base, env)
    timed(["git", "checkout", "-q", sha], dest, env)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    for k, v in TINY.items():
        _set(raw, k, v)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    timed(["git", "commit", "-qam", "tiny mini configuration"], dest, env)
    return sha, dest


def records(log: Path, start: int = 0) -> list[dict]:
    """The stage-process records the hook wrote from line ``start`` on, each with its stage kind."""
    out = []
    for line in log.read_text().splitlines()[start:] if log.exists() else []:
        rec = json.loads(line)
        kind = SCRIPT_KIND.get(Path(rec["argv"][0]).name) if rec["argv"] else None
        if kind:
            out.append({**rec, "kind": kind})
    return out


def line_count(log: Path) -> int:
    return log.read_text().count("\n") if log.exists() else 0


def full_run(clone: Path, log: Path) -> dict:
    """``dvc repro report_mini`` from scratch: every stage's phases, and DVC's own time per stage."""
    env = clone_env(clone, log)
    _, wall, cpu = timed(["dvc", "repro", "report_mini"], clone, env)
    recs = records(log)
    n = len(recs)
    dvc_wall = (wall - sum(r["total"] for r in recs)) / max(n, 1)
    dvc_cpu = (cpu - sum(r["cpu_total"] for r in recs)) / max(n, 1)
    return {"wall": wall, "cpu": cpu, "stages": n, "dvc_wall_per_stage": dvc_wall, "dvc_cpu_per_stage": dvc_cpu,
            "records": recs, "lock_lines": (clone / "dvc.lock").read_text().count("\n"),
            "yaml_lines": (clone / "dvc.yaml").read_text().count("\n")}


def dvc_probes(clone: Path, log: Path) -> dict:
    """Per stage kind: ``dvc repro --single-item`` up to date, and forced (DVC's part = wall/CPU minus the stage
    process); ``dvc status report_mini``; one dvc.lock round-trip update."""
    env = clone_env(clone, log)
    out: dict = {}
    for kind, stage in PROBES.items():
        _, up_wall, up_cpu = timed(["dvc", "repro", "--single-item", stage], clone, env)
        start = line_count(log)
        _, f_wall, f_cpu = timed(["dvc", "repro", "--single-item", "--force", stage], clone, env)
        recs = records(log, start)
        out[kind] = {"stage": stage, "uptodate_wall": up_wall, "uptodate_cpu": up_cpu, "forced_wall": f_wall,
                     "forced_cpu": f_cpu, "process_wall": sum(r["total"] for r in recs),
                     "process_cpu": sum(r["cpu_total"] for r in recs),
                     "dvc_wall": f_wall - sum(r["total"] for r in recs),
                     "dvc_cpu": f_cpu - sum(r["cpu_total"] for r in recs)}
    _, s_wall, s_cpu = timed(["dvc", "status", "report_mini"], clone, env)
    out["status_report_mini"] = {"wall": s_wall, "cpu": s_cpu}
    code = ("import time,sys;from dvc.utils.serialize import modify_yaml;t=time.process_time();w=time.perf_counter()\n"
            "with modify_yaml('dvc.lock') as d: pass\n"
            "print(time.process_time()-t, time.perf_counter()-w)")
    r, _, _ = timed([sys.executable, "-c", code], clone, env)
    lock_cpu, lock_wall = map(float, r.stdout.split())
    out["lock_update"] = {"wall": lock_wall, "cpu": lock_cpu}
    return out


_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_profile(clone: Path) -> dict:
    """Per stage script: CPU and wall time of ``stages/<x>.py --help`` (start-up + imports + argument parsing) and
    the cumulative import time (µs -> s, wall, one run) of the heaviest top-level packages it imports."""
    env = clone_env(clone, clone / "unused.jsonl")
    env.pop("GREG_OOD_BENCH_OUT")
    env["PYTHONPATH"] = str(clone / "src")
    out = {}
    for script, kind in SCRIPT_KIND.items():
        r, wall, cpu = timed([sys.executable, "-X", "importtime", f"stages/{script}", "--help"], clone, env)
        pkgs: dict[str, float] = {}
        for m in _IMPORT_LINE.finditer(r.stderr):
            name = m.group(4)
            top = name.split(".")[0]
            if top in HEAVY and "." not in name or (top == "greg_ood" and name.count(".") == 1):
                pkgs[name] = pkgs.get(name, 0.0) + int(m.group(2)) / 1e6
        loaded = set(pkgs)
        out[kind] = {"wall": wall, "cpu": cpu, "packages": dict(sorted(pkgs.items(), key=lambda kv: -kv[1])),
                     "mlflow": "mlflow" in loaded, "torch": "torch" in loaded,
                     "greg_ood_modules": sorted(n for n in loaded if n.startswith("greg_ood."))}
    return out


def closure_sizes(clone: Path) -> dict:
    """Files in each stage script's code closure (the code deps of its DVC stages)."""
    code = ("import json,sys;from greg_ood.codedeps import closure_relative as c;"
            "print(json.dumps({s: len(c('stages/'+s, '.')) for s in sys.argv[1:]}))")
    env = dict(os.environ, PYTHONPATH=str(clone / "src"))
    r, _, _ = timed([sys.executable, "-c", code, *SCRIPT_KIND], clone, env)
    return {SCRIPT_KIND[k]: v for k, v in json.loads(r.stdout).items()}


def med(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else 0.0


def kind_table(recs: list[dict], key: str) -> list[str]:
    lines = ["| stage kind | n | total | not work | " + " | ".join(PHASES) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(PHASES)]
    total_key = "total" if key == "phases" else "cpu_total"
    for kind in KINDS:
        rs = [r for r in recs if r["kind"] == kind]
        if not rs:
            continue
        tot = med(r[total_key] for r in rs)
        notwork = med(r[total_key] - r[key].get("work", 0.0) for r in rs)
        cells = " | ".join(f"{med(r[key].get(p, 0.0) for r in rs):.2f}" for p in PHASES)
        lines.append(f"| {kind} | {len(rs)} | {tot:.2f} | {notwork:.2f} | {cells} |")
    return lines


def summarize(res: dict) -> str:
    meta = res["meta"]
    lines = ["# Pipeline benchmark: where a stage's time goes", "",
             f"Machine: {meta['machine']}, {meta['cpus']} logical CPUs, Python {meta['python']}.", "",
             "Configuration: the tiny `mini` suite of `tests/test_pipeline_e2e.py` in a scratch clone of each "
             "revision (`tools/bench_pipeline.py`). Seconds; medians over the stages of a kind.",
             "Phases: start = interpreter start-up; imports = module imports up to the stage front; config = "
             "argument parsing + params validation; data = loading the prepared arrays; model_load; work = training "
             "steps / scoring / preparing a dataset / building the report; eval_in_training = per-epoch ID accuracy; "
             "mlflow_setup = MLflow client and store opened (importing mlflow and SQLAlchemy included); tracking = "
             "other MLflow calls and the git state; checkpoint / writing = output files; other = the rest of the "
             "process (logging, seeding, building the model, exit); subprocesses = CPU of child processes (git).", ""]
    for rev in meta["revs"]:
        r = res["revs"][rev]
        f = r["full"]
        lines += [f"## {rev} ({r['sha'][:10]})", "",
                  f"Measured {r['date']}; load average (1/5/15 min) at start {r['load'][0]}, at end {r['load'][1]}. "
                  f"{r['note']}".rstrip(), "",
                  f"`dvc repro report_mini`: {f['stages']} stages, wall {f['wall']:.0f} s, CPU {f['cpu']:.0f} s; "
                  f"DVC's own time per stage (repro minus the stage processes): wall {f['dvc_wall_per_stage']:.2f} s, "
                  f"CPU {f['dvc_cpu_per_stage']:.2f} s. dvc.yaml {f['yaml_lines']} lines, dvc.lock after the run "
                  f"{f['lock_lines']} lines.", "",
                  "CPU time per stage process:", "", *kind_table(f["records"], "cpu"), "",
                  "Wall time per stage process:", "", *kind_table(f["records"], "phases"), "",
                  "DVC per stage kind (`dvc repro --single-item`): up to date = DVC alone; forced: DVC's part = the "
                  "probe minus the stage process.", "",
                  "| stage kind | probe stage | up to date CPU | up to date wall | forced CPU | process CPU | DVC CPU "
                  "| forced wall | DVC wall |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for kind in KINDS:
            p = r["dvc"][kind]
            lines.append(f"| {kind} | `{p['stage']}` | {p['uptodate_cpu']:.2f} | {p['uptodate_wall']:.2f} | "
                         f"{p['forced_cpu']:.2f} | {p['process_cpu']:.2f} | {p['dvc_cpu']:.2f} | "
                         f"{p['forced_wall']:.2f} | {p['dvc_wall']:.2f} |")
        st, lk = r["dvc"]["status_report_mini"], r["dvc"]["lock_update"]
        lines += ["", f"`dvc status report_mini`: CPU {st['cpu']:.2f} s, wall {st['wall']:.2f} s. One dvc.lock "
                  f"update as DVC does it after each stage (round-trip parse + dump): CPU {lk['cpu']:.2f} s, wall "
                  f"{lk['wall']:.2f} s.", "",
                  "Imports (`python -X importtime stages/<x>.py --help`): CPU of the whole process, code closure "
                  "(files), and the cumulative import wall time of the heaviest packages.", "",
                  "| stage kind | CPU | wall | closure files | torch | mlflow | heaviest imports (s) |",
                  "|---|---:|---:|---:|---|---|---|"]
        for kind in KINDS:
            i = r["imports"][kind]
            heavy = ", ".join(f"{k} {v:.2f}" for k, v in list(i["packages"].items())[:6])
            lines.append(f"| {kind} | {i['cpu']:.2f} | {i['wall']:.2f} | {r['closure'][kind]} | "
                         f"{'yes' if i['torch'] else 'no'} | {'yes' if i['mlflow'] else 'no'} | {heavy} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", action="append", help="git revision to measure (repeatable; default HEAD)")
    ap.add_argument("--out", default="reports/bench")
    ap.add_argument("--merge", action="store_true",
                    help="keep the revisions already in <out>/pipeline.json (measured earlier) and add these")
    ap.add_argument("--note", default="", help="a sentence on the machine's state (e.g. another job running)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch clones (printed)")
    args = ap.parse_args(argv)
    revs = args.rev or ["HEAD"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"meta": {"machine": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "revs": []}, "revs": {}}
    if args.merge and (out / "pipeline.json").exists():
        res = json.loads((out / "pipeline.json").read_text())
    base = Path(tempfile.mkdtemp(prefix="greg-bench-pipeline-"))
    try:
        for rev in revs:
            load0, date = os.getloadavg(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            sha, clone = make_clone(rev, base)
            log = base / f"{sha[:10]}.jsonl"
            full = full_run(clone, log)
            print(f"{rev:>12}: dvc repro report_mini {full['stages']} stages, wall {full['wall']:.0f} s, "
                  f"CPU {full['cpu']:.0f} s", flush=True)
            res["revs"][rev] = {"sha": sha, "date": date, "note": args.note,
                                "load": [" ".join(f"{x:.2f}" for x in la) for la in (load0, os.getloadavg())],
                                "full": full, "dvc": dvc_probes(clone, log), "imports": import_profile(clone),
                                "closure": closure_sizes(clone)}
            res["meta"]["revs"] = [r for r in res["meta"]["revs"] if r != rev] + [rev]
            (out / "pipeline.json").write_text(json.dumps(res, indent=1) + "\n")
    finally:
        if args.keep:
            print(f"scratch clones kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    (out / "pipeline.md").write_text(summarize(res))
    print(f"wrote {out / 'pipeline.md'}")


if __name__ == "__main__":
    sys.exit(main())
