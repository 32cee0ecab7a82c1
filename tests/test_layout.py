"""The package's layers: every module imports, imports go only downward between layers, and there are no cycles.

Each module of vdm/ belongs to a layer by its path (`LAYERS`); `ALLOWED` says which
other layers a layer may import from. Every import statement counts, including
the ones inside functions (a lazy upward import is still an upward edge).
"""

import ast
import importlib
import os

import pytest

from conftest import ROOT

# module prefix -> layer, most specific first
LAYERS = (
    ("vdm.errors", "foundation"),
    ("vdm.registry", "foundation"),
    ("vdm.console", "foundation"),
    ("vdm.core", "core"),
    ("vdm.nets.cpu", "nets.cpu"),
    ("vdm.nets", "nets"),
    ("vdm.data", "data"),
    ("vdm.sampling", "sampling"),
    ("vdm.metrics", "metrics"),
    ("vdm.config", "config"),
    ("vdm.model", "model"),
    ("vdm.training", "training"),
    ("vdm.main", "cli"),
    ("vdm", "api"),
)
ALLOWED = {
    "foundation": set(),
    "core": {"foundation"},
    "nets.cpu": {"foundation"},
    "nets": {"foundation", "core", "nets.cpu"},
    "data": {"foundation"},
    "sampling": {"foundation", "core"},
    "metrics": {"foundation", "data"},
    "config": {"foundation", "core", "nets", "nets.cpu", "data", "sampling"},
    "model": {"foundation", "core", "nets", "nets.cpu", "sampling", "config"},
    "training": {"foundation", "core", "nets", "nets.cpu", "data", "sampling", "metrics", "config", "model"},
    "cli": {"foundation", "config", "training"},
    "api": {"core", "data", "sampling", "model", "training"},
}


def _modules() -> dict:
    """{module name: path} of every .py file under vdm/."""
    out = {}
    for directory, _, files in os.walk(os.path.join(ROOT, "vdm")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _layer(module: str) -> str:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} belongs to no layer of tests/test_layout.py")


def import_graph(modules: dict) -> dict:
    """{module: set of vdm modules it imports} from the import statements anywhere in each file."""
    graph = {}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "vdm")
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] != "vdm":
                    continue
                for alias in node.names:  # `from vdm.x import y`: the module vdm.x.y if there is one, else vdm.x
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        unknown = {t for t in targets if t not in modules}
        assert not unknown, f"{module} imports {sorted(unknown)}, which are not modules of vdm/"
        graph[module] = targets - {module}
    return graph


def upward_edges(graph: dict) -> list:
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if _layer(a) != _layer(b) and _layer(b) not in ALLOWED[_layer(a)])


def cycles(graph: dict) -> list:
    """One cycle [m0, m1, ..., m0] per strongly connected group found by depth-first search."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_imports_go_only_downward_between_layers_and_never_in_a_cycle():
    graph = import_graph(MODULES)
    assert {_layer(m) for m in MODULES} == set(ALLOWED)  # every layer has modules; every module has a layer
    assert sum(len(t) for t in graph.values()) > 50  # the graph is really read
    assert "vdm.core.diffusion" in graph["vdm.core.losses"] and "vdm.sampling" in graph["vdm.training.generation"]
    assert "vdm.model" in graph["vdm.training.steps"] and "vdm.config.migrations" in graph["vdm.model.vdm_model"]
    assert upward_edges(graph) == []
    assert cycles(graph) == []


def test_the_check_sees_an_upward_import_and_a_cycle():
    graph = {m: set(t) for m, t in import_graph(MODULES).items()}
    graph["vdm.core.losses"].add("vdm.model.vdm_model")  # the math importing the model glue
    graph["vdm.model.vdm_model"].add("vdm.training.checkpoint")  # the model glue importing what a run does
    assert upward_edges(graph) == [("vdm.core.losses", "vdm.model.vdm_model"),
                                   ("vdm.model.vdm_model", "vdm.training.checkpoint")]
    graph["vdm.core.diffusion"].add("vdm.core.losses")  # losses -> diffusion -> losses
    assert any(set(c) == {"vdm.core.diffusion", "vdm.core.losses"} for c in cycles(graph)), cycles(graph)
