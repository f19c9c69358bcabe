"""The shape of the code, checked: one direction of dependency, and Huey's internals kept in two modules.

Fast (no services): it parses the project's modules with ast."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

from huey.api import Huey, Task, TaskLock, TaskWrapper
from huey.consumer import Consumer, Scheduler, Worker
from huey.registry import Registry
from huey.storage import PriorityRedisExpireStorage

ROOT = Path(__file__).resolve().parent.parent
HUEY_MODULES = {"app.queue", "app.consumer"}  # the only modules allowed to touch Huey's private names
LOCAL_APP_IMPORTS_ALLOWED = 5  # function-local app imports outside app/cli (to keep an optional dependency out)
# The only modules that read the process's settings (config.get): the entry points. Everything below them is
# passed the settings, or reads them from the object that travels (the Huey instance: huey.settings).
SETTINGS_READERS = {
    "app.cli.root": "the CLI: the group reads them once and hands them to every command (the click context)",
    "app.queue": "get_huey: the Python API's boundary; task modules register on the process's Huey instance at "
                 "import, and a program that only submits (app.submit, a direct task call) runs no entry point",
}


def modules() -> dict[str, Path]:
    found = {}
    for path in [*ROOT.glob("app/**/*.py"), *ROOT.glob("helpers/*.py"), ROOT / "tasks.py", ROOT / "config.py"]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported project module, whether the import is inside a function), for every import in the module."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    local = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found += [(target, id(node) in local) for target in targets if target in known and target != name]
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target, _ in imports_of(name, path, known)} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    sys.setrecursionlimit(10_000)
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_function_local_imports_counted():
    assert cycles(graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_helpers_import_nothing_of_the_app():
    for name, targets in graph().items():
        if name.startswith("helpers"):
            assert not {t for t in targets if t.startswith("app") or t == "tasks"}, name


def test_lower_layers_never_import_the_entry_points():
    entry = {"app.cli", "app.consumer", "app.worker"}
    for name, targets in graph().items():
        if name.startswith("app.cli") or name in entry or name == "app.__main__":
            continue
        assert not {t for t in targets if t in entry or t.startswith("app.cli.")}, name


def test_few_function_local_app_imports_outside_the_cli():
    known = modules()
    local = [(name, target) for name, path in known.items() if not name.startswith("app.cli")
             for target, inside in imports_of(name, path, known) if inside and target.startswith("app")]
    assert len(local) <= LOCAL_APP_IMPORTS_ALLOWED, local


def huey_private_names() -> set[str]:
    names = set()
    for cls in (Huey, Task, TaskLock, TaskWrapper, Consumer, Scheduler, Worker, Registry, PriorityRedisExpireStorage):
        for klass in cls.__mro__:
            if klass.__module__.startswith("huey"):
                names |= {n for n in vars(klass) if n.startswith("_") and not n.startswith("__")}
    instance = Huey("architecture-check", immediate=True)
    names |= {n for n in vars(instance) if n.startswith("_") and not n.startswith("__")}
    names |= {"_huey", "_key", "_ttl", "_signal_actions", "_signum", "_restart", "_graceful",
              "_next_periodic", "_registry"}
    return names


def own_private_names(tree: ast.AST) -> set[str]:
    """Private attributes a module's own classes set on self (its own state, not Huey's)."""
    return {target.attr for node in ast.walk(tree) if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name) and target.value.id == "self"}


def test_huey_private_names_only_in_the_two_pinned_modules():
    private = huey_private_names()
    offenders = []
    for name, path in modules().items():
        if name in HUEY_MODULES:
            continue
        tree = ast.parse(path.read_text())
        mine = own_private_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private and node.attr not in mine:
                offenders.append(f"{name}:{node.lineno} .{node.attr}")
    assert offenders == []


def settings_reads(tree: ast.AST) -> list[int]:
    """Lines where a module reads the process's settings: `config.get` (under any name `config` is imported as)
    or a `get` imported from config."""
    modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name == "config"}
    lines = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "config"
             and any(alias.name == "get" for alias in node.names)]
    lines += [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "get"
              and isinstance(node.value, ast.Name) and node.value.id in modules]
    return sorted(lines)


def test_settings_are_read_by_the_entry_points_only():
    offenders = [f"{name}:{line} config.get" for name, path in modules().items() if name not in SETTINGS_READERS
                 for line in settings_reads(ast.parse(path.read_text()))]
    assert offenders == [], "pass the settings down (or read huey.settings) instead of calling config.get()"
    assert set(SETTINGS_READERS) <= set(modules()), "a listed reader no longer exists: drop it from the list"


def test_the_settings_check_finds_a_read():
    found = settings_reads(ast.parse("import config as c\nfrom config import get\nx = c.get().queue\n"
                                     "import os\ny = os.environ.get('A')\n"))
    assert found == [2, 3]
