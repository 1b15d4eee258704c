"""The documentation stands on its own and stays true: its links resolve, nothing points outside the
project, and every command it shows is one the CLI takes and a test or a benchmark runs."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from nasplat.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# where commands are run: the tests, the benchmarks and the Makefile's targets
RUNNERS = [*sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "bench").glob("*.py")), ROOT / "Makefile"]
SHELL_BLOCK = re.compile(r"```(?:sh|console|bash)\n(.*?)```", re.S)
# options whose value names a plug-in: the value must be exercised along with the option
NAMED_VALUES = {"--strategy", "--sampler", "--runtime", "--scheduler", "--runner"}


def commands(page: Path) -> list[list[str]]:
    """The command lines of a page's shell blocks, joined across backslash continuations, comments cut."""
    found = []
    for block in SHELL_BLOCK.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # environment assignments, e.g. RAY_ADDRESS=... nasplat ...
            if words:
                found.append(words)
    return found


ALL_COMMANDS = [(page, words) for page in PAGES for words in commands(page)]


def required_words(words: list[str]) -> list[str]:
    """What a test or bench must contain to run this command: program, verbs, first positional, options."""
    needed = [words[0]]
    positionals = 0
    for i, word in enumerate(words[1:], start=1):
        if word.startswith("--"):
            needed.append(word.split("=")[0])
            if word in NAMED_VALUES and i + 1 < len(words):
                needed.append(words[i + 1])
        elif word.startswith("-"):
            needed.append(word)
        elif not words[i - 1].startswith("-") and positionals < (3 if words[0] == "ray" else 2):
            positionals += 1
            if "<" not in word and "/" not in word:
                needed.append(word)
    return needed


def test_pages_exist_and_link_to_files_that_exist() -> None:
    names = {p.name for p in PAGES}
    assert {"architecture.md", "extending.md", "search-spaces.md", "strategies.md", "latency.md",
            "distributed.md", "export.md", "benchmarks.md"} <= names
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_nothing_points_outside_the_project() -> None:
    outside = "../" + "shared"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = [ROOT / name for name in tracked.stdout.split()] + PAGES
    offenders = [str(f.relative_to(ROOT)) for f in files
                 if f.is_file() and f.suffix in {".md", ".py", ".toml", ""} and outside in f.read_text(errors="ignore")]
    assert not offenders, f"these files refer to {outside}, which a clone does not have: {offenders}"


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 90


@pytest.mark.parametrize("page,words", [(p, w) for p, w in ALL_COMMANDS if w[0] == "nasplat"],
                         ids=lambda v: v.name if isinstance(v, Path) else " ".join(v)[:60])
def test_nasplat_commands_parse(page: Path, words: list[str]) -> None:
    try:
        build_parser().parse_args(words[1:])
    except SystemExit as exc:
        pytest.fail(f"{page.name}: `{' '.join(words)}` is refused by the CLI ({exc})")


@pytest.mark.parametrize("page,words", ALL_COMMANDS, ids=lambda v: v.name if isinstance(v, Path) else " ".join(v)[:60])
def test_every_command_is_run_by_a_test_or_a_bench(page: Path, words: list[str]) -> None:
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert set(words[1:]) <= set(targets), f"{page.name}: `{' '.join(words)}` names no Makefile target"
        return
    if words[0] == "python" and words[1].startswith("bench/"):
        assert (ROOT / words[1]).is_file(), f"{page.name}: {words[1]} does not exist"
        return
    needed = required_words(words)
    runners = [f for f in RUNNERS if all(w in f.read_text() for w in needed)]
    assert runners, (f"{page.name}: no test or bench runs `{' '.join(words)}` "
                     f"(none holds all of {needed})")
