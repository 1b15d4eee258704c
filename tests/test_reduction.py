"""The operation-space-reduction engine and CP-NAS's child-parent losses."""
from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from nasplat.binary import BinaryConv2d
from nasplat.oneshot.cp_loss import CenterLoss, kernel_loss
from nasplat.oneshot.reduction import ReductionEngine, SoftmaxMeanScorer, UniformWithoutReplacement, cp_indicator

OPS = ("none", "a", "b", "c", "d", "e", "f", "g")


def _engine(seed: int = 0, repeats: int = 1, edges: int = 6) -> ReductionEngine:
    return ReductionEngine(groups={"normal": edges, "reduce": edges}, ops=OPS, sampler=UniformWithoutReplacement(),
                           scorer=SoftmaxMeanScorer(), repeats=repeats, seed=seed)


def _quality(seed: int = 1, edges: int = 6) -> dict[str, list[list[float]]]:
    rng = random.Random(seed)
    return {g: [[rng.uniform(0, 100) for _ in OPS] for _ in range(edges)] for g in ("normal", "reduce")}


def _value(path, quality, rng) -> float:
    scores = [quality[g][e][op] for g, ops in path.items() for e, op in enumerate(ops)]
    return sum(scores) / len(scores) + rng.gauss(0, 0.5)


def test_cp_nas_samples_35_paths_every_op_once_per_pass_and_ends_with_one_op_per_edge():
    engine, rng, quality = _engine(), random.Random(0), _quality()
    asked, round_paths = 0, {}
    while (path := engine.ask()) is not None:
        round_paths.setdefault(engine.round, []).append(path)
        engine.tell(path, _value(path, quality, rng))
        asked += 1
    assert asked == sum(range(2, 9))  # T * (8 + 7 + ... + 2) with T = 1
    for round_, paths in round_paths.items():
        k = 9 - round_
        assert len(paths) == k
        for g in ("normal", "reduce"):
            for e in range(6):
                assert len({p[g][e] for p in paths}) == k  # each remaining op tried exactly once
    assert engine.done and all(len(ops) == 1 for edges in engine.remaining().values() for ops in edges)
    assert len(engine.history) == 7 * 12  # one op abandoned per edge per round


def test_the_best_op_survives_on_nearly_every_edge():
    rng = random.Random(3)
    quality = {g: [[rng.uniform(0, 50) for _ in OPS] for _ in range(2)] for g in ("normal", "reduce")}
    best = {(g, e): rng.randrange(1, len(OPS)) for g in quality for e in range(2)}
    for (g, e), k in best.items():
        quality[g][e][k] = 100.0
    engine = ReductionEngine(groups={"normal": 2, "reduce": 2}, ops=OPS, sampler=UniformWithoutReplacement(),
                             scorer=SoftmaxMeanScorer(), repeats=3, seed=0)
    while (path := engine.ask()) is not None:
        engine.tell(path, _value(path, quality, rng))
    survivors = {(g, e): ops[0] for g, edges in engine.remaining().items() for e, ops in enumerate(edges)}
    assert sum(survivors[key] == k for key, k in best.items()) >= 3


def test_none_is_never_the_last_op_left():
    engine = _engine(edges=2)
    while (path := engine.ask()) is not None:  # "none" scores best everywhere
        engine.tell(path, sum(op == 0 for ops in path.values() for op in ops))
    assert all(ops != [0] for edges in engine.remaining().values() for ops in edges)
    assert all(h["op"] == "none" for h in engine.history if h["round"] == 7)


def test_resume_mid_pass_asks_exactly_what_an_unbroken_run_asks():
    quality = _quality()

    def run(engine, rng, stop=None):
        paths = []
        while (path := engine.ask()) is not None:
            engine.tell(path, _value(path, quality, rng))
            paths.append(path)
            if stop is not None and len(paths) == stop:
                return paths
        return paths

    whole = _engine(seed=5)
    unbroken = run(whole, random.Random(9))
    first, rng = _engine(seed=5), random.Random(9)
    head = run(first, rng, stop=12)  # mid round 2
    resumed = _engine(seed=5)
    resumed.restore(json.loads(json.dumps(first.state())))  # through JSON, as a checkpoint stores it
    assert head + run(resumed, rng) == unbroken
    assert whole.done and resumed.done and resumed.remaining() == whole.remaining()  # the same op kept per edge
    assert resumed.remaining() != _engine(seed=5).remaining()


def test_bad_tells_are_refused():
    engine = _engine()
    path = engine.ask()
    with pytest.raises(ValueError, match="finite"):
        engine.tell(path, float("nan"))
    engine.tell(path, 1.0)
    with pytest.raises(ValueError, match="not asked"):
        engine.tell(path, 1.0)


def test_indicator_and_scorer_scale():
    assert cp_indicator(80.0, 60.0, beta=0.5) == 70.0
    assert cp_indicator(80.0, 60.0, beta=0.0) == 60.0
    scorer = SoftmaxMeanScorer()
    scorer.observe({"g": (1,)}, 90.0)
    scorer.observe({"g": (2,)}, 80.0)
    scores = scorer.scores({"g": [[1, 2]]})["g"][0]
    assert scores[1] > scores[2] and 0.5 < scores[1] < 0.6  # percentages read as fractions: no saturation


class Net(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.conv = BinaryConv2d(3, 4, 3, padding=1, mode=mode)
        self.head = nn.Linear(4, 2)


def test_kernel_loss_pulls_the_child_toward_the_parent_only():
    child, parent = Net("both"), Net("none")
    with torch.no_grad():
        parent.conv.weight.copy_(child.conv.reconstructed())
    assert kernel_loss(child, parent, weight=1.0).item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        parent.conv.weight.mul_(2)
    loss = kernel_loss(child, parent, weight=1.0)
    assert loss.item() > 0
    loss.backward()
    assert child.conv.weight.grad is not None and parent.conv.weight.grad is None
    with pytest.raises(ValueError, match="twin"):
        kernel_loss(child, nn.Sequential(nn.Conv2d(3, 4, 3)), weight=1.0)


def test_center_loss_tracks_class_means_and_falls_as_features_gather():
    loss = CenterLoss(2, 3, weight=1.0, momentum=0.0)
    labels = torch.tensor([0, 0, 1, 1])
    spread = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 4, 0], [0, 6, 0]])
    loss(spread, labels)
    assert torch.allclose(loss.centers, torch.tensor([[1.0, 0, 0], [0, 5, 0]]))
    far = loss(spread, labels).item()
    near = loss(torch.tensor([[1.0, 0, 0], [1.2, 0, 0], [0, 5, 0], [0, 5.1, 0]]), labels).item()
    assert near < far
