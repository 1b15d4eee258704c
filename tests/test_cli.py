"""Bad input: one clear line on stderr, exit code 2, nothing written or corrupted."""
import json
import shutil

import pytest

from nasplat import api
from nasplat.cli import main


def run_cli(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse-level errors
        return exc.code


@pytest.mark.parametrize("argv,needles", [
    (["search", "toy", "--flops", "24X"], ["'24X'", "24M"]),
    (["search", "toy", "--flops", "-1M"], ["must be positive", "-1M"]),
    (["search", "toy", "--flops", "0"], ["must be positive"]),
    (["search", "nospace"], ["unknown search space 'nospace'", "tinynet", "toy"]),
    (["search", "toy", "--strategy", "nostrategy"], ["unknown strategy 'nostrategy'", "random"]),
    (["search", "toy", "--flops", "10"], ["below the smallest toy architecture", "give at least"]),
    (["search", "toy", "--data", "cifar10:/nonexistent"], ["toy task", "unknown data"]),
    (["search", "toy", "--trials", "0"], ["--trials", "at least 1"]),
    (["search", "toy", "--export", "onnx,tflite"], ["--export tflite", "torchscript, onnx, or none"]),
    (["search", "--resume", "/nonexistent/run"], ["no such folder"]),
    (["search", "--config", "/nonexistent.json"], ["no such file"]),
])
def test_bad_search_input(tmp_path, capsys, argv, needles):
    assert run_cli([*argv, "--out", str(tmp_path / "runs")] if "--resume" not in argv else argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nasplat: error:"), err
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing written


def test_resume_on_a_folder_that_is_no_run(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    assert run_cli(["search", "--resume", str(tmp_path / "notarun")]) == 2
    assert "is not a nasplat run" in capsys.readouterr().err


def test_export_of_a_run_without_finished_trial(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TOY_NAN_WIDTH", "4")
    run = api.search("toy", strategy="random", trials=1, out=tmp_path, initial=[{"width": 4, "scale": 0.5}]).run
    capsys.readouterr()
    assert run_cli(["export", str(run.path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no finished trial" in err, err


def test_corrupted_arch_json(tmp_path, capsys):
    run = api.search("toy", strategy="random", trials=1, out=tmp_path).run
    arch_json = run.best / "arch.json"
    arch_json.write_text(arch_json.read_text()[:40])
    capsys.readouterr()
    assert run_cli(["export", str(run.path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "arch.json" in err and "not valid JSON" in err, err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError):
        main(["--debug", "search", "toy", "--flops", "24X", "--out", str(tmp_path)])


def test_list_and_show(tmp_path, capsys):
    assert run_cli(["list"]) == 0
    out = capsys.readouterr().out
    assert "tinynet" in out and "random" in out and "toy" in out
    assert "devices (--device table:COLUMN): lat_1080ti_1," in out and "lat_pixel3" in out  # nasbench201's
    run = api.search("toy", strategy="random", trials=2, out=tmp_path).run
    capsys.readouterr()
    assert run_cli(["show", str(run.path)]) == 0
    assert run.id in capsys.readouterr().out


def test_ctrl_c_stops_cleanly_and_writes_the_report(tmp_path, monkeypatch):
    from nasplat.runner import trial as trial_module

    calls = {"n": 0}
    real = trial_module.evaluate

    def interrupt_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("nasplat.runner.local.evaluate", interrupt_on_third)
    outcome = api.search("toy", strategy="random", trials=5, out=tmp_path)
    assert outcome.reason == "interrupted" and outcome.finished == 2
    assert (outcome.run.report / "summary.md").exists()
    events = outcome.run.events()
    assert events[-1]["event"] == "end" and events[-1]["reason"] == "interrupted"
    json.dumps(events)
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize("data,needle", [
    ("cifar10:/nonexistent/cifar", "/nonexistent/cifar"),
    ("folder:/nonexistent/images", "/nonexistent/images"),
    ("imagenet:/x", "imagenet"),
])
def test_bad_data_path_for_the_classification_task(tmp_path, capsys, data, needle):
    assert run_cli(["search", "tinynet", "--flops", "24M", "--data", data, "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nasplat: error:") and needle in err, err
    assert not (tmp_path / "runs").exists()


def test_dry_run_trains_nothing_and_writes_nothing(tmp_path, capsys):
    assert run_cli(["search", "toy", "--flops", "1M", "--dry-run", "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "space toy" in out and "width {4, 8, 16}" in out and "MACs <= 1M" in out and "feasible" in out
    assert not (tmp_path / "runs").exists()


def test_classification_estimates_its_training_time(monkeypatch):
    """Timed probe steps x steps per epoch x (epochs + evaluation); the clock is faked, so no timing flakes."""
    import itertools

    from nasplat.registry import SPACES, TASKS
    from nasplat.tasks import classification

    space, task = SPACES.create("tinynet"), TASKS.create("classification", limit_train=512, limit_val=128)
    model = space.build(space.arch({"r": 0.4, "d": 0.4, "w": 0.4}), num_classes=task.num_classes)
    ticks = itertools.count(0.0, 0.3)  # each clock reading 0.3 s after the last: probe of 3 steps takes 0.3 s
    monkeypatch.setattr(classification.time, "perf_counter", lambda: next(ticks))
    estimate = task.estimate_seconds(model, input_size=task.input_size(0.4), epochs=3)
    assert estimate == pytest.approx(0.1 * (512 / task.batch_size) * (3 + 1 / 3))


def test_show_refresh_rewrites_the_report_from_the_journal(tmp_path, capsys):
    run = api.search("toy", strategy="random", trials=3, out=tmp_path).run
    summary = run.report / "summary.md"
    summary.write_text("stale\n")
    (run.report / "pareto.png").unlink()
    assert run_cli(["show", str(run.path)]) == 0
    assert run.id in capsys.readouterr().out
    assert summary.read_text() == "stale\n" and not (run.report / "pareto.png").exists()  # report left as it was
    assert run_cli(["show", str(run.path), "--refresh"]) == 0
    assert run.id in capsys.readouterr().out
    assert run.id in summary.read_text() and (run.report / "pareto.png").exists()  # rewritten from the journal


def test_config_reruns_the_same_search(tmp_path):
    """`--config runs/<id>/config.json` is the same search again: same settings, same seed, same trials."""
    assert run_cli(["search", "toy", "--strategy", "evolution", "--trials", "5", "--seed", "3",
                    "--out", str(tmp_path / "a")]) == 0
    first = next((tmp_path / "a").iterdir())
    assert run_cli(["search", "--config", str(first / "config.json"), "--out", str(tmp_path / "b")]) == 0
    again = next((tmp_path / "b").iterdir())
    config = {k: v for k, v in json.loads((first / "config.json").read_text()).items() if k != "out"}
    assert config == {k: v for k, v in json.loads((again / "config.json").read_text()).items() if k != "out"}

    def trials(run):
        return [(e["arch"], e["status"]) for e in map(json.loads, (run / "journal.jsonl").read_text().splitlines())
                if e["event"] == "result"]
    assert trials(first) == trials(again) and len(trials(first)) == 5


def _boom(*args, **kwargs):
    raise RuntimeError("boom: a bug")


def test_a_bug_is_exit_1_and_its_traceback_goes_to_the_run_folder(tmp_path, capsys, monkeypatch):
    """Not bad input: one line naming the exception and the file its traceback was written to."""
    from nasplat import report

    run = api.search("toy", strategy="random", trials=1, out=tmp_path).run
    capsys.readouterr()
    monkeypatch.setattr(report, "summary_text", _boom)
    assert run_cli(["show", str(run.path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nasplat: internal error: RuntimeError: boom: a bug"), err
    written = sorted((run.path / "logs").glob("traceback-*.txt"))
    assert len(written) == 1 and str(written[0]) in err
    text = written[0].read_text()
    assert "Traceback (most recent call last)" in text and "in _boom" in text and "nasplat show" in text
    with pytest.raises(RuntimeError, match="boom"):  # --debug: Python's own traceback
        main(["--debug", "show", str(run.path)])


def test_a_bug_outside_any_run_logs_to_the_user_cache(tmp_path, capsys, monkeypatch):
    from nasplat.runner import components

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(components, "user_options", _boom)
    assert run_cli(["list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    written = list((tmp_path / "cache" / "nasplat" / "tracebacks").glob("traceback-*.txt"))
    assert len(written) == 1 and str(written[0]) in err and "internal error: RuntimeError" in err
    assert "RuntimeError: boom: a bug" in written[0].read_text()


def test_max_repeated_failures_is_checked(tmp_path, capsys):
    assert run_cli(["search", "toy", "--max-repeated-failures", "-1", "--out", str(tmp_path)]) == 2
    assert "--max-repeated-failures" in capsys.readouterr().err
