"""Operation-space reduction: sample single-path sub-networks, train them briefly, score, abandon the weakest.

CP-NAS (`cp-nas`) samples every remaining operation once per pass on every edge, trains a binarized Child and
a full-precision Parent of the same path, both inheriting the weights of their supernets, and scores each
operation with the indicator z = beta * (A_P - A_C) + A_C. The Child learns with the kernel-level child-parent
loss (its reconstructed kernels pulled toward the Parent's) and a centre loss on its last features. The
engine (nasplat.oneshot.reduction) abandons the lowest-scoring operation on every edge each round until one
is left; a node then keeps the two edges whose operations scored best over the search.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nasplat.arch import Arch
from nasplat.constraints import limit_of
from nasplat.errors import UserError
from nasplat.oneshot.contract import CellSpace
from nasplat.oneshot.cp_loss import CenterLoss, kernel_loss
from nasplat.oneshot.reduction import ReductionEngine, SoftmaxMeanScorer, UniformWithoutReplacement, cp_indicator
from nasplat.oneshot.single_path import PathModel, endless_batches
from nasplat.registry import register_strategy
from nasplat.strategy import OneShotStrategy

Path = dict[str, tuple[int, ...]]


class Features:
    """Captures the input of a network's classifier (its last linear layer): the features of the centre loss."""

    def __init__(self, model: nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("CP-NAS's centre loss needs a network that ends in a linear classifier")
        self.value: torch.Tensor | None = None
        self.dim = linears[-1].in_features
        linears[-1].register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.value = inputs[0]


@register_strategy("cp-nas")
class CPNAS(OneShotStrategy):
    """CP-NAS: binarized Child and full-precision Parent of each sampled path; abandon ops by z = b(A_P-A_C)+A_C."""

    space_contract = CellSpace

    def __init__(self, space: Any, *, repeats: int = 1, train_steps: int = 20, warmup_steps: int = 100,
                 batch_size: int = 64, lr: float = 1e-3, beta: float = 1.0, kernel_weight: float = 1e-2,
                 center_weight: float = 1e-3, partial_channels: int = 4, eval_limit: int | None = 500,
                 max_skip: int | None = 2, **common: Any):
        super().__init__(space, **common)
        if repeats < 1 or train_steps < 1 or warmup_steps < 0:
            raise UserError("repeats and train_steps must be at least 1, warmup_steps at least 0")
        self.repeats, self.train_steps, self.warmup_steps = repeats, train_steps, warmup_steps
        self.batch_size, self.lr, self.beta = batch_size, lr, beta
        self.kernel_weight, self.center_weight = kernel_weight, center_weight
        self.partial_channels, self.eval_limit, self.max_skip = partial_channels, eval_limit, max_skip

    @classmethod
    def check_space(cls, space: Any) -> None:
        super().check_space(space)
        if "binarize" not in space.options:
            raise UserError(f"cp-nas trains a binarized Child against a full-precision Parent, and space "
                            f"{space.name!r} has no binarization: search binary-cells, or use another one-shot "
                            f"strategy here (pc-darts searches every space with a supernet)")
        if space.options["binarize"] == "none":
            raise UserError("cp-nas trains a binarized Child against a full-precision Parent: give the space a "
                            "binarization (--space-option binarize=both, or weights)")

    def search(self, session: Any) -> Arch:
        task = session.task
        device = getattr(task, "device", "cpu")
        torch.manual_seed(self.seed)
        child = self.space.supernet(partial_channels=self.partial_channels).to(device)
        parent = self.space.supernet(partial_channels=self.partial_channels, binarize="none").to(device)
        # the same starting kernels (the Child has extra BNs between its binarized convolutions)
        parent.load_state_dict(child.state_dict(), strict=False)
        groups = {name: len(alpha) for name, alpha in child.alphas.items()}
        engine = ReductionEngine(groups=groups, ops=child.ops, sampler=UniformWithoutReplacement(),
                                 scorer=SoftmaxMeanScorer(), repeats=self.repeats, seed=self.seed)
        optimizers = [torch.optim.Adam(net.weight_parameters(), lr=self.lr) for net in (child, parent)]
        features = Features(child)
        center = CenterLoss(task.num_classes, features.dim, weight=self.center_weight).to(device)
        lifetime: dict[str, list[list[float]]] = {g: [[0.0, 0.0] for _ in range(n * len(child.ops))]
                                                   for g, n in groups.items()}  # (sum of z, count) per edge-op
        step, stream = 0, 0
        state = session.load()
        if state is not None:
            child.load_state_dict(state["child"])
            parent.load_state_dict(state["parent"])
            for opt, saved in zip(optimizers, state["optimizers"]):
                opt.load_state_dict(saved)
            center.load_state_dict(state["center"])
            engine.restore(state["engine"])
            lifetime, step, stream = state["lifetime"], state["step"], state["stream"]
            torch.set_rng_state(state["rng"])
        size = task.input_size(1.0)

        def train(path: Path | None, steps: int) -> None:
            """`steps` batches on `path` (random paths when None); the n-th call of the search draws the n-th
            data stream, so a resumed search trains on exactly the batches an unbroken one would."""
            nonlocal stream
            seed = self.seed * 7919 + stream * 104_729
            rng = torch.Generator().manual_seed(seed)
            batches = endless_batches(task, size=size, batch_size=self.batch_size, seed=seed)
            for _ in range(steps):
                x, y = next(batches)
                sampled = path or {g: tuple(int(i) for i in torch.randint(len(child.ops), (n,), generator=rng))
                                   for g, n in groups.items()}
                self.train_step(child, parent, optimizers, center, features, task, sampled, x, y)
            stream += 1

        total = self.warmup_steps + self._samples(engine)
        done = min(step, self.warmup_steps) + sum(1 for e in session.run.events()
                                                  if e.get("event") == "supernet" and "indicator" in e)
        with session.progress(total=total, completed=done, description=f"{self.name} rounds") as advance:
            if step == 0 and self.warmup_steps:
                train(None, self.warmup_steps)  # uniform random paths: no op is judged untrained
                step = 1
                session.save(self._state(child, parent, optimizers, center, engine, lifetime, step, stream),
                             step=step, events=[{"warmup_steps": self.warmup_steps}])
                for _ in range(self.warmup_steps):
                    advance()
            while (path := engine.ask()) is not None:
                round_ = engine.round
                train(path, self.train_steps)
                a_child = task.evaluate(PathModel(child, path), input_size=size, limit=self.eval_limit)["accuracy"]
                a_parent = task.evaluate(PathModel(parent, path), input_size=size, limit=self.eval_limit)["accuracy"]
                z = cp_indicator(a_parent, a_child, beta=self.beta)
                engine.tell(path, z)
                for group, ops in path.items():
                    for edge, op in enumerate(ops):
                        cell = lifetime[group][edge * len(child.ops) + op]
                        cell[0] += z
                        cell[1] += 1
                step += 1
                event = {"round": round_, "path": {g: list(p) for g, p in path.items()},
                         "child_accuracy": a_child, "parent_accuracy": a_parent, "indicator": z}
                if engine.round != round_:
                    event["abandoned"] = [h for h in engine.history if h.get("round") == round_]
                session.save(self._state(child, parent, optimizers, center, engine, lifetime, step, stream),
                             step=step, events=[event])
                advance()
        weights = {g: torch.zeros(n, len(child.ops)) for g, n in groups.items()}
        for group, edges in engine.remaining().items():
            for edge, ops in enumerate(edges):
                for op in ops:
                    z_sum, count = lifetime[group][edge * len(child.ops) + op]
                    weights[group][edge, op] = max(z_sum / max(count, 1), 1e-6)
        params, info = self.space.derive(weights, None, max_skip=self.max_skip,
                                         limit=limit_of(self.constraints, "macs"))
        self.derived = self.space.complete(params, constraints=self.constraints, costs=self.costs)
        session.log(f"derived: {self.space.describe(self.derived)}" + (f" ({info})" if info else ""))
        return self.derived

    def _samples(self, engine: ReductionEngine) -> int:
        """Sampled paths of the whole search: repeats x (K + (K-1) + ... + 2) with K ops per edge."""
        k = len(engine.ops)
        return self.repeats * sum(range(2, k + 1))

    def train_step(self, child: nn.Module, parent: nn.Module, optimizers: list[torch.optim.Optimizer],
              center: CenterLoss, features: Features, task: Any, path: Path, x: torch.Tensor,
              y: torch.Tensor) -> None:
        """One batch for both: the Parent on cross-entropy, the Child on cross-entropy plus the kernel-level
        child-parent loss and the centre loss (each left out when its weight is 0)."""
        child.train()
        parent.train()
        parent_loss = task.loss(parent(x, path=path), y)
        child_loss = task.loss(child(x, path=path), y)
        if self.kernel_weight:
            child_loss = child_loss + kernel_loss(child, parent, weight=self.kernel_weight)
        if self.center_weight and features.value is not None:
            child_loss = child_loss + center(features.value.flatten(1), y)
        for opt, loss, net in zip(optimizers, (child_loss, parent_loss), (child, parent)):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
            opt.step()

    def _state(self, child: nn.Module, parent: nn.Module, optimizers: list[torch.optim.Optimizer],
               center: CenterLoss, engine: ReductionEngine, lifetime: Any, step: int, stream: int) -> dict[str, Any]:
        return {"child": child.state_dict(), "parent": parent.state_dict(),
                "optimizers": [o.state_dict() for o in optimizers], "center": center.state_dict(),
                "engine": engine.state(), "lifetime": lifetime, "step": step, "stream": stream,
                "rng": torch.get_rng_state()}
