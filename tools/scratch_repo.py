"""A scratch git + DVC copy of this repository with the tiny ``mini`` configuration, for the end-to-end test, the
pipeline benchmark and the kill soaks (nothing here is a test; tests import it).

    from tools.scratch_repo import TINY, build, scratch_env
    env = build(tmp / "repo")            # stages, src, inputs, dvc files, params.yaml shrunk by TINY; committed
    subprocess.run(["dvc", "repro", "report_mini"], cwd=tmp / "repo", env=env)

Run from the repository root (``python -m ...`` or pytest, whose ``pythonpath`` names the root) so that ``tools`` is
importable; the module needs only the standard library, PyYAML and ``greg_ood.run.dvcgen``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: the virtual environment's bin folder (dvc, python) that the scratch copy's commands run from
BIN = Path(sys.executable).parent

# small enough for CI on 2 cores, large enough that ID accuracy and digits separation are meaningful
TINY = {
    "datasets.skimage_crops.count": 4000,
    "datasets.textures.count": 400,
    "datasets.gaussian_noise.count": 400,
    "datasets.uniform_noise.count": 400,
    "suites.mini.seeds": [0],
    "suites.mini.pretrain.epochs": 1,
    "suites.mini.pretrain.steps_per_epoch": 120,
    "suites.mini.train.epochs": 1,
    "suites.mini.train.steps_per_epoch": 24,
    "suites.mini.train.checkpoint_every": 10,
    "suites.mini.train.gradnorm_every": 8,
    "suites.mini.select.n_clusters": 50,
    "suites.mini.eval.mahalanobis_fit_count": 1500,
    "suites.mini.ablation.lambda_grad": [0.0],
    "suites.mini.ablation.seeds": [0],
    "suites.mini.certify.count": 100,
}

#: what a scratch copy holds besides the stage groups' dvc.yaml files: the stage scripts, the code, the report's input
COPIED_DIRS = ("stages", "src", "reports/paper")
COPIED_FILES = ("dvc.yaml", ".dvcignore", ".gitignore")


def set_dotted(raw: dict, dotted: str, value) -> None:
    """Set ``raw[a][b][c] = value`` for ``dotted == "a.b.c"`` (every key but the last must exist)."""
    *parents, last = dotted.split(".")
    cur = raw
    for k in parents:
        cur = cur[k]
    cur[last] = value


def write_params(src: Path, dest: Path, overrides: dict) -> None:
    """``dest`` = the params file ``src`` with each dotted key of ``overrides`` set to its value."""
    raw = yaml.safe_load(src.read_text())
    for k, v in overrides.items():
        set_dotted(raw, k, v)
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))


def scratch_env(repo: Path) -> dict:
    """The environment of a command in the scratch copy ``repo``: its own code first on the path, this venv's tools,
    a local MLflow store (no inherited tracking URI), no DVC analytics, and a git identity for its commits."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(repo / "src"),
                "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1", "GIT_AUTHOR_NAME": "scratch",
                "GIT_AUTHOR_EMAIL": "scratch@localhost", "GIT_COMMITTER_NAME": "scratch",
                "GIT_COMMITTER_EMAIL": "scratch@localhost"})
    return env


def git_commit_all(repo: Path, env: dict, message: str) -> None:
    """``git init`` (if needed), add everything, commit; raises with git's output when a step fails."""
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", message]):
        r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed in {repo}: {r.stdout}{r.stderr}")


def copy_inputs(dest: Path, root: Path = ROOT) -> None:
    """Copy what ``dvc repro`` of a suite needs from ``root`` into ``dest``: stage scripts, code, inputs, every
    dvc.yaml (the root one and each stage group's) and the DVC configuration; no outputs, no lock files."""
    from greg_ood.run.dvcgen import dvc_files

    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in COPIED_DIRS:
        shutil.copytree(root / name, dest / name, ignore=ignore)
    for name in COPIED_FILES:
        shutil.copy(root / name, dest / name)
    for f in dvc_files(root)[1:]:  # the stage groups with a dvc.yaml of their own
        (dest / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest / f.relative_to(root))
    (dest / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(root / ".dvc" / name, dest / ".dvc" / name)
    shutil.copytree(root / ".dvc" / "plots", dest / ".dvc" / "plots")


def build(dest: Path, overrides: dict | None = None, root: Path = ROOT) -> dict:
    """A committed scratch copy of ``root`` at ``dest`` (created if missing) whose params.yaml is ``root``'s with
    ``overrides`` (default :data:`TINY`) applied; returns :func:`scratch_env` of it. Nothing has run in it yet."""
    dest.mkdir(parents=True, exist_ok=True)
    copy_inputs(dest, root)
    write_params(root / "params.yaml", dest / "params.yaml", TINY if overrides is None else overrides)
    env = scratch_env(dest)
    git_commit_all(dest, env, "tiny mini pipeline")
    return env
