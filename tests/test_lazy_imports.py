"""Imports written inside functions, each for a reason.

An import belongs at the top of its file. Two kinds may sit inside a function:

- in a command module (``cli.py``, ``*commands.py``): ``chameleon-lite --help`` imports every one of them to build
  the parser, so what their commands run (torch, the extension, the library) is imported when a command runs;
- anywhere else, an import whose line says why, with a comment that starts ``# lazy:`` (e.g. a module that
  ``--help`` reads, or a heavy optional package only one function needs).
"""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chameleon_lite")


def _is_command_module(path: str) -> bool:
    name = os.path.basename(path)
    return name == "cli.py" or name.endswith("commands.py")


def _unexplained(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines()
    out = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                here = lines[node.lineno - 1]
                before = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                if "# lazy:" not in here and not before.startswith("# lazy:"):
                    out.append(f"{os.path.relpath(path, os.path.dirname(PACKAGE))}:{node.lineno}: {here.strip()}")
    return out


def test_imports_inside_functions_say_why():
    bad = []
    for root, _, files in os.walk(PACKAGE):
        for f in sorted(files):
            path = os.path.join(root, f)
            if f.endswith(".py") and not _is_command_module(path):
                bad += _unexplained(path)
    assert not bad, "imports inside functions without a '# lazy:' reason:\n" + "\n".join(sorted(set(bad)))


def test_the_check_sees_an_unexplained_import(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    import json\n\n\ndef g():\n    import os  # lazy: a reason\n")
    assert [line.split(": ", 1)[1] for line in _unexplained(str(p))] == ["import json"]
