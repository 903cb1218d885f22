"""The package's structure: every module documented in the package docstring, no module importing another's private
names, no import cycle (imports inside functions count), and no module importing the test doubles."""
import ast
import re
from pathlib import Path

import tradingrl_nb

PKG = Path(tradingrl_nb.__file__).parent
MODULES = sorted(f.stem for f in PKG.glob("*.py") if not f.name.startswith("_"))


def imports_of(module: str) -> list[tuple[str, list[str]]]:
    "(imported tradingrl_nb module, names) for every import statement of `module`, at any depth (functions too)."
    out = []
    for node in ast.walk(ast.parse((PKG / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1: mod = f"tradingrl_nb.{mod}" if mod else "tradingrl_nb"
            if mod == "tradingrl_nb": out += [(f"tradingrl_nb.{a.name}", []) for a in node.names if a.name in MODULES]
            elif mod.startswith("tradingrl_nb."): out.append((mod, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("tradingrl_nb.")]
    return out


def test_every_module_is_listed_in_the_package_docstring():
    listed = set(re.findall(r"`tradingrl_nb\.(\w+)`", tradingrl_nb.__doc__))
    assert set(MODULES) - listed == set(), "add them to tradingrl_nb/__init__.py's module list"


def test_no_module_imports_another_modules_private_names():
    bad = [(m, src, n) for m in MODULES for src, names in imports_of(m) for n in names
           if n.startswith("_") and src != f"tradingrl_nb.{m}"]
    assert bad == []


def test_no_import_cycle():
    graph = {m: {src.split(".")[1] for src, _ in imports_of(m)} - {m} for m in MODULES}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open": raise AssertionError(" -> ".join(stack[stack.index(n):] + [n]))
            if n not in state: visit(n)
        state[m] = "done"
        stack.pop()
    for m in MODULES:
        if m not in state: visit(m)


def test_only_tests_and_demos_use_the_test_doubles():
    users = [m for m in MODULES if m != "testing" and any(src == "tradingrl_nb.testing" for src, _ in imports_of(m))]
    assert users == []


def test_no_module_over_600_lines():
    "A module that grows past 600 lines is split by concept into its own notebook (the notebooks are the source)."
    long = {m: n for m in MODULES if (n := len((PKG / f"{m}.py").read_text().splitlines())) > 600}
    assert long == {}
