"""Re-record the lock entries of stages whose results a code-only change has been shown not to alter.

After a change to the code every stage runs (a module moved, an error message reworded), DVC marks every stage of
a suite as changed. When a sample of those stages, re-run from nothing, gives outputs with the md5 the lock already
records, the rest need not be re-run: their lock entries only need the new hashes of the code files. ``dvc commit``
would record them, but it needs every output in the workspace; on a fresh clone the models are only in the lock.
This tool records what ``dvc commit`` would, for stages whose outputs are absent, and refuses any stage where more
than code changed:

* a dependency outside ``src/`` and ``stages/`` (data, an upstream model) must be unchanged or absent;
* every params value the stage lists now must equal the value the lock recorded (a key may be listed differently,
  e.g. ``suites.mini.train.loss.lambda_grad`` instead of the whole ``suites.mini.train``, as long as the values
  agree);
* an output must be absent from the workspace or have the recorded md5; ``--converted PATTERN`` (fnmatch) admits
  outputs re-written by a declared format conversion (e.g. ``'metrics/*/train/*.train.csv'``);
* ``--accept-param PATTERN`` (fnmatch on the key) admits a params value that changed in a way declared not to change
  any result (e.g. a per-method value removed because the shared one it repeated now applies); each admitted change
  is printed.

    python tools/relock.py report_fmnist --dry      # what would be re-recorded, and what is refused
    python tools/relock.py report_fmnist --converted 'metrics/fmnist/train/*.csv'
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import Any, Optional

CODE_PREFIXES = ("src/", "stages/")


def _lookup(tree: dict, dotted: str) -> tuple[bool, Any]:
    """The value at ``dotted`` inside the lock's recorded params (keys recorded whole or as dotted prefixes)."""
    for key, value in tree.items():
        if dotted == key:
            return True, value
        if dotted.startswith(key + "."):
            cur = value
            for part in dotted[len(key) + 1:].split("."):
                if not isinstance(cur, dict) or part not in cur:
                    return False, None
                cur = cur[part]
            return True, cur
    return False, None


def check_stage(stage, lock: Optional[dict], converted: list[str], accepted: tuple[str, ...] = (),
                notes: Optional[list[str]] = None) -> list[str]:
    """Why ``stage`` may not be re-recorded (empty: it may). ``lock`` is its entry in its dvc.lock; admitted params
    changes (``accepted`` patterns) are appended to ``notes``."""
    if lock is None:
        return ["no lock entry (the stage never ran)"]
    problems = []
    locked = {d["path"]: d for d in lock.get("deps", [])}
    from dvc.dependency.param import ParamsDependency

    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            recorded = lock.get("params", {}).get(dep.def_path, {})
            for key, value in dep.read_params().items():
                found, old = _lookup(recorded, key)
                if (not found or old != value) and any(fnmatch.fnmatch(key, a) for a in accepted):
                    if notes is not None:
                        notes.append(f"param {key}: {old!r} -> {value!r} (admitted)")
                    continue
                if not found or old != value:
                    problems.append(f"param {key} = {value!r} (recorded: {old!r})" if found
                                    else f"param {key} has no recorded value")
            continue
        path = dep.def_path
        if path.startswith(CODE_PREFIXES) or not dep.exists:
            continue
        old = locked.get(path)
        if old is None:
            problems.append(f"dependency {path} is new")
        elif dep.get_hash().value != old.get("md5"):
            problems.append(f"dependency {path} changed (not code)")
    outs = {o["path"]: o for o in lock.get("outs", [])}
    for out in stage.outs:
        path = out.def_path
        if not out.exists:
            continue
        old = outs.get(path, {})
        if out.get_hash().value != old.get("md5") and not any(fnmatch.fnmatch(path, p) for p in converted):
            problems.append(f"output {path} differs from the lock and is not a declared conversion")
    return problems


def _lock_entry(repo_root: Path, stage) -> Optional[dict]:
    from dvc.utils.serialize import parse_yaml   # DVC's YAML 1.2 reading (1e-06 is a float, as DVC recorded it)

    lockfile = Path(stage.dvcfile.path).with_suffix(".lock")
    if not lockfile.exists():
        return None
    data = parse_yaml(lockfile.read_text(), str(lockfile)) or {}
    return data.get("stages", {}).get(stage.name)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="a stage name; it and every stage upstream of it are considered")
    ap.add_argument("--converted", action="append", default=[], help="fnmatch pattern of converted outputs")
    ap.add_argument("--accept-param", action="append", default=[], help="fnmatch pattern of params keys whose "
                    "changed value is declared not to change results")
    ap.add_argument("--dry", action="store_true", help="print the verdicts, write nothing")
    args = ap.parse_args(argv)

    import networkx as nx
    from dvc.repo import Repo

    repo = Repo(".")
    graph = repo.index.graph
    (target,) = [s for s in graph.nodes if s.addressing == args.target or s.name == args.target]
    stages = [target, *nx.descendants(graph, target)]   # DVC's edges point from a stage to its dependencies
    refused = 0
    for stage in sorted(stages, key=lambda s: s.addressing):
        if stage.is_data_source or not stage.cmd:
            continue
        if not stage.changed_entries() and not any(not o.exists for o in stage.outs):
            continue
        notes: list[str] = []
        problems = check_stage(stage, _lock_entry(Path(repo.root_dir), stage), args.converted,
                               tuple(args.accept_param), notes)
        if problems:
            refused += 1
            print(f"refused  {stage.addressing}: " + "; ".join(problems))
            continue
        print(f"{'would re-record' if args.dry else 're-recorded'}  {stage.addressing}"
              + "".join(f"\n    {n}" for n in notes))
        if not args.dry:
            with repo.lock:
                # what `dvc commit --force` records, without the run cache (it needs every dependency present)
                stage.save(allow_missing=True, run_cache=False)
                stage.commit(allow_missing=True)
                stage.dvcfile.dump_stages([stage], update_pipeline=False)
    print(f"{refused} stage(s) refused" if refused else "no stage refused")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
