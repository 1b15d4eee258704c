"""Bandit-style operation-space reduction: BNAS (`bnas`) and the anti-bandit search of ABanditNAS (`abandit`).

Both run on the reduction engine (nasplat.oneshot.reduction) as CP-NAS does: sample one op per edge, train
that single path of the supernet briefly (it inherits and updates the shared weights), give its validation
accuracy to every op it used, and abandon the weakest op of every edge each round until one is left; a node
then keeps its strongest edges (the space's `derive`). What differs is how paths are drawn and ops scored
(nasplat.oneshot.bandits):

- `bnas` first warms the supernet up with PC-DARTS's bi-level training (first order, 1/M of the channels),
  then, by default (`score=ucb`, the journal version), tries every remaining op once per pass and abandons by
  the upper confidence bound m + sqrt(2 ln N / n); `score=indicator` (the conference version) tries only the
  ceil(K/2) ops of least softmax(alpha) per edge and abandons by the decayed performance-based indicator.
- `abandit` tries every op once, then draws paths one at a time with probability softmax(-LCB) per edge,
  keeps an exponential moving average of each op's accuracy (lambda = 0.7), and every K x T samples abandons
  the op of least UCB on every edge. Sampled paths train adversarially (FGSM with a random start, made by
  the task: nasplat.tasks.adversarial) by default.
"""
from __future__ import annotations

import copy
import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nasplat.arch import Arch
from nasplat.constraints import limit_of
from nasplat.errors import UserError
from nasplat.oneshot.architect import Architect
from nasplat.oneshot.contract import CellSpace
from nasplat.oneshot.bandits import AntiBanditScorer, IndicatorScorer, LCBSampler, LessPotentialSampler, UCBScorer
from nasplat.oneshot.reduction import ReductionEngine, UniformWithoutReplacement
from nasplat.oneshot.single_path import PathModel, endless_batches
from nasplat.registry import register_strategy
from nasplat.strategy import OneShotStrategy

Path = dict[str, tuple[int, ...]]


class _WarmUp:
    """BNAS's warm-up: PC-DARTS's bi-level training, first order. SGD with a cosine schedule trains the weights
    on one half of the training split, Adam the alphas (and edge betas) on the other; the first 30% of the
    epochs train the weights alone, so that the alphas do not judge untrained operations."""

    def __init__(self, supernet: nn.Module, task: Any, *, epochs: int, batch_size: int, w_lr: float, arch_lr: float):
        weights = supernet.weight_parameters()
        self.supernet, self.task, self.epochs, self.batch_size = supernet, task, epochs, batch_size
        self.weights = weights
        self.w_opt = torch.optim.SGD(weights, lr=w_lr, momentum=0.9, weight_decay=3e-4)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, max(epochs, 1), eta_min=1e-3)
        self.architect = Architect(weights=weights, alphas=supernet.arch_parameters(), order=1, lr=arch_lr,
                                   loss=lambda batch: task.loss(supernet(batch[0]), batch[1]), weight_decay=1e-3)
        self.weights_only = int(0.3 * epochs)

    def epoch(self, epoch: int, *, seed: int, size: int) -> dict[str, Any]:
        """One epoch (0-based); returns its journal fields."""
        train = self.task.batches("weights", input_size=size, batch_size=self.batch_size, seed=seed)
        valid = self.task.batches("architecture", input_size=size, batch_size=self.batch_size, seed=seed + 1)
        self.supernet.train()
        total, count, arch_loss = 0.0, 0, []
        for w_batch, a_batch in zip(train, valid):
            if epoch >= self.weights_only:
                arch_loss.append(self.architect.step(w_batch, a_batch, w_lr=self.schedule.get_last_lr()[0])["val_loss"])
            self.w_opt.zero_grad(set_to_none=True)
            loss = self.task.loss(self.supernet(w_batch[0]), w_batch[1])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"BNAS's warm-up diverged at epoch {epoch + 1}; lower w_lr")
            loss.backward()
            nn.utils.clip_grad_norm_(self.weights, 5.0)
            self.w_opt.step()
            total += loss.item() * len(w_batch[1])
            count += len(w_batch[1])
        self.schedule.step()
        return {"warmup_epoch": epoch + 1, "train_loss": total / count,
                "arch_val_loss": sum(arch_loss) / len(arch_loss) if arch_loss else None}

    def state_dict(self) -> dict[str, Any]:
        return {"w_opt": self.w_opt.state_dict(), "schedule": self.schedule.state_dict(),
                "arch_opt": self.architect.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.w_opt.load_state_dict(state["w_opt"])
        self.schedule.load_state_dict(state["schedule"])
        self.architect.optimizer.load_state_dict(state["arch_opt"])


class _BanditSearch(OneShotStrategy):
    """The loop BNAS and the anti-bandit share: optional warm-up epochs, then one checkpoint per sampled path.

    Steps: 1..W are the warm-up epochs, then one per sampled path; each path's journal event has its accuracy,
    the arms' scores after it and, when it ended a round, the op each edge abandoned with the scores it was
    judged on."""

    space_contract = CellSpace
    warmup_epochs: int = 0

    def __init__(self, space: Any, *, repeats: int = 1, train_steps: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 partial_channels: int = 4, eval_limit: int | None = 500, max_skip: int | None = 2, **common: Any):
        super().__init__(space, **common)
        if repeats < 1 or train_steps < 1 or batch_size < 1:
            raise UserError(f"repeats, train_steps and batch_size must be at least 1, got {repeats}, {train_steps} "
                            f"and {batch_size}")
        self.repeats, self.train_steps, self.batch_size, self.lr = repeats, train_steps, batch_size, lr
        self.partial_channels, self.eval_limit, self.max_skip = partial_channels, eval_limit, max_skip

    @abstractmethod
    def arms(self) -> tuple[Any, Any]:
        """The engine's sampler and scorer."""

    def warm_up(self, supernet: nn.Module, task: Any) -> _WarmUp | None:
        return None

    def context(self, supernet: nn.Module) -> Any:
        """What the sampler reads beside the remaining ops (BNAS's indicator: the op weights after warm-up)."""
        return None

    def prepare(self, task: Any) -> None:
        """Work before training that needs the task (the anti-bandit's attack budget)."""

    def train_step(self, model: PathModel, optimizer: torch.optim.Optimizer, task: Any, x: torch.Tensor,
                   y: torch.Tensor) -> None:
        """One batch of a sampled path on cross-entropy."""
        model.train()
        optimizer.zero_grad(set_to_none=True)
        task.loss(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.supernet.weight_parameters(), 5.0)
        optimizer.step()

    def search(self, session: Any) -> Arch:
        task = session.task
        torch.manual_seed(self.seed)
        supernet = self.space.supernet(partial_channels=self.partial_channels).to(getattr(task, "device", "cpu"))
        self.prepare(task)
        groups = {name: len(alpha) for name, alpha in supernet.alphas.items()}
        sampler, scorer = self.arms()
        engine = ReductionEngine(groups=groups, ops=supernet.ops, sampler=sampler, scorer=scorer,
                                 repeats=self.repeats, seed=self.seed)
        optimizer = torch.optim.Adam(supernet.weight_parameters(), lr=self.lr)
        warm = self.warm_up(supernet, task)
        step, stream = 0, 0
        state = session.load()
        if state is not None:
            supernet.load_state_dict(state["supernet"])
            optimizer.load_state_dict(state["optimizer"])
            engine.restore(state["engine"])
            if warm is not None:
                warm.load_state_dict(state["warm_up"])
            step, stream = state["step"], state["stream"]
            torch.set_rng_state(state["rng"])
        size = task.input_size(1.0)

        def save(event: dict[str, Any]) -> None:
            snapshot = {"supernet": supernet.state_dict(), "optimizer": optimizer.state_dict(),
                        "engine": engine.state(), "warm_up": warm.state_dict() if warm is not None else None,
                        "step": step, "stream": stream, "rng": torch.get_rng_state()}
            session.save(snapshot, step=step, events=[event])

        with session.progress(total=self.warmup_epochs + engine.planned(), completed=step,
                              description=f"{self.name} search") as advance:
            while warm is not None and step < self.warmup_epochs:
                event = warm.epoch(step, seed=self.seed * 1_000_003 + step, size=size)
                step += 1
                save(event)
                session.log(f"warm-up epoch {step}/{self.warmup_epochs}: train loss {event['train_loss']:.3f}")
                advance()
            engine.context = self.context(supernet)
            while (path := engine.ask()) is not None:
                round_ = engine.round
                model = PathModel(supernet, path)
                batches = endless_batches(task, size=size, batch_size=self.batch_size,
                                          seed=self.seed * 7919 + stream * 104_729)
                for _ in range(self.train_steps):
                    self.train_step(model, optimizer, task, *next(batches))
                stream += 1  # the n-th path trains on the n-th data stream, resumed or not
                accuracy = task.evaluate(model, input_size=size, limit=self.eval_limit)["accuracy"]
                engine.tell(path, accuracy)
                step += 1
                event = {"round": round_, "path": {g: list(p) for g, p in path.items()}, "accuracy": accuracy,
                         "scores": self._journaled(engine, scorer.scores(engine.remaining()))}
                if engine.round != round_:
                    event["abandoned"] = [h for h in engine.history if h["round"] == round_]
                save(event)
                advance()
        return self._derive(session, engine, scorer, len(supernet.ops), groups)

    def _derive(self, session: Any, engine: ReductionEngine, scorer: Any, ops: int, groups: Mapping[str, int]) -> Arch:
        """The space's genotype from each edge's surviving op, weighted by its strength (its accuracy, or BNAS's
        indicator), so that a node keeps its strongest edges."""
        weights = {g: torch.zeros(n, ops) for g, n in groups.items()}
        for group, edges in scorer.strengths(engine.remaining()).items():
            for edge, strengths in enumerate(edges):
                for op, value in strengths.items():
                    weights[group][edge, op] = max(value, 1e-6)
        params, info = self.space.derive(weights, None, max_skip=self.max_skip,
                                         limit=limit_of(self.constraints, "macs"))
        self.derived = self.space.complete(params, constraints=self.constraints, costs=self.costs)
        session.log(f"derived: {self.space.describe(self.derived)}" + (f" ({info})" if info else ""))
        return self.derived

    def _journaled(self, engine: ReductionEngine, scores: Mapping[str, list[dict[int, float]]]) -> dict[str, Any]:
        """Scores by op name, rounded, an unbounded one (an untried arm) as None."""
        return {g: [{engine.ops[op]: round(s, 4) if math.isfinite(s) else None for op, s in edge.items()}
                    for edge in edges] for g, edges in scores.items()}


@register_strategy("bnas")
class BNAS(_BanditSearch):
    """BNAS: PC-DARTS warm-up, then abandon ops by UCB (journal version) or the performance-based indicator."""

    def __init__(self, space: Any, *, score: str = "ucb", warmup_epochs: int = 5, w_lr: float = 0.025,
                 arch_lr: float = 6e-4, **options: Any):
        super().__init__(space, **options)
        if score not in ("ucb", "indicator"):
            raise UserError(f"bnas scores ops by ucb (the journal version) or indicator (the conference version), "
                            f"got score={score!r}")
        if warmup_epochs < 0:
            raise UserError(f"warmup_epochs must be at least 0, got {warmup_epochs}")
        self.scoring, self.warmup_epochs, self.w_lr, self.arch_lr = score, warmup_epochs, w_lr, arch_lr

    def arms(self) -> tuple[Any, Any]:
        if self.scoring == "indicator":
            return LessPotentialSampler(), IndicatorScorer()
        return UniformWithoutReplacement(), UCBScorer()

    def warm_up(self, supernet: nn.Module, task: Any) -> _WarmUp:
        return _WarmUp(supernet, task, epochs=self.warmup_epochs, batch_size=self.batch_size, w_lr=self.w_lr,
                       arch_lr=self.arch_lr)

    def context(self, supernet: nn.Module) -> dict[str, list[list[float]]]:
        with torch.no_grad():
            return {g: alpha.softmax(-1).tolist() for g, alpha in supernet.alphas.items()}


@register_strategy("abandit")
class ABandit(_BanditSearch):
    """ABanditNAS: sample by softmax(-LCB), average accuracy with lambda = 0.7, abandon by UCB every K x T samples;
    sampled paths train on FGSM examples (adversarial=fgsm) or clean ones (adversarial=none)."""

    def __init__(self, space: Any, *, repeats: int = 3, momentum: float = 0.7, adversarial: str = "fgsm",
                 **options: Any):
        super().__init__(space, repeats=repeats, **options)
        if adversarial not in ("none", "fgsm"):
            raise UserError(f"abandit trains sampled paths on adversarial=fgsm or none examples, got {adversarial!r}")
        self.momentum, self.adversarial = momentum, adversarial
        self._attacker: Any = None
        self._size = 0

    def arms(self) -> tuple[Any, Any]:
        scorer = AntiBanditScorer(momentum=self.momentum)
        return LCBSampler(scorer), scorer

    def prepare(self, task: Any) -> None:
        """The task attacks (nasplat.tasks.adversarial, in pixel space, its budget adv_eps and adv_step: 8/255
        and 2/255 by default): a copy of it set to FGSM makes the sampled paths' batches, so that the search's
        own evaluations and the retraining of the derived network keep the task's setting."""
        if self.adversarial == "none":
            return
        if not callable(getattr(task, "adversarial_batch", None)):
            raise UserError(f"abandit's adversarial={self.adversarial} needs a task that makes adversarial batches "
                            f"(classification, with nasplat.tasks.adversarial); give --strategy-option "
                            f"adversarial=none to train on clean ones")
        self._attacker = copy.copy(task)
        self._attacker.adversarial = self.adversarial
        self._size = task.input_size(1.0)

    def train_step(self, model: PathModel, optimizer: torch.optim.Optimizer, task: Any, x: torch.Tensor,
                   y: torch.Tensor) -> None:
        if self._attacker is not None:
            model.train()  # the attack sees the batch statistics the update will
            x = self._attacker.adversarial_batch(model, x, y, input_size=self._size)
        super().train_step(model, optimizer, task, x, y)
