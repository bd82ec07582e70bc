"""The package's layer order: every import of a chameleon_lite module points to its own floor or a lower one.

Imports written inside functions count the same as those at the top of a file (an import moved into a function
still ties the two modules together), so neither a cycle nor an upward import can hide there.
"""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chameleon_lite")

# Bottom to top. A unit is a top-level module or a subpackage of chameleon_lite; units on one floor do not import
# each other. The command-line modules at the top import whatever their commands run.
FLOORS = [
    ("errors",),
    ("argtypes", "hardware", "configs"),  # configs: the one dataclass-config loader
    ("files",),
    ("ops",),  # the kernels: torch custom ops over the compiled extension
    ("vocab", "bundle", "pipeline"),  # the unified vocabulary, the exported model folder, resumable stages
    ("data",),  # manifests, media readers, procedural corpus + checkers, shards, the packing loader
    ("tokenizers",),
    ("model",),
    ("train", "pretokenize", "convert"),  # convert: checkpoints of other formats in and out
    ("generate",),
    ("eval", "explain", "serve"),  # explain: attention maps; serve: the web page and HTTP API
    ("quickstart",),
    ("demo",),
    ("cli", "data_commands", "vocab_commands", "kernel_commands"),
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def _modules() -> dict[str, str]:
    """module name -> file, for every .py file of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, f)
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: str) -> list[tuple[int, str]]:
    """(line, module of this package) of every import in the file, wherever it is written."""
    out = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]  # `from pkg import module` imports pkg.module
        else:
            continue
        for name in names:
            if name.startswith("chameleon_lite."):
                target = _resolve(name)
                if target and target != "chameleon_lite":
                    out.append((node.lineno, target))
    return out


def _unit(module: str) -> str:
    return module.split(".")[1]


def test_every_unit_has_a_floor():
    units = {_unit(m) for m in MODULES if m != "chameleon_lite"} - {"_C", "_C_cuda"}
    assert units <= set(FLOOR), f"modules without a floor in FLOORS: {sorted(units - set(FLOOR))}"


def test_imports_point_down():
    wrong = []
    for module, path in MODULES.items():
        if module == "chameleon_lite":
            continue
        here = _unit(module)
        for line, target in _imports(path):
            there = _unit(target)
            if there != here and FLOOR[there] >= FLOOR[here]:
                wrong.append(
                    f"{os.path.relpath(path, os.path.dirname(PACKAGE))}:{line}: {module} ({here}, floor "
                    f"{FLOOR[here]}) imports {target} ({there}, floor {FLOOR[there]})"
                )
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = {m: {t for _, t in _imports(p) if t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle.extend(path[path.index(t) :] + [m, t] if t in path else [m, t])
                return True
            if t not in state and visit(t, path + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and visit(m, []):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "module", ["chameleon_lite.data.media", "chameleon_lite.data.manifest", "chameleon_lite.bundle"]
)
def test_the_floor_check_sees_imports_inside_functions(module, tmp_path):
    """The test above must not be blind to a function-level import: plant one and check it is found."""
    src = (
        open(MODULES[module], encoding="utf-8").read()
        + "\n\ndef _planted():\n    from chameleon_lite.eval import harness\n"
    )
    planted = tmp_path / "planted.py"
    planted.write_text(src)
    assert "chameleon_lite.eval.harness" in {t for _, t in _imports(str(planted))}
