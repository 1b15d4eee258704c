import json
import random

import pytest

from nasplat.arch import Arch
from nasplat.constraints import Constraint, limit_of, violations
from nasplat.registry import SPACES, STRATEGIES, UnknownName, list_spaces
from nasplat.space import Choice, FloatRange, IntRange
from nasplat.units import format_count, format_time, parse_count, parse_time


def test_arch_is_canonical_and_round_trips():
    a = Arch("s", {"b": [1, 2], "a": 0.1 + 0.2, "c": "x"})
    b = Arch("s", {"c": "x", "a": 0.30000000000000004, "b": (1, 2)})
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    assert a.to_json() == '{"params":{"a":0.30000000000000004,"b":[1,2],"c":"x"},"space":"s"}'
    assert Arch.from_json(a.to_json()) == a
    assert a["b"] == (1, 2)
    assert a.replace(c="y") != a and a.replace(c="y").key() != a.key()
    assert Arch("t", dict(a)).key() != a.key()  # the space is part of the identity
    with pytest.raises(AttributeError):
        a.x = 1
    with pytest.raises(TypeError):
        Arch("s", {"m": {"nested": 1}})
    with pytest.raises(ValueError):
        Arch.from_dict({"params": {}})


def test_units_parse_and_print():
    assert parse_count("24M") == 24e6
    assert parse_count("1.5G") == 1.5e9
    assert parse_count("300k") == 300e3
    assert parse_count("1e6") == 1e6
    assert parse_time("5ms") == pytest.approx(0.005)
    assert parse_time("10min") == 600
    for bad in ("24X", "M", "", "1.2.3M"):
        with pytest.raises(ValueError, match="not a number"):
            parse_count(bad)
    for bad in ("-1M", "0", "0M"):
        with pytest.raises(ValueError, match="must be positive"):
            parse_count(bad)
    assert format_count(24.4e6) == "24.4M" and format_count(1.5e9) == "1.5G" and format_count(512) == "512"
    assert format_time(0.0052) == "5.2ms" and format_time(754) == "12m34s"


def test_params_sample_mutate_contain():
    rng = random.Random(0)
    for p in (Choice(("a", "b", "c")), IntRange(2, 10, 2), FloatRange(0.3, 1.0), FloatRange(1e-3, 1.0, log=True)):
        for _ in range(200):
            v = p.sample(rng)
            assert p.contains(v)
            m = p.mutate(v, rng)
            assert p.contains(m)
    assert Choice(("a", "b")).mutate("a", rng) == "b"
    assert IntRange(0, 10, 2).size() == 6 and not IntRange(0, 10, 2).contains(3)


def test_constraints():
    c = Constraint.parse("macs", "24M")
    assert c.holds({"macs": 24e6}) and not c.holds({"macs": 24.1e6})
    assert violations([c], {"macs": 30e6}) == ["MACs 30M > 24M"]
    assert limit_of([c, Constraint("macs", 10e6)], "macs") == 10e6
    with pytest.raises(ValueError, match="unknown constraint metric"):
        Constraint("watts", 1)
    with pytest.raises(ValueError, match="must be positive"):
        Constraint.parse("macs", "0")


def test_registry_finds_plugins_through_entry_points():
    assert "tinynet" in list_spaces() and "toy" in list_spaces("t*")
    assert {"random", "bayesian"} <= set(STRATEGIES.names())
    with pytest.raises(UnknownName, match="known: .*tinynet"):
        SPACES.get("nope")


def test_toy_space_validates():
    space = SPACES.create("toy")
    arch = space.smallest()
    space.validate(arch)
    with pytest.raises(ValueError, match="outside"):
        space.validate(arch.replace(width=5))
    with pytest.raises(ValueError, match="not 'toy'"):
        space.validate(Arch("other", dict(arch)))
    json.loads(arch.to_json())


@pytest.mark.parametrize("flags", [["--flops", "1M"], ["--dry-run"]], ids=["budget", "dry-run"])
def test_a_space_without_smallest_is_told_what_to_add(tmp_path, monkeypatch, capsys, flags):
    """smallest() is part of a space's contract: a search with a budget, or a dry run, of a space that lacks it
    ends in one line that names the space and the method to add (exit 2), not in a traceback."""
    from nasplat.cli import main
    from nasplat.space import SearchSpace
    from toy import ToySpace

    class Unsized(ToySpace):
        name = "unsized"
        smallest = SearchSpace.smallest  # the base's, as in a space that does not define it

    monkeypatch.setitem(SPACES._items, "unsized", Unsized)  # registered for this test only
    assert main(["search", "unsized", *flags, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nasplat: error: search space 'unsized'"), err
    assert "Unsized) does not define smallest()" in err and "docs/extending.md" in err
    assert not any(tmp_path.iterdir())


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    """A kill between writing and renaming (here, during the flush to disk) leaves the old content and no
    temporary file (tables, predictors, manifests and run state are written through nasplat.files)."""
    from nasplat import files

    path = tmp_path / "t.json"
    files.write_json(path, {"old": 1})

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        files.write_json(path, {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1} and [p.name for p in tmp_path.iterdir()] == ["t.json"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"
