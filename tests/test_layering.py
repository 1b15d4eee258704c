"""Arrows point down. A plug-in (a module of search_spaces/ or strategies/) depends on the core only, and the
core (nasplat/) on no plug-in: what two plug-ins share belongs in the core (nasplat/oneshot/, say). Inside the
core, a module imports only its own layer and those below (docs/architecture.md draws them); each CLI verb
stands alone under the dispatcher; a search space module registers no task."""
from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_PACKAGES = {"search_spaces": "nasplat.search_spaces", "strategies": "nasplat.strategies"}
# the core's layers, top first (docs/architecture.md); a module not named here is in the bottom layer
LAYERS = (
    ("nasplat.cli",),
    ("nasplat.bench", "nasplat.formula"),
    ("nasplat.api",),
    ("nasplat.runner", "nasplat.retrain"),
    ("nasplat.export", "nasplat.report", "nasplat.results", "nasplat.run"),
    ("nasplat.oneshot",),
    ("nasplat.cost",),
    ("nasplat.tasks",),
)
# the one-shot protocols (and the package that re-exports them): the strategy base checks spaces against them
BOTTOM = ("nasplat.oneshot", "nasplat.oneshot.contract")
VERBS = sorted(p for p in (ROOT / "nasplat" / "cli").glob("*.py") if p.stem not in ("__init__", "__main__", "options"))


def _module_name(path: Path) -> str:
    """The module a file of this checkout is imported as (pyproject maps the plug-in folders into nasplat)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in PLUGIN_PACKAGES:
        parts[:1] = PLUGIN_PACKAGES[parts[0]].split(".")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, runtime: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved, and of every
    importlib.import_module / __import__ of a literal name; `runtime` leaves out those under TYPE_CHECKING
    (type hints naming a class of a layer above create no import)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    hints = {id(inner) for node in ast.walk(tree) if runtime and isinstance(node, ast.If)
             and "TYPE_CHECKING" in ast.unparse(node.test) for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
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


def _layer(module: str) -> int:
    """The layer of a core module, 0 at the top."""
    if module in BOTTOM or module.startswith(BOTTOM[-1] + "."):
        return len(LAYERS)
    return next((i for i, prefixes in enumerate(LAYERS)
                 if any(module == p or module.startswith(p + ".") for p in prefixes)), len(LAYERS))


def _core(module: str) -> bool:
    return module.startswith("nasplat.") and _plugin(module) is None


@pytest.mark.parametrize("path", sorted((ROOT / "nasplat").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_core_module_imports_nothing_above_its_layer(path):
    own = _module_name(path)
    if own == "nasplat":
        return  # the package re-exports the bottom layer and loads the verbs lazily
    above = sorted({m for _, m in _imports(path, runtime=True) if _core(m) and _layer(m) < _layer(own)
                    and _module_name(path) != m and m != "nasplat"})
    assert above == [], f"{own} (layer {_layer(own)}) imports {above}"


@pytest.mark.parametrize("path", VERBS, ids=lambda p: p.name)
def test_a_cli_verb_imports_no_other_verb_nor_the_dispatcher(path):
    others = {f"nasplat.cli.{p.stem}" for p in VERBS if p != path}
    modules = {m for _, m in _imports(path)}
    assert not modules & others and "nasplat.cli" not in modules


def test_the_dispatcher_has_every_verb():
    from nasplat.cli import VERBS as dispatched

    assert sorted(Path(verb.__file__).stem for verb in dispatched) == [p.stem for p in VERBS]


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.py")), ids=lambda p: p.name)
def test_a_search_space_module_registers_no_task(path):
    names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", None) for n in ast.walk(ast.parse(path.read_text()))}
    assert "register_task" not in names
