"""Arrows point down: cost below export, the registry and the runners; each CLI verb on its own; a search
space module registers no task."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nasplat"
VERBS = sorted(p for p in (PACKAGE / "cli").glob("*.py") if p.stem not in ("__init__", "__main__", "options"))


def imported_modules(path: Path) -> set[str]:
    """Every nasplat module `path` imports, relative imports resolved; `from X import name` counts X.name too,
    since the name may be a submodule."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "nasplat" or name.startswith("nasplat.")}


def reaches(modules: set[str], targets: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == t or m.startswith(t + ".") for t in targets))


@pytest.mark.parametrize("path", sorted((PACKAGE / "cost").glob("*.py")), ids=lambda p: p.name)
def test_cost_imports_nothing_above_it(path):
    above = ("nasplat.export", "nasplat.registry", "nasplat.cli", "nasplat.runner", "nasplat.api")
    assert reaches(imported_modules(path), above) == []


@pytest.mark.parametrize("path", VERBS, ids=lambda p: p.name)
def test_a_cli_verb_imports_no_other_verb_nor_the_dispatcher(path):
    others = tuple(f"nasplat.cli.{p.stem}" for p in VERBS if p != path)
    modules = imported_modules(path)
    assert reaches(modules, others) == [] and "nasplat.cli" not in modules


def test_the_dispatcher_has_every_verb():
    from nasplat.cli import VERBS as dispatched

    assert sorted(Path(verb.__file__).stem for verb in dispatched) == [p.stem for p in VERBS]


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.py")), ids=lambda p: p.name)
def test_a_search_space_module_registers_no_task(path):
    names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", None) for n in ast.walk(ast.parse(path.read_text()))}
    assert "register_task" not in names
