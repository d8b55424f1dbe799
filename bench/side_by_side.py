"""Two training stages side by side: does the torch thread count matter when the runner runs two at a time?

For each method given, in a scratch clone of HEAD that hard-links the `mini` suite's upstream outputs (prepared data,
pretrained model, selection) from ``--repo``, this runs the `mini` fine-tuning stage process (``stages/train.py``,
no DVC) for seed 0 alone and for seeds 0 and 1 side by side, with ``project.num_threads`` 2 and 1 in turn (the
order alternates between methods), with ``OMP_WAIT_POLICY=PASSIVE`` as ``greg_ood.cli.repro`` sets it. It records
each process's wall and CPU time and the md5 of each model file written, and writes ``<out>.md`` and ``<out>.json``
with the machine named::

    python -m bench.side_by_side --repo . --method greg --method greg_plus --out reports/bench/side-by-side
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .pipeline import ROOT, cpu_name, link_artifacts

SUITE, ARCH = "mini", "small_cnn"


def scratch_clone(repo: Path, base: Path) -> Path:
    dest = base / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    link_artifacts(repo, dest)  # exits naming the folder when --repo lacks one
    return dest


def set_threads(clone: Path, n: int) -> None:
    path = clone / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["project"]["num_threads"] = n
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def model_md5(clone: Path, method: str, seed: int) -> str:
    path = clone / "models" / SUITE / f"{SUITE}-{method}-{ARCH}-s{seed}.pt"
    return hashlib.md5(path.read_bytes()).hexdigest()


def run_together(clone: Path, method: str, seeds: list[int]) -> dict:
    """Start one stage process per seed at once; wall of the whole group and of each process, CPU of each."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(clone / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    procs = []
    for s in seeds:
        cmd = [sys.executable, "stages/train.py", "--suite", SUITE, "--method", method, "--arch", ARCH,
               "--seed", str(s)]
        log = clone / f"train-{method}-s{s}.log"
        with log.open("w") as fh:
            procs.append((s, time.perf_counter(), log,
                          subprocess.Popen(cmd, cwd=clone, env=env, stdout=fh, stderr=subprocess.STDOUT)))
    out = {"seeds": seeds, "processes": []}
    for s, start, log, p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"train {method} seed {s} failed:\n{log.read_text()[-3000:]}")
        out["processes"].append({"seed": s, "wall": time.perf_counter() - start,
                                 "cpu": usage.ru_utime + usage.ru_stime, "md5": model_md5(clone, method, s)})
    out["wall"] = time.perf_counter() - t0
    return out


def render(res: dict) -> str:
    lines = ["# Two training stages side by side, 2 or 1 torch threads each", "",
             f"Machine: {res['cpu']}, {res['cores']} logical CPUs; torch's default thread count here: "
             f"{res['default_threads']}. Measured {res['started']} (HEAD {res['head']}), stage processes only "
             f"(`stages/train.py`, no DVC), `OMP_WAIT_POLICY=PASSIVE`. Seconds.", "",
             "| method | threads | seed 0 alone: wall | CPU | seeds 0 + 1 side by side: wall | CPU (sum) | "
             "throughput vs one at a time | model md5 (seed 0) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["runs"]:
        alone, pair = r["alone"], r["pair"]
        a = alone["processes"][0]
        cpu = sum(p["cpu"] for p in pair["processes"])
        lines.append(f"| {r['method']} | {r['threads']} | {a['wall']:.1f} | {a['cpu']:.1f} | {pair['wall']:.1f} | "
                     f"{cpu:.1f} | {2 * a['wall'] / pair['wall']:.2f}× | `{a['md5'][:12]}` |")
    lines += ["", "Throughput = two stages one after the other (2 × alone) over the same two side by side. The model "
              "md5 is the same across runs with the same thread count and differs between thread counts."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="a checkout holding the mini suite's upstream outputs")
    ap.add_argument("--method", action="append", help="mini methods to run (default: greg, greg_plus)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "side-by-side")
    a = ap.parse_args(argv)
    import torch

    res = {"cpu": cpu_name(), "cores": os.cpu_count(), "default_threads": torch.get_num_threads(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "head": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        clone = scratch_clone(a.repo.resolve(), Path(tmp))
        for i, method in enumerate(a.method or ["greg", "greg_plus"]):
            for threads in ([2, 1] if i % 2 == 0 else [1, 2]):
                set_threads(clone, threads)
                alone = run_together(clone, method, [0])
                pair = run_together(clone, method, [0, 1])
                if pair["processes"][0]["md5"] != alone["processes"][0]["md5"]:
                    raise RuntimeError(f"{method}, {threads} threads: seed 0 alone and side by side differ")
                res["runs"].append({"method": method, "threads": threads, "alone": alone, "pair": pair})
                print(f"{method} threads={threads}: alone {alone['wall']:.1f} s, pair {pair['wall']:.1f} s",
                      flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
