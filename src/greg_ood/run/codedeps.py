"""The code a stage runs: the import closure of a stage script inside ``src/greg_ood``, and its content hash.

One definition serves two purposes, so they cannot drift apart:

* ``dvcgen`` writes each stage's code deps in ``dvc.yaml`` from :func:`closure` (DVC re-runs a stage when one of
  these files changes, and only then);
* the trainer stores :func:`fingerprint` of the same set in each checkpoint and resumes only a checkpoint written by
  the same code (a code change starts the run over).

The closure is found statically (``ast``), never by importing: every ``import greg_ood...`` /
``from greg_ood... import`` / relative import anywhere in a file counts, including imports inside functions (lazy
imports run too, when the function does). Importing a submodule runs its packages' ``__init__.py`` files, so those
count as well. Only files inside the package are followed; third-party code is pinned by ``requirements.txt``.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

PACKAGE = "greg_ood"
PACKAGE_DIR = Path(__file__).resolve().parent.parent   # .../src/greg_ood
SRC_DIR = PACKAGE_DIR.parent                           # .../src


def _module_file(dotted: str, src: Path) -> Optional[Path]:
    """File of a dotted module name under ``src`` (``a.b`` -> a/b.py or a/b/__init__.py), or None."""
    base = src.joinpath(*dotted.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _module_name(path: Path, src: Path) -> str:
    rel = path.resolve().relative_to(src.resolve()).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported_modules(path: Path, src: Path) -> set[str]:
    """Dotted names of the package modules a file imports (absolute or relative; ``from X import Y`` yields X and,
    when Y is a submodule, X.Y)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    here = _module_name(path, src) if path.resolve().is_relative_to(src.resolve()) else ""
    pkg_parts = here.split(".") if is_pkg else here.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = pkg_parts[: len(pkg_parts) - (node.level - 1)] if node.level > 1 else pkg_parts
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base:
                found.add(base)
                for a in node.names:
                    found.add(f"{base}.{a.name}")
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _with_parents(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@lru_cache(maxsize=None)
def _closure_cached(script: str, src: str) -> tuple[str, ...]:
    srcp = Path(src)
    seen: set[Path] = set()
    todo = [Path(script)]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for mod in _imported_modules(f, srcp):
            for name in _with_parents(mod):
                p = _module_file(name, srcp)
                if p is not None and p not in seen:
                    todo.append(p)
    return tuple(sorted(str(p) for p in seen))


def closure(script: str | Path, *, src: str | Path = SRC_DIR) -> list[Path]:
    """Every file the script runs: the script itself plus the transitive package imports, as absolute paths, sorted."""
    return [Path(p) for p in _closure_cached(str(Path(script).resolve()), str(Path(src).resolve()))]


def closure_relative(script: str | Path, root: str | Path, *, src: str | Path = SRC_DIR) -> list[str]:
    """:func:`closure` as POSIX paths relative to the repository root ``root`` (the form ``dvc.yaml`` lists)."""
    rootp = Path(root).resolve()
    return [p.relative_to(rootp).as_posix() for p in closure(script, src=src)]


def hash_files(paths: Iterable[str | Path], root: str | Path) -> str:
    """sha256 over (relative path, content sha256) of each file, in sorted path order."""
    rootp = Path(root).resolve()
    h = hashlib.sha256()
    for p in sorted(Path(x).resolve() for x in paths):
        rel = p.relative_to(rootp).as_posix() if p.is_relative_to(rootp) else p.name
        h.update(rel.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def fingerprint(script: str | Path, *, src: str | Path = SRC_DIR) -> str:
    """Content hash of the code a stage script runs (the script and its import closure)."""
    return hash_files(closure(script, src=src), Path(src).resolve().parent)
