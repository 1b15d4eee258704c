"""BNAS and the anti-bandit: their samplers and scorers on hand-made values, then tiny searches end to end."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nasplat.cli import main
from nasplat.export import read_bundle
from nasplat.oneshot.bandits import AntiBanditScorer, IndicatorScorer, LCBSampler, LessPotentialSampler, UCBScorer
from nasplat.oneshot.reduction import ReductionEngine, UniformWithoutReplacement
from nasplat.oneshot.single_path import PathModel
from nasplat.registry import SPACES, STRATEGIES, TASKS
from nasplat.report import abandoned_by_round, write_report
from nasplat.run import read_journal

CLI = [sys.executable, "-m", "nasplat.cli"]
TASK = {"limit_train": 64, "limit_val": 32, "batch_size": 16}
# full precision: the strategies do not depend on binarization, and exporting binarized ops (test_oneshot.py
# checks it) takes twice as long
SPACE = {"bnas": {"channels": 4, "layers": 3, "binarize": "none"},
         "abandit": {"channels": 4, "layers": 3, "binarize": "none"}}
OPTIONS = {
    "bnas": {"score": "indicator", "warmup_epochs": 1, "train_steps": 1, "batch_size": 16, "eval_limit": 16},
    "abandit": {"repeats": 1, "train_steps": 1, "batch_size": 16, "eval_limit": 16, "adversarial": "none"},
}


# -- samplers and scorers ----------------------------------------------------------------------------------------

def test_ucb_is_the_mean_accuracy_plus_sqrt_2_ln_n_over_n():
    scorer = UCBScorer()
    scorer.observe({"g": (0, 1)}, 50.0)
    scorer.observe({"g": (0, 2)}, 100.0)  # N = 2
    upper, lower = scorer.scores({"g": [[0, 3], [1, 2]]})["g"], scorer.lower({"g": [[0], [1]]})["g"]
    assert upper[0][0] == pytest.approx(0.75 + math.sqrt(2 * math.log(2) / 2))  # m = (0.5 + 1.0) / 2, n = 2
    assert upper[1][1] == pytest.approx(0.5 + math.sqrt(2 * math.log(2)))
    assert upper[1][2] == pytest.approx(1.0 + math.sqrt(2 * math.log(2)))
    assert upper[0][3] == math.inf  # untried: never abandoned unseen
    assert lower[0][0] == pytest.approx(0.75 - math.sqrt(math.log(2)))
    assert scorer.strengths({"g": [[0]]})["g"][0][0] == pytest.approx(0.75)


def test_the_anti_bandit_average_moves_by_lambda_from_the_first_value():
    scorer = AntiBanditScorer(momentum=0.7)
    for value in (40.0, 80.0, 20.0):
        scorer.observe({"g": (1,)}, value)
    m = 0.3 * (0.3 * 0.4 + 0.7 * 0.8) + 0.7 * 0.2
    assert scorer.arm("g", 0, 1) == (pytest.approx(m), 3)
    with pytest.raises(ValueError, match="lambda"):
        AntiBanditScorer(momentum=0.0)


def test_lcb_sampling_favours_under_sampled_and_weak_ops():
    scorer = AntiBanditScorer()
    for _ in range(9):
        scorer.observe({"g": (0, 0)}, 50.0)
    scorer.observe({"g": (1, 1)}, 50.0)  # edge 0: op 1 once, op 0 nine times, same accuracy
    sampler = LCBSampler(scorer)
    p = sampler.probabilities({"g": [[0, 1], [0, 1]]})["g"]
    low = {op: b for op, b in scorer.lower({"g": [[0, 1]]})["g"][0].items()}
    assert p[0][1] > p[0][0] and sum(p[0].values()) == pytest.approx(1.0)
    assert p[0][1] / p[0][0] == pytest.approx(math.exp(low[0] - low[1]))  # softmax of -LCB
    weak = AntiBanditScorer()
    weak.observe({"g": (0,)}, 90.0)
    weak.observe({"g": (1,)}, 10.0)
    assert LCBSampler(weak).probabilities({"g": [[0, 1]]})["g"][0][1] > 0.5  # equal n: the weaker op gets trials
    draws = [LCBSampler(scorer).pass_paths({"g": [[0, 1], [0, 1]]}, random.Random(s))[0]["g"][0] for s in range(400)]
    assert draws.count(1) / 400 == pytest.approx(p[0][1], abs=0.07)


def test_the_indicator_softmaxes_the_sampled_half_and_decays():
    scorer = IndicatorScorer()
    scorer.observe({"g": (0,)}, 60.0)
    scorer.observe({"g": (1,)}, 40.0)
    s0 = math.exp(0.6) / (math.exp(0.6) + math.exp(0.4))
    left_out = (s0 + 0.5) / 2  # (max + mean of the sampled ops' s) / 2
    first = scorer.scores({"g": [[0, 1, 2, 3]]})["g"][0]
    assert first == pytest.approx({0: s0, 1: 1 - s0, 2: left_out, 3: left_out})
    scorer.end_round({"g": [[0, 2, 3]]})  # op 1 abandoned
    scorer.observe({"g": (2,)}, 50.0)
    second = scorer.scores({"g": [[0, 2, 3]]})["g"][0]
    assert second == pytest.approx({0: s0 / 2 + 1.0, 2: left_out / 2 + 1.0, 3: left_out / 2 + 1.0})
    assert scorer.strengths({"g": [[0]]})["g"][0][0] == pytest.approx(s0)


def test_bnas_samples_the_less_potential_half_once_per_pass():
    weights = {"g": [[0.4, 0.1, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4, 0.0]]}
    paths = LessPotentialSampler().pass_paths({"g": [[0, 1, 2, 3, 4], [0, 1, 2, 3]]}, random.Random(0), weights)
    assert len(paths) == 2  # ceil(4 / 2) on the narrower edge
    assert {p["g"][1] for p in paths} == {0, 1}
    assert {p["g"][0] for p in paths} <= {4, 1, 3}  # the three of least weight out of five
    assert LessPotentialSampler().round_size(7, 3) == 12


OPS = ("none", "a", "b", "c")


def _engine(kind: str, *, repeats: int = 2, edges: int = 3, seed: int = 0) -> ReductionEngine:
    if kind == "abandit":
        scorer = AntiBanditScorer()
        sampler = LCBSampler(scorer)
    elif kind == "indicator":
        sampler, scorer = LessPotentialSampler(), IndicatorScorer()
    else:
        sampler, scorer = UniformWithoutReplacement(), UCBScorer()
    engine = ReductionEngine(groups={"normal": edges, "reduce": edges}, ops=OPS, sampler=sampler, scorer=scorer,
                             repeats=repeats, seed=seed)
    engine.context = {g: [[0.1 * ((e + k) % 4) for k in range(len(OPS))] for e in range(edges)]
                      for g in ("normal", "reduce")}
    return engine


def _value(path, rng) -> float:
    return sum(op for ops in path.values() for op in ops) * 5 + rng.gauss(0, 3)


def test_the_anti_bandit_abandons_every_k_times_t_samples_after_an_initial_pass():
    engine, rng = _engine("abandit", repeats=2), random.Random(0)
    rounds = []
    while (path := engine.ask()) is not None:
        rounds.append(engine.round)
        engine.tell(path, _value(path, rng))
    assert [rounds.count(r) for r in (1, 2, 3)] == [4 * 2, 3 * 2, 2 * 2] and len(rounds) == engine.planned()
    assert [len([h for h in engine.history if h["round"] == r]) for r in (1, 2, 3)] == [6, 6, 6]
    for h in engine.history:  # the least-scored op goes; `none` only when it would otherwise be the last one left
        lowest = min(h["scores"].values())
        assert h["score"] == lowest or (h["op"] == "none" and len(h["scores"]) == 2
                                        and min(v for k, v in h["scores"].items() if k != "none") == lowest), h
    first, rng = _engine("abandit", repeats=2), random.Random(0)
    initial = [first.ask() for _ in range(4)]  # the first pass tries every op on every edge once
    for path in initial:
        first.tell(path, 1.0)
    assert all({p[g][e] for p in initial} == set(range(4)) for g in ("normal", "reduce") for e in range(3))
    assert first.scorer.total == 4 and first.round == 1


@pytest.mark.parametrize("kind", ["abandit", "indicator", "ucb"])
def test_state_round_trips_through_json_and_resumes_exactly(kind):
    def run(engine, rng, stop=None):
        paths = []
        while (path := engine.ask()) is not None:
            engine.tell(path, _value(path, rng))
            paths.append(path)
            if len(paths) == stop:
                break
        return paths

    whole = _engine(kind, seed=4)
    unbroken = run(whole, random.Random(2))
    first, rng = _engine(kind, seed=4), random.Random(2)
    head = run(first, rng, stop=7)
    resumed = _engine(kind, seed=4)
    resumed.restore(json.loads(json.dumps(first.state())))  # through JSON, as a checkpoint stores it
    assert head + run(resumed, rng) == unbroken
    assert resumed.history == whole.history and resumed.done


def test_the_reduction_plot_reads_cp_nas_style_journals(tmp_path):
    events = [{"event": "supernet", "step": 1, "round": 1, "abandoned": [
        {"round": 1, "group": "normal", "edge": e, "op": "b", "score": 0.1, "scores": {"a": 0.5, "b": 0.1, "c": None}}
        for e in range(3)]},
        {"event": "supernet", "step": 2, "round": 2, "abandoned": [
            {"round": 2, "group": "normal", "edge": e, "op": "a", "score": 0.2, "scores": {"a": 0.2, "c": 0.9}}
            for e in range(3)]},
        {"event": "supernet", "step": 3, "abandoned": [{"round": 3, "group": "normal", "edge": 0, "op": "a"}]}]
    assert list(abandoned_by_round(events)) == [1, 2]  # records without scores (older journals) left out
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    folder = write_report(tmp_path)
    assert (folder / "reduction.png").stat().st_size > 5_000
    assert "reduction.png" in (folder / "summary.md").read_text()


def test_fgsm_training_attacks_the_sampled_path_and_leaves_the_task_be(monkeypatch):
    from nasplat.tasks import classification

    calls = []
    fgsm = classification.fgsm

    def counted(model, x, y, **kwargs):
        calls.append(kwargs)
        return fgsm(model, x, y, **kwargs)

    monkeypatch.setattr(classification, "fgsm", counted)
    space = SPACES.create("binary-cells", **SPACE["abandit"])
    task = TASKS.create("classification", **TASK, base_resolution=32)
    strategy = STRATEGIES.create("abandit", space)  # adversarial=fgsm by default
    strategy.prepare(task)
    supernet = space.supernet(partial_channels=4)
    path = {g: (1,) * len(a) for g, a in supernet.alphas.items()}
    before = [p.detach().clone() for p in supernet.weight_parameters()]
    x, y = next(task.batches("train", input_size=32, batch_size=8, seed=0))
    strategy.train_step(PathModel(supernet, path), torch.optim.Adam(supernet.weight_parameters()), task, x, y)
    assert len(calls) == 1 and calls[0]["eps"] == pytest.approx(8 / 255) and calls[0]["std"] is not None
    assert any(not torch.equal(a, b) for a, b in zip(before, supernet.weight_parameters()))
    assert task.adversarial == "none"  # the search's evaluations and the retraining stay clean


# -- end to end --------------------------------------------------------------------------------------------------

def _events(run_path: Path, kind: str) -> list[dict]:
    return [e for e in read_journal(Path(run_path) / "journal.jsonl") if e["event"] == kind]


def _cli_args(strategy: str, out: Path, options: dict | None = None) -> list[str]:
    # --export none: test_oneshot.py checks the conversions; these runs keep arch.json and the weights
    args = ["search", "binary-cells", "--strategy", strategy, "--epochs", "1", "--out", str(out), "--flops", "100M",
            "--export", "none"]
    for flag, values in (("--space-option", SPACE[strategy]), ("--task-option", TASK),
                         ("--strategy-option", {**OPTIONS[strategy], **(options or {})})):
        for key, value in values.items():
            args += [flag, f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return args


def _cli(argv: list[str]) -> int:
    """`nasplat ARGV` in this process: no interpreter to start."""
    return main(argv)


_CLEAN: dict[str, Path] = {}


def _clean_run(strategy: str, tmp_path_factory) -> Path:
    """One uninterrupted search per strategy, shared by the tests that read it."""
    if strategy not in _CLEAN:
        out = tmp_path_factory.mktemp(f"clean-{strategy}")
        assert _cli(_cli_args(strategy, out)) == 0
        _CLEAN[strategy] = next(out.iterdir())
    return _CLEAN[strategy]


def _assert_searched(run_path: Path, *, warmup: int, sampled: int) -> None:
    steps = _events(run_path, "supernet")
    assert [e["step"] for e in steps] == list(range(1, warmup + sampled + 1))
    paths = steps[warmup:]
    assert all(0 <= e["accuracy"] <= 100 and len(e["scores"]["normal"]) == 14 for e in paths)
    abandoned = [a for e in paths for a in e.get("abandoned", [])]
    assert len(abandoned) == 7 * 28 and all(a["op"] in a["scores"] for a in abandoned)  # 7 rounds, 28 edges
    derived = _events(run_path, "derived")
    assert len(derived) == 1 and _events(run_path, "result")[0]["status"] == "ok"
    assert read_bundle(run_path / "best")["arch"] == derived[0]["arch"]
    assert sorted(os.listdir(run_path / "best")) == ["arch.json", "weights.safetensors"]  # --export none
    assert (run_path / "report" / "reduction.png").stat().st_size > 10_000


@pytest.mark.parametrize("strategy, warmup, sampled", [
    ("bnas", 1, sum(math.ceil(k / 2) for k in range(2, 9))),  # the indicator tries half the ops: 1 + 2 + ... + 4
    ("abandit", 0, sum(range(2, 9))),  # K x T samples per round, T = 1: 8 + 7 + ... + 2
])
def test_search_derives_exports_and_plots_the_reduction(tmp_path_factory, strategy, warmup, sampled):
    _assert_searched(_clean_run(strategy, tmp_path_factory), warmup=warmup, sampled=sampled)


@pytest.mark.slow
def test_bnas_by_ucb_searches(tmp_path):
    assert _cli(_cli_args("bnas", tmp_path, {"score": "ucb"})) == 0
    _assert_searched(next(tmp_path.iterdir()), warmup=1, sampled=sum(range(2, 9)))


@pytest.mark.parametrize("strategy", ["bnas", "abandit"])
def test_kill_9_mid_search_resumes_to_the_same_journal_and_genotype(tmp_path, tmp_path_factory, strategy):
    """Killed after its first checkpoint (bnas: the warm-up's), resumed: the journal and the genotype are those
    of an unbroken run with the same seed."""
    proc = subprocess.Popen([*CLI, *_cli_args(strategy, tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, run_path = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        runs = list(tmp_path.iterdir())
        if runs and _events(runs[0], "supernet"):
            run_path = runs[0]
            break
        time.sleep(0.02)
    assert run_path is not None, "the search never checkpointed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not _events(run_path, "derived")
    assert _cli(["search", "--resume", str(run_path)]) == 0
    clean_path = _clean_run(strategy, tmp_path_factory)
    strip = lambda events: [{k: v for k, v in e.items() if k != "time"} for e in events]  # noqa: E731
    assert strip(_events(run_path, "supernet")) == strip(_events(clean_path, "supernet"))
    assert _events(run_path, "derived")[0]["arch"] == _events(clean_path, "derived")[0]["arch"]


def test_a_space_without_a_supernet_is_one_line_and_exit_2(tmp_path, capsys):
    assert _cli(["search", "tinynet", "--strategy", "abandit", "--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "space 'tinynet' has no supernet(), derive(), op_costs()" in lines[0], lines
    assert not list(tmp_path.iterdir())
