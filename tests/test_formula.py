import json

import pytest

from nasplat.constraints import Constraint
from nasplat.formula import Formula


def _points():
    # r and d that grow with the budget, as the paper's tiny formula finds; two models per budget
    out = []
    for budget, r, d in ((12e6, 0.40, 0.45), (24e6, 0.48, 0.60), (50e6, 0.62, 0.72), (100e6, 0.80, 0.85)):
        out += [{"budget": budget, "r": r, "d": d, "accuracy": 60.0},
                {"budget": budget, "r": r + 0.02, "d": d - 0.02, "accuracy": 59.0}]
    return out


def test_formula_fits_monotone_trend_and_round_trips(tmp_path):
    formula = Formula.fit("tinynet", _points())
    p24, p36, p70 = formula.predict(24e6), formula.predict(36e6), formula.predict(70e6)
    assert p24["r"] == pytest.approx(0.49, abs=0.03) and p24["d"] == pytest.approx(0.59, abs=0.03)
    assert p24["r"] < p36["r"] < p70["r"] and p24["d"] < p36["d"] < p70["d"]  # interpolates between budgets
    path = tmp_path / "formula.json"
    formula.save(path)
    data = json.loads(path.read_text())
    assert set(data["predictions"]) == {"12M", "24M", "50M", "100M"}
    assert Formula.load(path).predict(36e6) == p36  # the saved hyper-parameters reproduce the fit exactly


def test_formula_gives_the_first_point_of_a_search():
    formula = Formula.fit("tinynet", _points())
    (point,) = formula.initial_points("tinynet", [Constraint("macs", 24e6)])
    assert set(point) == {"r", "d"} and 0.3 <= point["r"] <= 1.0
    with pytest.raises(ValueError, match="needs a MAC budget"):
        formula.initial_points("tinynet", [])
    with pytest.raises(ValueError, match="fitted on space 'tinynet'"):
        formula.initial_points("toy", [Constraint("macs", 24e6)])


def test_formula_file_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        Formula.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a formula file"):
        Formula.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="at least two budgets"):
        Formula.fit("tinynet", _points()[:2])
