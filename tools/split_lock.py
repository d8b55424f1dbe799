"""Move dvc.lock entries to the dvc.lock of the dvc.yaml that now declares their stage (one-off migration).

When a stage group moves from the root dvc.yaml to a file of its own (``pipelines/<group>/dvc.yaml``, see
:func:`greg_ood.runinfo.dvc_file`), DVC looks for its stages' lock entries in ``pipelines/<group>/dvc.lock``; without
them every stage of the group would count as never run. This script moves each entry of the root dvc.lock whose group
is declared elsewhere into that file's lock, its paths (deps, outs, the params file) rewritten relative to the new
stage's working directory (``wdir``; the generated group files run in the repository root, so the paths stay as they
were). Entries already in a group's lock are kept; an entry in both places is refused. Written with DVC's own YAML
writer, so DVC's next rewrite of a lock changes nothing but what it updates.

    python tools/split_lock.py            # in the repository root, after `make dvc.yaml`
    dvc status                            # the moved stages are as up to date as before
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from greg_ood.dvcgen import dvc_files  # noqa: E402


def declared_groups(root: Path) -> dict[str, Path]:
    """Stage group -> the dvc.yaml (absolute) that declares it, for every file but the root one."""
    out = {}
    for f in dvc_files(root)[1:]:
        for group in (yaml.safe_load(f.read_text()) or {}).get("stages", {}):
            out[group] = f
    return out


def stage_wdir(dvc_yaml: Path, group: str) -> Path:
    """The working directory of ``group``'s stages (``wdir``, relative to its dvc.yaml; default: that folder)."""
    st = yaml.safe_load(dvc_yaml.read_text())["stages"][group]
    return (dvc_yaml.parent / st.get("do", st).get("wdir", ".")).resolve()


def rebase(entry: dict, old_wdir: Path, new_wdir: Path) -> dict:
    """``entry`` (a lock entry) with its deps/outs paths and params file names re-expressed from ``old_wdir`` to
    ``new_wdir``."""
    def rel(p: str) -> str:
        return Path(os.path.relpath(old_wdir / p, new_wdir)).as_posix()

    out = dict(entry)
    for key in ("deps", "outs"):
        if key in out:
            out[key] = [{**d, "path": rel(d["path"])} for d in out[key]]
    if "params" in out:
        out["params"] = {rel(f): v for f, v in out["params"].items()}
    return out


def split(root: Path) -> dict[str, int]:
    """Move the entries; returns how many went to each lock (relative path). The group locks are written first and
    the root lock last (an error leaves the root lock as it was)."""
    from dvc.utils.serialize import modify_yaml

    groups = declared_groups(root)
    counts = {}
    with modify_yaml(root / "dvc.lock") as lock:
        stages = lock.get("stages", {})
        moves: dict[Path, dict[str, dict]] = {}
        for name in list(stages):
            group = name.split("@")[0]
            if group in groups:
                target = groups[group]
                moves.setdefault(target, {})[name] = rebase(stages.pop(name), root, stage_wdir(target, group))
        for target, entries in moves.items():
            sub_lock = target.parent / "dvc.lock"
            with modify_yaml(sub_lock) as sub:
                sub.setdefault("schema", "2.0")
                have = sub.setdefault("stages", {})
                both = sorted(set(have) & set(entries))
                if both:
                    raise SystemExit(f"{sub_lock} already holds {both[:3]}: resolve by hand")
                have.update(entries)
            counts[sub_lock.relative_to(root).as_posix()] = len(entries)
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout (default: the current folder)")
    args = ap.parse_args(argv)
    if not (args.root / "dvc.lock").is_file():
        raise SystemExit(f"{args.root / 'dvc.lock'}: no root lock to split")
    counts = split(args.root.resolve())
    for lock, n in sorted(counts.items()):
        print(f"{n:4d} entries -> {lock}")
    print(f"{sum(counts.values())} entries moved" if counts else "nothing to move")


if __name__ == "__main__":
    main()
