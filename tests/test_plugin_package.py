"""A third-party package adds a space, a strategy and a task: one file and one entry point each.

The package is written from the code blocks of docs/extending.md and driven by the commands of its shell
block, so the guide cannot drift from what works. pip installs it into a folder of its own, which only the
`nasplat` subprocesses have on PYTHONPATH: the shared environment, where other test processes list the
registered plug-ins, never sees it, and nothing is left to uninstall.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nasplat.units import parse_count

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
FILE_TAG = re.compile(r"# ([\w-]+\.(?:py|toml))")  # a block's first line that names the file it is
NASPLAT = Path(sys.executable).with_name("nasplat")  # the console script pip installed beside this Python
# the guide's shell block, line by line (test_the_guide_shows_these_commands holds the two together)
CD, PIP, LIST, DRY_RUN, SEARCH, SEARCH_TASK = COMMANDS = [
    "cd mini-convnet",
    "pip install -e .",
    "nasplat list 'mini-*'",
    "nasplat search mini-convnet --flops 2M --dry-run",
    "nasplat search mini-convnet --flops 2M --strategy mini-hill --trials 2 --epochs 1 "
    "--task-option limit_train=512 --task-option limit_val=256 --export none",
    "nasplat search mini-convnet --flops 2M --task mini-colours --trials 2 --export none",
]


def guide_blocks(language: str | None = None) -> list[str]:
    """The bodies of the guide's fenced blocks, of one language or all."""
    return [body for lang, body in FENCE.findall(GUIDE.read_text()) if language in (None, lang)]


def guide_files() -> dict[str, str]:
    """The guide's file blocks by file name, each as written there (its `# NAME` line included)."""
    files = {}
    for body in guide_blocks():
        tag = FILE_TAG.fullmatch(body.partition("\n")[0])
        if tag:
            files[tag[1]] = body
    return files


def test_the_guide_shows_these_commands():
    assert [line for body in guide_blocks("sh") for line in body.splitlines()] == COMMANDS


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide's package, installed as the guide says (offline, with this environment's setuptools),
    into a folder of its own. -e is left out: an editable install works through a .pth file, which Python
    reads in site-packages only, not in a folder on PYTHONPATH."""
    package = tmp_path_factory.mktemp("package") / CD.split()[1]
    package.mkdir()
    files = guide_files()
    assert sorted(files) == ["mini_colours.py", "mini_convnet.py", "mini_hill.py", "pyproject.toml"]
    for name, text in files.items():
        (package / name).write_text(text)
    target = tmp_path_factory.mktemp("site")
    pip = [word for word in shlex.split(PIP) if word != "-e"]
    subprocess.run([sys.executable, "-m", *pip, "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target)], cwd=package, check=True, timeout=120)
    return target


def nasplat(command: str, *, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A `nasplat ...` line of the guide as a user runs it, in `cwd`, with the installed package on the path."""
    program, *args = shlex.split(command)
    assert program == "nasplat"
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([str(NASPLAT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def best_bundle(cwd: Path) -> dict:
    """arch.json of best/ in the one run that a search wrote under `cwd`/runs."""
    (run,) = [p for p in (cwd / "runs").iterdir() if p.is_dir()]
    return json.loads((run / "best" / "arch.json").read_text())


def test_list_shows_the_three_plugins(site, tmp_path):
    done = nasplat(LIST, site=site, cwd=tmp_path)
    assert done.returncode == 0 and "failed to load" not in done.stderr, done.stderr
    for line in ("mini-convnet     A stack of `depth` 3x3 convolutions",
                 "mini-hill        Random architectures for the first `starts` trials",
                 "mini-colours     Classify random images by their brightest colour channel",
                 "options: starts", "options: images"):
        assert line in done.stdout, done.stdout


def test_dry_run_reports_the_space_and_its_smallest_architecture(site, tmp_path):
    done = nasplat(DRY_RUN, site=site, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "space mini-convnet: 12 architectures; searched: width {8, 16, 32}, depth 1..4" in done.stdout
    assert "smallest architecture: MACs 221K, params 322" in done.stdout and "estimated time" in done.stdout, done.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command,classes", [(SEARCH, 10), (SEARCH_TASK, 3)], ids=["mini-hill", "mini-colours"])
def test_search_finds_an_architecture_of_the_plugin_space_within_the_budget(site, tmp_path, command, classes):
    """Classification trains the space's models under the plug-in strategy; the plug-in task trains them too."""
    done = nasplat(command, site=site, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    best = best_bundle(tmp_path)
    assert best["arch"]["space"] == "mini-convnet"
    words = command.split()
    assert best["costs"]["macs"] <= parse_count(words[words.index("--flops") + 1])
    assert 0 <= best["metrics"]["accuracy"] <= 100
    assert best["weights"]["num_classes"] == classes
