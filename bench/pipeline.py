"""Pipeline benchmark: where the wall time and the CPU time of a DVC stage go (``make bench-pipeline``).

For each git revision given (default: HEAD), a scratch clone at that revision gets the end-to-end test's tiny `mini`
configuration (``TINY`` in ``tools/scratch_repo.py``: a few dozen training steps per stage, so the start-up and
bookkeeping around the work dominate) with one torch thread, and the outputs of the stages upstream of the measured
ones (prepared data, the pretrained model, the selection), hard-linked from a first, unmeasured ``dvc repro`` (or
from ``--artifacts``). Then, with ``bench/hook`` on PYTHONPATH, which records per stage process and phase the wall
and CPU time (start-up, imports, config, data loading, model loading, input/code hashing, the work, evaluation inside
training, MLflow set-up, other tracking, checkpoint and output writes; see ``bench/hook/sitecustomize.py``):

1. one stage per kind (:data:`PROBES`: download, pretrain, select, train, evaluate, certify), in pipeline order and
   revisions interleaved stage by stage: ``dvc repro --single-item --force`` (a changed stage: DVC's own time = the
   run minus its stage process), then ``dvc repro --single-item`` again (up to date: DVC alone);
2. ``dvc status report_mini`` (DVC loading the whole pipeline) and, per measured stage, one update of the committed
   dvc.lock that holds its entry as DVC does it after every stage (round-trip parse + dump; the root dvc.lock, or the
   stage group's own ``pipelines/<group>/dvc.lock`` where the revision has one);
3. the imports of each stage script, report included (``python -X importtime stages/<x>.py --help``): CPU time of the
   process, the cumulative import time of the heaviest packages, and the size of its code closure;
4. with ``--full``, the whole suite (``dvc repro report_mini`` from scratch): every stage's phases, and DVC's own time
   per stage.

CPU time (user + system, children included) is the comparison on a loaded machine; wall time is shown too. Writes
``<out>/pipeline.json`` (every measurement) and ``<out>/pipeline.md`` (per stage kind and revision), with the machine
named.

    python -m bench.pipeline --rev 041b738 --rev HEAD --out reports/bench
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

from tools.scratch_repo import TINY, set_dotted  # the tiny configuration the end-to-end test runs

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "bench" / "hook"

PHASES = ["start", "imports", "config", "setup", "data", "model_load", "resume_check", "work", "eval_in_training",
          "mlflow_setup", "tracking", "checkpoint", "writing", "other", "subprocesses"]
# on top of the end-to-end test's tiny configuration (the same for every revision compared): one torch thread, so the
# CPU time of the training steps is not inflated by threads spinning on a busy machine; a pretraining as short as the
# fine-tunes; certify on the energy models only (one training stage per kind is measured)
BENCH_OVERRIDES = {"project.num_threads": 1, "suites.mini.pretrain.steps_per_epoch": 24,
                   "suites.mini.certify.methods": ["energy"]}
KINDS = ["download", "pretrain", "select", "train", "evaluate", "certify", "report"]
SCRIPT_KIND = {"download.py": "download", "pretrain.py": "pretrain", "select_aux.py": "select", "train.py": "train",
               "evaluate.py": "evaluate", "certify.py": "certify", "report.py": "report"}
# (kind, DVC stage) measured, in pipeline order
PROBES = [("download", "download@gaussian_noise"), ("pretrain", "pretrain_mini@small_cnn"),
          ("select", "select_mini@small_cnn"), ("train", "train_mini@energy-small_cnn-0"),
          ("evaluate", "evaluate_mini@energy-small_cnn-0"), ("certify", "certify_mini")]
UPSTREAM = "select_mini@small_cnn"       # its upstream: every download, pretrain, select
ARTIFACTS = ["data/prepared", "models/pretrained", "selection"]
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
    for k, v in {**TINY, **BENCH_OVERRIDES}.items():
        set_dotted(raw, k, v)
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


def fresh(clone: Path) -> Path:
    """The clone as after checkout: the upstream outputs and the MLflow store removed, the dvc.lock files (and the
    other committed outputs) restored."""
    for rel in ARTIFACTS + ["models", "mlruns"]:
        shutil.rmtree(clone / rel, ignore_errors=True)
    (clone / "mlflow.db").unlink(missing_ok=True)
    timed(["git", "checkout", "-q", "--", "."], clone, clone_env(clone, clone / "unused.jsonl"))
    return clone


def full_run(clone: Path, log: Path) -> dict:
    """``dvc repro report_mini`` from scratch: every stage's phases, and DVC's own time per stage."""
    env = clone_env(clone, log)
    _, wall, cpu = timed(["dvc", "repro", "report_mini"], clone, env)
    recs = records(log)
    n = len(recs)
    dvc_wall = (wall - sum(r["total"] for r in recs)) / max(n, 1)
    dvc_cpu = (cpu - sum(r["cpu_total"] for r in recs)) / max(n, 1)
    return {"wall": wall, "cpu": cpu, "stages": n, "dvc_wall_per_stage": dvc_wall, "dvc_cpu_per_stage": dvc_cpu,
            "records": recs}


def link_artifacts(src: Path, clone: Path) -> None:
    """Hard-link the upstream stages' outputs (:data:`ARTIFACTS`) of ``src`` into ``clone``."""
    for rel in ARTIFACTS:
        if not (src / rel).is_dir():
            raise SystemExit(f"{src / rel}: missing; the source checkout must hold {', '.join(ARTIFACTS)} "
                             "of the suite measured (run its pipeline there first)")
        shutil.copytree(src / rel, clone / rel, copy_function=_link_new, dirs_exist_ok=True)


def _link_new(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` unless the clone already has that file (a tracked one such as .gitignore)."""
    if not os.path.exists(dst):
        os.link(src, dst)


def lock_of(clone: Path, stage: str) -> str:
    """The dvc.lock (relative path) that holds ``stage``'s entry in ``clone``: its group's own, where the revision
    declares the group in ``pipelines/<group>/dvc.yaml``, else the root one."""
    own = Path("pipelines") / stage.split("@")[0] / "dvc.lock"
    return own.as_posix() if (clone / own).with_name("dvc.yaml").is_file() else "dvc.lock"


def target(clone: Path, stage: str) -> str:
    """``stage`` as ``dvc repro`` addresses it in ``clone`` (``<file>:<name>`` outside the root dvc.yaml)."""
    lock = lock_of(clone, stage)
    return stage if lock == "dvc.lock" else f"{Path(lock).with_name('dvc.yaml').as_posix()}:{stage}"


def probe_stage(clone: Path, log: Path, kind: str, stage: str) -> dict:
    """``dvc repro --single-item --force <stage>`` (DVC's part = the run minus its stage process), then the same
    without ``--force`` (up to date: DVC alone)."""
    env = clone_env(clone, log)
    start = line_count(log)
    _, f_wall, f_cpu = timed(["dvc", "repro", "--single-item", "--force", target(clone, stage)], clone, env)
    recs = records(log, start)
    _, up_wall, up_cpu = timed(["dvc", "repro", "--single-item", target(clone, stage)], clone, env)
    return {"kind": kind, "stage": stage, "records": recs, "forced_wall": f_wall, "forced_cpu": f_cpu,
            "process_wall": sum(r["total"] for r in recs), "process_cpu": sum(r["cpu_total"] for r in recs),
            "dvc_wall": f_wall - sum(r["total"] for r in recs), "dvc_cpu": f_cpu - sum(r["cpu_total"] for r in recs),
            "uptodate_wall": up_wall, "uptodate_cpu": up_cpu}


def dvc_whole(clone: Path, sha: str) -> dict:
    """``dvc status report_mini``, and per measured stage one update of the committed dvc.lock that holds its entry,
    as DVC does it after every stage."""
    env = clone_env(clone, clone / "unused.jsonl")
    _, s_wall, s_cpu = timed(["dvc", "status", "report_mini"], clone, env)
    code = ("import time,sys;from dvc.utils.serialize import modify_yaml;t=time.process_time();w=time.perf_counter()\n"
            "with modify_yaml(sys.argv[1]) as d: pass\n"
            "print(time.process_time()-t, time.perf_counter()-w)")
    locks = {}
    for _, stage in PROBES:
        rel = lock_of(clone, stage)
        if rel not in locks:
            text = subprocess.run(["git", "show", f"{sha}:{rel}"], cwd=ROOT, capture_output=True, text=True).stdout
            tmp = clone / "committed.lock"
            tmp.write_text(text)
            r, _, _ = timed([sys.executable, "-c", code, str(tmp)], clone, env)
            cpu, wall = map(float, r.stdout.split())
            locks[rel] = {"lines": text.count("\n"), "cpu": cpu, "wall": wall}
    yaml_lines = sum(f.read_text().count("\n") for f in [clone / "dvc.yaml", *clone.glob("pipelines/*/dvc.yaml")])
    return {"status_wall": s_wall, "status_cpu": s_cpu, "yaml_lines": yaml_lines, "locks": locks,
            "stage_lock": {stage: lock_of(clone, stage) for _, stage in PROBES}}


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
    code = ("import json,sys;from greg_ood.run.codedeps import closure_relative as c;"
            "print(json.dumps({s: len(c('stages/'+s, '.')) for s in sys.argv[1:]}))")
    env = dict(os.environ, PYTHONPATH=str(clone / "src"))
    r, _, _ = timed([sys.executable, "-c", code, *SCRIPT_KIND], clone, env)
    return {SCRIPT_KIND[k]: v for k, v in json.loads(r.stdout).items()}


def med(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else 0.0


def probe_records(r: dict) -> list[dict]:
    return [rec for p in r["probes"] for rec in p["records"]]


def kind_table(recs: list[dict], key: str) -> list[str]:
    """Median seconds per phase and stage kind (``key``: "cpu" or "phases" = wall)."""
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


def _kind_cpu(r: dict, kind: str) -> dict:
    recs = [x for x in probe_records(r) if x["kind"] == kind]
    probes = [p for p in r["probes"] if p["kind"] == kind]
    out = {"notwork": med(x["cpu_total"] - x["cpu"].get("work", 0.0) for x in recs),
           "work": med(x["cpu"].get("work", 0.0) for x in recs),
           "imports": med(x["cpu"].get("imports", 0.0) + x["cpu"].get("start", 0.0) for x in recs),
           "mlflow": med(x["cpu"].get("mlflow_setup", 0.0) + x["cpu"].get("tracking", 0.0) for x in recs),
           "dvc": med(p["dvc_cpu"] for p in probes), "uptodate": med(p["uptodate_cpu"] for p in probes),
           "lock": med(_lock_cpu(r, p["stage"]) for p in probes)}
    out["stage"] = out["notwork"] + out["dvc"]
    return out


def _lock_cpu(r: dict, stage: str) -> float:
    """CPU of one update of the committed dvc.lock holding ``stage`` (0 when not measured)."""
    w = r.get("whole", {})
    return w.get("locks", {}).get(w.get("stage_lock", {}).get(stage), {}).get("cpu", 0.0)


def comparison(res: dict) -> list[str]:
    """Per stage kind, first revision -> last: CPU seconds of everything but the work, split."""
    revs = res["meta"]["revs"]
    a, b = res["revs"][revs[0]], res["revs"][revs[-1]]
    lines = [f"## {revs[0]} -> {revs[-1]}: CPU seconds per stage beside the work", "",
             "overhead = the stage process's CPU minus its work + DVC's own CPU for the stage (forced run minus "
             "process); imports = interpreter start + imports; MLflow = set-up + other tracking calls; DVC up to date "
             "= `dvc repro --single-item` of a stage with nothing to do; lock rewrite = one update of the committed "
             "dvc.lock that holds the stage (part of DVC's time for a changed stage); closure = files in the stage "
             "script's code deps.", "",
             "| stage kind | overhead | process beside work | imports | MLflow | DVC (changed stage) | lock rewrite | "
             "DVC up to date | closure files | work (for scale) |", "|---|" + "---:|" * 9]
    for kind in KINDS:
        ca, cb = a.get("closure", {}).get(kind, "?"), b.get("closure", {}).get(kind, "?")
        if not any(p["kind"] == kind for p in a["probes"]):
            if "imports" not in a or "imports" not in b:
                continue
            ia, ib = a["imports"][kind], b["imports"][kind]
            lines.append(f"| {kind} | | | {ia['cpu']:.2f} -> {ib['cpu']:.2f} (`--help`) | | | | | {ca} -> {cb} | |")
            continue
        x, y = _kind_cpu(a, kind), _kind_cpu(b, kind)
        cells = " | ".join(f"{x[k]:.2f} -> {y[k]:.2f}" for k in ("stage", "notwork", "imports", "mlflow", "dvc",
                                                                  "lock", "uptodate"))
        lines.append(f"| {kind} | {cells} | {ca} -> {cb} | {x['work']:.2f} -> {y['work']:.2f} |")
    return lines + [""]


def rev_section(rev: str, r: dict) -> list[str]:
    lines = [f"## {rev} ({r['sha'][:10]})", "",
             f"Measured {r['date']}; load average (1/5/15 min) at start {r['load'][0]}, at end {r['load'][1]}. "
             f"{r['note']}".rstrip(), "",
             "CPU seconds per stage process (`dvc repro --single-item --force`, one stage per kind):",
             "", *kind_table(probe_records(r), "cpu"), "",
             "Wall seconds per stage process:", "", *kind_table(probe_records(r), "phases"), "",
             "DVC per stage: forced = `dvc repro --single-item --force` (DVC = forced minus the stage process); up "
             "to date = the same without `--force` right after (DVC alone).", "",
             "| stage | forced CPU | process CPU | DVC CPU | up to date CPU | forced wall | process wall | DVC wall | "
             "up to date wall |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in r["probes"]:
        lines.append(f"| `{p['stage']}` | {p['forced_cpu']:.2f} | {p['process_cpu']:.2f} | {p['dvc_cpu']:.2f} | "
                     f"{p['uptodate_cpu']:.2f} | {p['forced_wall']:.2f} | {p['process_wall']:.2f} | "
                     f"{p['dvc_wall']:.2f} | {p['uptodate_wall']:.2f} |")
    if "whole" not in r or "imports" not in r:
        return lines + [""]
    w = r["whole"]
    locks = "; ".join(f"`{rel}` ({v['lines']} lines): CPU {v['cpu']:.2f} s, wall {v['wall']:.2f} s"
                      for rel, v in w["locks"].items())
    lines += ["", f"`dvc status report_mini`: CPU {w['status_cpu']:.2f} s, wall {w['status_wall']:.2f} s "
              f"(dvc.yaml files {w['yaml_lines']} lines). One update of a committed lock as DVC does it after each "
              f"stage (round-trip parse + dump), for each lock that holds a measured stage: {locks}.", "",
              "Imports (`python -X importtime stages/<x>.py --help`): CPU and wall of the whole process, the code "
              "closure, and the cumulative import wall time of the heaviest packages.", "",
              "| stage kind | CPU | wall | closure files | torch | mlflow | heaviest imports (s) |",
              "|---|---:|---:|---:|---|---|---|"]
    for kind in KINDS:
        i = r["imports"][kind]
        heavy = ", ".join(f"{k} {v:.2f}" for k, v in list(i["packages"].items())[:6])
        lines.append(f"| {kind} | {i['cpu']:.2f} | {i['wall']:.2f} | {r['closure'][kind]} | "
                     f"{'yes' if i['torch'] else 'no'} | {'yes' if i['mlflow'] else 'no'} | {heavy} |")
    if r.get("full"):
        f = r["full"]
        lines += ["", f"Whole suite, `dvc repro report_mini`: {f['stages']} stages, wall {f['wall']:.0f} s, CPU "
                  f"{f['cpu']:.0f} s; DVC's own time per stage: wall {f['dvc_wall_per_stage']:.2f} s, CPU "
                  f"{f['dvc_cpu_per_stage']:.2f} s. CPU per stage process:", "", *kind_table(f["records"], "cpu")]
    return lines + [""]


def summarize(res: dict) -> str:
    meta = res["meta"]
    lines = ["# Pipeline benchmark: where a stage's time goes", "",
             f"Machine: {meta['machine']}, {meta['cpus']} logical CPUs, Python {meta['python']}.", "",
             "Configuration: the tiny `mini` suite of the end-to-end test (`TINY` in `tools/scratch_repo.py`) in a "
             "scratch clone of each revision, one torch thread (`bench/pipeline.py`). Seconds; medians where a kind "
             "has several stages.",
             "Phases: start = interpreter start-up; imports = module imports up to the stage front; config = "
             "argument parsing + params validation; setup = device, determinism, model built; data = loading the "
             "prepared arrays and building the batch sources; model_load; resume_check = content hashes of the "
             "inputs and the code, checkpoint decision; work = training steps / scoring / preparing a dataset; "
             "eval_in_training = per-epoch ID accuracy; mlflow_setup = MLflow client and store opened (importing "
             "mlflow and SQLAlchemy included); tracking = other MLflow calls and the git state; checkpoint / writing "
             "= output files (figures included); other = the rest of the process; subprocesses = CPU of child "
             "processes (git).", ""]
    if len(meta["revs"]) > 1:
        lines += comparison(res)
    for rev in meta["revs"]:
        lines += rev_section(rev, res["revs"][rev])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", action="append", help="git revision to measure (repeatable; default HEAD)")
    ap.add_argument("--out", default="reports/bench")
    ap.add_argument("--artifacts", type=Path, help="a folder holding the tiny suite's " + ", ".join(ARTIFACTS) +
                    " (else a first `dvc repro " + UPSTREAM + "` makes them)")
    ap.add_argument("--full", action="store_true", help="also run the whole suite (`dvc repro report_mini`) per rev")
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
        clones = {rev: make_clone(rev, base) for rev in revs}
        artifacts = args.artifacts
        if artifacts is None:
            first = clones[revs[0]][1]
            timed(["dvc", "repro", UPSTREAM], first, clone_env(first, base / "upstream.jsonl"))
            artifacts = first
        cur = {rev: {"sha": sha, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "note": args.note,
                     "load": [" ".join(f"{x:.2f}" for x in os.getloadavg())], "probes": []}
               for rev, (sha, clone) in clones.items()}
        for rev, (sha, clone) in clones.items():
            if clone != artifacts:
                link_artifacts(artifacts, clone)

        def save() -> None:
            for rev in revs:
                cur[rev]["load"][1:] = [" ".join(f"{x:.2f}" for x in os.getloadavg())]
                res["revs"][rev] = cur[rev]
                res["meta"]["revs"] = [r for r in res["meta"]["revs"] if r != rev] + [rev]
            (out / "pipeline.json").write_text(json.dumps(res, indent=1) + "\n")
            (out / "pipeline.md").write_text(summarize(res))

        for kind, stage in PROBES:
            for rev, (sha, clone) in clones.items():
                p = probe_stage(clone, base / f"{sha[:10]}.jsonl", kind, stage)
                cur[rev]["probes"].append(p)
                print(f"{rev:>12} {stage:<36} CPU {p['forced_cpu']:6.1f} s (process {p['process_cpu']:5.1f}, DVC "
                      f"{p['dvc_cpu']:4.1f}; up to date {p['uptodate_cpu']:4.1f}), wall {p['forced_wall']:6.1f} s",
                      flush=True)
            save()
        for rev, (sha, clone) in clones.items():
            cur[rev].update(closure=closure_sizes(clone), whole=dvc_whole(clone, sha), imports=import_profile(clone))
            save()
        if args.full:
            for rev, (sha, clone) in clones.items():
                cur[rev]["full"] = full_run(fresh(clone), base / f"{sha[:10]}-full.jsonl")
                save()
    finally:
        if args.keep:
            print(f"scratch clones kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(f"wrote {out / 'pipeline.md'}")


if __name__ == "__main__":
    sys.exit(main())
