"""`nasplat bench nb201`, fast: two seeds, a small budget, results written into a temporary RESULTS.md."""
from __future__ import annotations

import json

import pytest

from nasplat.cli import main
from nasplat.registry import TASKS
from nasplat.run import read_journal

STRATEGIES = ("random", "evolution", "local", "bayesian")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    results = folder / "RESULTS.md"
    results.write_text("# results\n\n<!-- bench:Other -->\n## Other\n\nkept\n<!-- /bench:Other -->\n")
    argv = ["bench", "nb201", "--strategies", ",".join(STRATEGIES), "--seeds", "2", "--budget", "2000s",
            "--out", str(folder / "out"), "--results", str(results)]
    assert main(argv) == 0
    return folder, argv


def test_each_strategy_and_seed_has_its_record(bench):
    folder, _ = bench
    task = TASKS.create("nasbench201")
    for strategy in STRATEGIES:
        for seed in range(2):
            record = json.loads((folder / "out" / strategy / f"seed-{seed:03d}.json").read_text())
            returned, curve = record["returned"], record["curve"]
            assert record["end"] == "budget" and record["simulated_seconds"] <= 2000
            assert returned["signal"] == task.query(returned["arch"]).signal
            assert returned["valid_acc_200ep"] == task.query(returned["arch"]).reported["valid_acc_200ep"]
            assert curve["seconds"] == sorted(curve["seconds"]) and curve["seconds"][-1] <= 2000
            assert curve["signal"] == sorted(curve["signal"]) and curve["signal"][-1] == returned["signal"]
            assert len(curve["seconds"]) == record["queries"] == len(curve["valid_acc_200ep"])
            # the returned architecture is the best by signal among those queried, not the best by report
            results = [e for e in read_journal(next((folder / "out" / "runs" / strategy /
                                                     f"seed-{seed:03d}").iterdir()) / "journal.jsonl")
                       if e["event"] == "result" and e["status"] == "ok"]
            assert returned["signal"] == max(r["metrics"]["accuracy"] for r in results)


def test_the_section_and_the_plot_are_written(bench):
    folder, _ = bench
    text = (folder / "RESULTS.md").read_text()
    assert "## Other\n\nkept" in text and "## NAS-Bench-201 strategies" in text
    assert "Command: `nasplat bench nb201 --strategies random,evolution,local,bayesian --seeds 2" in text
    assert all(f"| {s} | 2/2 | " in text for s in STRATEGIES)
    assert "population=10, tournament=3" in text
    assert (folder / "nb201.png").stat().st_size > 10_000 and (folder / "out" / "nb201.png").exists()


def test_a_rerun_skips_finished_seeds(bench, monkeypatch):
    folder, argv = bench
    import nasplat.bench

    def fail(*args, **kwargs):
        raise AssertionError("a finished seed ran again")

    monkeypatch.setattr(nasplat.bench, "_search", fail)
    assert main(argv) == 0


@pytest.mark.parametrize("extra, needle", [
    (["--strategies", "random,nope"], "unknown strategy 'nope'"),
    (["--signal", "valid_acc_13ep"], "signal 'valid_acc_13ep' is not a column"),
    (["--report", "test_acc"], "report column 'test_acc' is not a column"),
    (["--table", "/nonexistent/table.csv"], "cannot be read"),
    (["--budget", "-5s"], "must be positive"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, needle):
    argv = ["bench", "nb201", "--seeds", "1", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "R.md"),
            *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "R.md").exists()


def test_other_settings_in_the_same_folder_are_refused(bench, capsys):
    folder, argv = bench
    assert main([*argv[:-2], "--budget", "3000s", "--results", str(folder / "R2.md")]) == 2
    assert "other settings" in capsys.readouterr().err


def test_a_strategy_with_options_runs_as_its_own_row(tmp_path):
    from nasplat.bench import split_spec

    assert split_spec("bayesian:sampler=nsga2") == ("bayesian", {"sampler": "nsga2"})
    assert split_spec("random") == ("random", {})
    with pytest.raises(ValueError, match="name:key=value"):
        split_spec("bayesian:nsga2")
    results = tmp_path / "RESULTS.md"
    assert main(["bench", "nb201", "--strategies", "bayesian,bayesian:sampler=random", "--seeds", "1", "--budget",
                 "1500s", "--out", str(tmp_path / "out"), "--results", str(results)]) == 0
    tpe = json.loads((tmp_path / "out" / "bayesian" / "seed-000.json").read_text())
    other = json.loads((tmp_path / "out" / "bayesian:sampler=random" / "seed-000.json").read_text())
    assert tpe["returned"]["arch"] and other["returned"]["arch"] and tpe["curve"] != other["curve"]
    assert "bayesian:sampler=random: sampler=random, storage=memory" in results.read_text()
