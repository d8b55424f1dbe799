"""The package's layers and who may import whom (docs/architecture.md, "Layers"), held by the imports themselves.

Read statically (the same import reading as the stages' code deps, :mod:`greg_ood.run.codedeps`): every import of a
``greg_ood`` module anywhere in a file counts, lazy imports inside functions included.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import networkx as nx
import pytest

from greg_ood.run.codedeps import closure_relative

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "greg_ood"

#: the method: the maths of GReg/GReg+ and the baselines, and the declarations they read
METHOD = {"scores", "losses", "sampling", "methods", "poem", "gradnorm", "certify", "metrics", "registry", "settings",
          "archs"}
#: leaf utilities every layer may use: they import nothing of greg_ood
LEAVES = {"greg_ood._torchvision_compat", "greg_ood.run.io", "greg_ood.run.errors"}
#: layer -> the layers it may import (besides itself and the leaves); cli and the stage scripts may import anything
ALLOWED = {
    "method": set(),
    "models": {"method"},
    "data": set(),
    "run": {"method", "models", "data"},
    "report": {"method", "models", "data", "run"},
}
THIRD_PARTY_FORBIDDEN_IN_METHOD = ("dvc", "mlflow", "yaml", "filelock")


def _name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PKG.rglob("*.py")}


def layer(mod: str) -> str:
    if mod in LEAVES:
        return "leaf"
    parts = mod.split(".")
    if len(parts) == 2 and parts[1] in METHOD:
        return "method"
    if len(parts) >= 2 and parts[1] in ("models", "data", "run", "report", "cli"):
        return "data" if parts[1] == "data" and parts[-1] != "__main__" else ("cli" if parts[-1] == "__main__"
                                                                            else parts[1])
    return "package" if mod == "greg_ood" else "other"


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(greg_ood modules, top-level third-party names) that ``path`` imports."""
    mod = _name(path)
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            if not base.startswith("greg_ood"):
                theirs.add(base.split(".")[0])
                continue
            for a in node.names:
                ours.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            for a in node.names:
                (ours if a.name.startswith("greg_ood") else theirs).add(a.name if a.name.startswith("greg_ood")
                                                                        else a.name.split(".")[0])
    return ours, theirs


GRAPH = nx.DiGraph()
for _m, _p in MODULES.items():
    GRAPH.add_node(_m)
    for _i in imports(_p)[0]:
        GRAPH.add_edge(_m, _i)


def test_every_module_has_a_layer():
    assert {m for m in MODULES if layer(m) == "other"} == set()


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_follow_the_layers(mod):
    me = layer(mod)
    if me in ("cli", "package"):
        return
    allowed = {me, "leaf", "package"} | ALLOWED.get(me, set())
    if me == "leaf":
        allowed = set()
    bad = sorted(i for i in GRAPH.successors(mod) if layer(i) not in allowed)
    assert not bad, f"{mod} ({me}) imports {bad}: the layer rule of docs/architecture.md forbids it"


def test_no_import_cycle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(GRAPH) if len(c) > 1]
    assert cycles == []


def test_the_method_imports_no_pipeline_tool():
    """The method modules read top to bottom with torch, numpy and pydantic only: no DVC, MLflow, params files."""
    for mod, path in MODULES.items():
        if layer(mod) == "method":
            theirs = imports(path)[1]
            assert not theirs & set(THIRD_PARTY_FORBIDDEN_IN_METHOD), f"{mod} imports {theirs}"
            reach = nx.descendants(GRAPH, mod)
            assert all(layer(r) in ("method", "package") for r in reach), f"{mod} reaches {sorted(reach)}"


def test_download_stage_runs_no_method_code():
    """The download stage's code deps (what DVC re-runs it for) hold no model, score, loss or POEM code."""
    deps = closure_relative(ROOT / "stages" / "download.py", ROOT)
    assert not [d for d in deps if d.startswith("src/greg_ood/models") or Path(d).stem in
                {"poem", "scores", "losses", "methods", "sampling", "gradnorm", "trainer"}]


def test_the_rule_can_fail():
    """A method module that imported the run machinery would be reported (the check is not vacuous)."""
    GRAPH.add_edge("greg_ood.losses", "greg_ood.run.tracking")
    try:
        with pytest.raises(AssertionError, match="forbids"):
            test_imports_follow_the_layers("greg_ood.losses")
    finally:
        GRAPH.remove_edge("greg_ood.losses", "greg_ood.run.tracking")
