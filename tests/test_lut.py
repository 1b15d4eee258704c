"""Per-op latency lookup tables: TinyNet's decomposition, build / resume / load / predict, checks, the CLI."""
import json
import warnings

import pytest
import torch

from nasplat.arch import Arch
from nasplat.cli import main
from nasplat.cost import count_macs, lut, measure
from nasplat.cost.latency import Latency, LatencyError, Protocol, fingerprint, fingerprint_key
from nasplat.registry import SPACES

FAST = Protocol(warmup=1, rounds=2, seconds=0.005, gap=0.0)


@pytest.fixture(scope="module")
def space():
    return SPACES.create("tinynet")


def tiny(space, r=0.3, d=0.3, w=0.25):
    return space.arch({"r": r, "d": d, "w": w})


class FakeTimer:
    """Stands in for measure_model with a made-up figure (no timing): counts calls, can fail on the n-th
    call as a kill mid-build would."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, model, input_shape, *, protocol):
        if self.fail_at is not None and self.calls + 1 == self.fail_at:
            raise KeyboardInterrupt
        self.calls += 1
        ms = 0.05 + sum(input_shape) * 1e-3 + sum(p.numel() for p in model.parameters()) * 1e-7
        return Latency(ms, 0.0, (ms, ms * 1.1), ms, 2, tuple(input_shape), protocol, fingerprint(protocol))


# --- TinyNet's decomposition ------------------------------------------------------------------------------

ARCHS = [(0.3, 1.4, 0.25), (1.0, 0.3, 1.2), (0.517, 0.83, 0.6)]


@pytest.mark.parametrize("r,d,w", ARCHS)
def test_units_chained_are_the_whole_forward_pass(space, r, d, w):
    arch = tiny(space, r, d, w)
    units = space.latency_units(arch)
    x = torch.zeros(space.target(arch).input_shape)
    with torch.no_grad():
        for unit in units:
            assert tuple(x.shape) == unit.input_shape, unit.key
            x = unit.build().eval()(x)
        whole = space.build(arch).eval()(torch.zeros(space.target(arch).input_shape))
    assert x.shape == whole.shape == (1, space.num_classes)
    assert sum(count_macs(u.build(), u.input_shape) for u in units) == measure(space, arch)["macs"]
    assert units[0].key == f"conv_bn_silu-{int(224 * r)}x{int(224 * r)}x3-o32-k3-s2"
    assert units[-1].key.startswith("pool_linear-") and units[-1].key.endswith("-o1000")


def test_unit_space_holds_every_unit_once(space):
    keys = [u.key for u in space.latency_unit_space()]
    assert len(keys) == len(set(keys)) == 3316  # 113 channel layouts x input sides 67..224, deduplicated
    held = set(keys)
    for r, d, w in [*ARCHS, (0.301, 1.0, 0.8), (0.999, 1.234, 1.0), (0.75, 0.5, 0.333)]:
        missing = [u.key for u in space.latency_units(tiny(space, r, d, w)) if u.key not in held]
        assert not missing, (r, d, w, missing)


def test_unit_keys_are_readable_and_equal_units_compare_equal(space):
    units = space.latency_units(tiny(space, 0.5, 1.0, 1.0))  # 112px
    assert "mbconv_ir-28x28x24-o40-k5-s2-e6-se0.25" in [u.key for u in units]
    again = space.latency_units(tiny(space, 0.5, 1.0, 1.0))
    assert units == again and len({*units}) < len(units)  # repeated blocks share a key; build is not compared


def test_a_space_without_decomposition_says_so():
    toy = SPACES.create("toy")
    with pytest.raises(NotImplementedError, match="space 'toy' has no per-op decomposition"):
        toy.latency_units(toy.smallest())
    with pytest.raises(LatencyError, match="space 'toy' has no per-op decomposition"):
        lut.build_lut(toy, protocol=FAST, out="/nonexistent/never-written.json", calibrate=0, progress=False)


# --- build, load, predict ---------------------------------------------------------------------------------

def test_build_load_predict_measuring_for_real(space, tmp_path):
    arch = tiny(space)
    units = space.latency_units(arch)
    out = lut.build_lut(space, protocol=FAST, out=tmp_path / "t.json", calibrate=2, units=units, progress=False)
    data = json.loads(out.read_text())
    assert data["space"] == "tinynet" and data["space_options"] == {"num_classes": 1000} and data["complete"]
    assert data["protocol"] == FAST.to_dict() and data["unit_protocol"] == lut.unit_protocol(FAST).to_dict()
    assert data["fingerprint_key"] == fingerprint_key(fingerprint(FAST))
    assert {u.key for u in units} <= set(data["entries"])
    for entry in data["entries"].values():
        assert entry["count"] == 2 and entry["mean"] > 0 and entry["var"] >= 0
    calibration = data["calibration"]
    assert calibration["n"] == 2 and calibration["method"] == "offset" and calibration["scale"] == 1.0
    table = lut.LatencyTable.load(out)
    summed = sum(table.lookup(u.key) for u in units)
    assert table.predict(space, arch) == pytest.approx(summed + calibration["offset_ms"])
    for row in calibration["rows"]:  # the calibration architectures' units were profiled too
        assert table.summed(space, Arch.from_json(row["arch"])) == pytest.approx(row["summed"])
        assert row["measured"] > 0


def test_the_fit_is_a_robust_line():
    rows = [{"summed": s, "measured": 1.2 * s + 0.5} for s in (2.0, 4.0, 5.0, 8.0, 11.0)]
    fit = lut._fit(rows)
    assert fit["method"] == "affine" and fit["scale"] == pytest.approx(1.2) and fit["offset_ms"] == pytest.approx(0.5)
    rows[2]["measured"] *= 2  # one measurement disturbed by a neighbour does not tilt it
    assert lut._fit(rows)["scale"] == pytest.approx(1.2)
    two = lut._fit(rows[:2])
    assert two == {"method": "offset", "scale": 1.0, "offset_ms": pytest.approx(0.5 + 0.2 * 3)}


def test_predict_uses_the_calibration(space, tmp_path, monkeypatch):
    monkeypatch.setattr(lut, "measure_model", FakeTimer())
    arch = tiny(space)
    out = lut.build_lut(space, protocol=FAST, out=tmp_path / "t.json", calibrate=0, units=space.latency_units(arch),
                        progress=False)
    data = json.loads(out.read_text())
    data["calibration"].update(method="affine", scale=1.5, offset_ms=-0.25)
    table = lut.LatencyTable(data, path=out)
    assert table.predict(space, arch) == pytest.approx(1.5 * table.summed(space, arch) - 0.25)


def test_resume_skips_measured_keys_and_a_kill_leaves_valid_json(space, tmp_path, monkeypatch):
    units = space.latency_units(tiny(space, 0.4, 0.6, 0.5))
    distinct = len({u.key for u in units})
    out = tmp_path / "t.json"
    monkeypatch.setattr(lut, "measure_model", FakeTimer(fail_at=5))
    with pytest.raises(KeyboardInterrupt):
        lut.build_lut(space, protocol=FAST, out=out, calibrate=0, units=units, progress=False)
    partial = json.loads(out.read_text())  # valid JSON, holding what was measured before the kill
    assert len(partial["entries"]) == 4 and partial["complete"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temporary file left behind
    with pytest.raises(LatencyError, match="unfinished"):
        lut.LatencyTable.load(out).predict(space, tiny(space, 0.4, 0.6, 0.5))

    timer = FakeTimer()
    monkeypatch.setattr(lut, "measure_model", timer)
    lut.build_lut(space, protocol=FAST, out=out, calibrate=0, units=units, progress=False)
    assert timer.calls == distinct - 4
    done = json.loads(out.read_text())
    assert done["complete"] and {k: done["entries"][k] for k in partial["entries"]} == partial["entries"]
    lut.build_lut(space, protocol=FAST, out=out, calibrate=0, units=units, progress=False)
    assert timer.calls == distinct - 4  # nothing measured twice


@pytest.fixture
def table_file(space, tmp_path, monkeypatch):
    monkeypatch.setattr(lut, "measure_model", FakeTimer())
    return lut.build_lut(space, protocol=FAST, out=tmp_path / "t.json", calibrate=0,
                         units=space.latency_units(tiny(space)), progress=False)


def test_resume_refuses_a_table_of_another_machine_or_protocol(space, table_file):
    data = json.loads(table_file.read_text())
    with pytest.raises(LatencyError, match="cannot resume .* differs in protocol, unit_protocol"):
        lut.build_lut(space, protocol=Protocol(warmup=1, rounds=3, seconds=0.005, gap=0.0), out=table_file,
                      calibrate=0, units=[], progress=False)
    data["fingerprint"]["cpu"] = "Some Other CPU"
    table_file.write_text(json.dumps(data))
    with pytest.raises(LatencyError, match="differs in fingerprint.*Some Other CPU"):
        lut.build_lut(space, protocol=FAST, out=table_file, calibrate=0, units=[], progress=False)
    assert json.loads(table_file.read_text()) == data  # untouched


def test_check_refuses_another_device_and_warns_about_other_software(table_file):
    table = lut.LatencyTable.load(table_file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table.check(FAST)  # same machine: silent
    with pytest.raises(LatencyError, match="threads 1, but latency is measured with threads 2"):
        table.check(Protocol(threads=2))
    with pytest.raises(LatencyError, match="batch 1, but .* batch 8"):
        table.check(Protocol(batch=8))
    table.data["fingerprint"]["runtime"] = "onnxruntime"
    with pytest.raises(LatencyError, match="runtime onnxruntime"):
        table.check(FAST)
    table.data["fingerprint"].update(runtime="torch", torch="0.1.0")
    with pytest.warns(UserWarning, match=r"torch 0\.1\.0.*this machine is .*torch " + torch.__version__.split("+")[0]):
        table.check(FAST)


def test_a_missing_key_names_the_key_and_says_to_rebuild(space, table_file):
    table = lut.LatencyTable.load(table_file)
    wider = tiny(space, 0.3, 0.3, 1.0)
    missing = next(u.key for u in space.latency_units(wider) if u.key not in table.entries)
    with pytest.raises(LookupError, match=f"no entry for op '{missing}'.*rebuild it with `nasplat latency build-lut"):
        table.summed(space, wider)
    with pytest.raises(LatencyError, match="built for space 'tinynet', not 'toy'"):
        table.predict(SPACES.create("toy"), SPACES.create("toy").smallest())
    with pytest.raises(LatencyError, match="options"):
        table.check_space(SPACES.create("tinynet", num_classes=10))


def test_validate_compares_predictions_with_measurements(space, tmp_path, monkeypatch):
    monkeypatch.setattr(lut, "measure_model", FakeTimer())
    archs = lut.random_archs(space, 3, seed="validate-0")
    assert len({a["w"] for a in archs}) > 1  # the width is spread, not always 1
    out = lut.build_lut(space, protocol=FAST, out=tmp_path / "t.json", calibrate=0,
                        units=[u for a in archs for u in space.latency_units(a)], progress=False)
    table = lut.LatencyTable.load(out)
    truth = {a.key(): table.summed(space, a) * (1.3 if i == 0 else 1.0) for i, a in enumerate(archs)}
    monkeypatch.setattr(lut, "measure_arch", lambda sp, arch, protocol: Latency(
        truth[arch.key()], 0.0, (truth[arch.key()],), truth[arch.key()], 1, (1,), protocol))
    result = lut.validate(space, table, n=3, protocol=FAST)
    assert result["n"] == 3 and result["within"] == pytest.approx(2 / 3)
    assert result["rows"][0]["error"] == pytest.approx(1 / 1.3 - 1)
    # the rank correlation of the same pairs, computed here from the table's predictions and the truth
    from scipy.stats import spearmanr

    archs_back = [Arch.from_json(r["arch"]) for r in result["rows"]]
    measured = [truth[a.key()] for a in archs_back]
    predicted = [table.predict(space, a) for a in archs_back]
    assert [r["measured"] for r in result["rows"]] == measured
    assert result["spearman"] == pytest.approx(float(spearmanr(predicted, measured).statistic))


# --- the CLI ----------------------------------------------------------------------------------------------

def run_cli(argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_cli_bad_input_is_one_line(space, table_file, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    unfinished = json.loads(table_file.read_text())
    unfinished["complete"] = False
    (tmp_path / "unfinished.json").write_text(json.dumps(unfinished))
    cases = [
        (["latency", "build-lut", "nospace"], ["unknown search space 'nospace'", "tinynet"]),
        (["latency", "build-lut", "toy", "--out", str(tmp_path / "toy.json")], ["no per-op decomposition"]),
        (["latency", "build-lut", "tinynet", "--threads", "0"], ["--threads", "at least 1"]),
        (["latency", "build-lut", "tinynet", "--out", str(table_file)], ["cannot resume", "protocol"]),
        (["latency", "validate", "tinynet", "--lut", str(tmp_path / "none.json")], ["no such file"]),
        (["latency", "validate", "tinynet", "--lut", str(tmp_path / "bad.json")], ["not valid JSON"]),
        (["latency", "validate", "toy", "--lut", str(table_file)], ["built for space 'tinynet', not 'toy'"]),
        (["latency", "validate", "tinynet", "--lut", str(tmp_path / "unfinished.json")], ["unfinished"]),
        (["latency", "validate", "tinynet"], ["--lut"]),
    ]
    for argv, needles in cases:
        assert run_cli(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("nasplat: error:"), err
        for needle in needles:
            assert needle in err, err
    assert not (tmp_path / "toy.json").exists()


def test_cli_build_and_validate(space, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lut, "measure_model", FakeTimer())
    out = tmp_path / "t.json"
    assert run_cli(["latency", "build-lut", "tinynet", "--limit", "3", "--calibrate", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "nasplat latency validate tinynet" in printed
    assert len(json.loads(out.read_text())["entries"]) == 3
    # a table covering the validation architectures, which "measure" 10% slower than predicted: error -9.1%
    archs = lut.random_archs(space, 2, seed="validate-0")
    out = lut.build_lut(space, protocol=Protocol(), out=tmp_path / "v.json", calibrate=0,
                        units=[u for a in archs for u in space.latency_units(a)], progress=False)
    table = lut.LatencyTable.load(out)
    monkeypatch.setattr(lut, "measure_arch", lambda sp, arch, protocol: Latency(
        1.1 * table.summed(sp, arch), 0.0, (1.0,), 1.0, 1, (1,), protocol))
    assert run_cli(["latency", "validate", "tinynet", "--lut", str(out), "-n", "2"]) == 0
    printed = capsys.readouterr().out
    assert "within +-10%: 100% (2 of 2)" in printed and "Spearman rank correlation: 1.000" in printed
    assert printed.count("-9.1%") == 2
