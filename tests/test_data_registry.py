"""The dataset registry: every dataset has a converter, and the data package imports without a circle."""
from __future__ import annotations

from pathlib import Path

from greg_ood.run import codedeps
from greg_ood.data import DATASETS
from greg_ood.data.registry import BUILDERS

DATA_DIR = codedeps.PACKAGE_DIR / "data"


def test_every_dataset_has_a_converter_and_every_converter_a_dataset():
    wanted = {spec.builder for spec in DATASETS.values()}
    assert wanted - set(BUILDERS) == set(), "datasets whose builder is missing from registry.BUILDERS"
    assert set(BUILDERS) - wanted == set(), "converters no dataset uses"
    assert all(callable(fn) for fn in BUILDERS.values())


def _data_import_graph() -> dict[str, set[str]]:
    """module -> the modules of greg_ood.data it imports (statically, lazy imports included)."""
    graph = {}
    for f in sorted(DATA_DIR.glob("*.py")):
        name = codedeps._module_name(f, codedeps.SRC_DIR)
        deps = {m for m in codedeps._imported_modules(f, codedeps.SRC_DIR)
                if m.startswith("greg_ood.data.") and codedeps._module_file(m, codedeps.SRC_DIR) is not None}
        graph[name] = deps - {name}
    return graph


def _find_cycle(graph: dict[str, set[str]]):
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n, [])
            if found:
                return found
    return None


def test_data_modules_import_without_a_circle():
    graph = _data_import_graph()
    assert "greg_ood.data.registry" in graph["greg_ood.data.prepare"]
    for conv in ("mini", "paper", "imagenet"):
        assert graph[f"greg_ood.data.{conv}"].isdisjoint({"greg_ood.data.prepare", "greg_ood.data.registry"})
    assert _find_cycle(graph) is None, f"import circle: {' -> '.join(_find_cycle(graph))}"


def test_cycle_finder_sees_a_circle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_is_read_from_the_package_files():
    assert Path(DATA_DIR / "registry.py").is_file()
    assert "greg_ood.data.build" in _data_import_graph()["greg_ood.data.mini"]
