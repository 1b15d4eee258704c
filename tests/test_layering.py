"""The plug-in layering: a plug-in (a module of search_spaces/ or strategies/) depends on the core only, and the
core (nasplat/) on no plug-in; what two plug-ins share belongs in the core (nasplat/oneshot/, say)."""
from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_PACKAGES = {"search_spaces": "nasplat.search_spaces", "strategies": "nasplat.strategies"}


def _module_name(path: Path) -> str:
    """The module a file of this checkout is imported as (pyproject maps the plug-in folders into nasplat)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in PLUGIN_PACKAGES:
        parts[:1] = PLUGIN_PACKAGES[parts[0]].split(".")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved, and of every
    importlib.import_module / __import__ of a literal name."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, module
            yield from ((node.lineno, f"{module}.{alias.name}") for alias in node.names)  # `from pkg import mod`
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str) and getattr(node.func, "attr", getattr(node.func, "id", "")) in \
                ("import_module", "__import__"):
            yield node.lineno, node.args[0].value


def _plugin(module: str) -> str | None:
    """The plug-in module `module` is, or is inside (None for the core and third-party modules)."""
    for package in PLUGIN_PACKAGES.values():
        if module == package or module.startswith(package + "."):
            return ".".join(module.split(".")[:3])
    return None


def _violations(folder: str, allowed: Callable[[str, str], bool]) -> list[str]:
    """"file:line imports plug-in" for each import in `folder` of a plug-in that `allowed(importer, plug-in)`
    refuses."""
    found: dict[str, None] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        own = _module_name(path)
        for line, module in _imports(path):
            plugin = _plugin(module)
            if plugin is not None and not allowed(own, plugin):
                found[f"{path.relative_to(ROOT)}:{line} imports {plugin}"] = None
    return list(found)


def test_no_plugin_imports_another_plugin():
    for folder, package in PLUGIN_PACKAGES.items():
        assert _violations(folder, lambda own, plugin: plugin == own or plugin == package) == []


def test_the_core_imports_no_plugin():
    assert _violations("nasplat", lambda own, plugin: False) == []


def test_the_check_sees_relative_and_absolute_imports(tmp_path, monkeypatch):
    """The rule's own parser: both spellings of a plug-in importing a plug-in are caught."""
    folder = tmp_path / "strategies"
    folder.mkdir()
    (folder / "a.py").write_text("from .b import X\nimport nasplat.search_spaces.c\n"
                                 "from nasplat.oneshot import cells\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert _violations("strategies", lambda own, plugin: plugin == own) == [
        "strategies/a.py:1 imports nasplat.strategies.b", "strategies/a.py:2 imports nasplat.search_spaces.c"]
