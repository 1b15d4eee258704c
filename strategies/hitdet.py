"""Hit-Detector's two stages (Guo et al., CVPR 2020) on the hitdet space: screening, then the trinity search.

1. Screening: for each searched component (backbone, neck, head) in turn, a supernet whose slots of that
   component mix every candidate op, the other components held at the FPN baseline's ops, is trained
   bi-level (DARTS, first order) with a group-sparsity penalty on its architecture step:
   mu x sum over ops of the l2 norm, across the component's slots, of that op's softmax weights. Each slot's
   weights sum to one, so the sum is at least sqrt(slots), reached when every slot weighs the ops alike, and
   it grows as slots spread their weight over different ops: as the detection loss sharpens the slots'
   choices, the penalty makes them share ops, and the ops no slot shares fade together (one group per op).
   The top `keep_<component>` ops by that norm survive. (The paper's exact norm and mu are not public,
   research/methods.md §4.1; a norm of the raw alphas, as it reads, would change without changing what
   softmax makes of them, so this one penalises the weights the supernet actually uses.)
2. Joint search: one supernet over the screened sub-spaces of all searched components, trained bi-level
   with gamma x expected MACs / reference added to the architecture loss (the reference is the MAC limit when
   --flops is given, else the supernet's expected MACs at the start), plus DARTS's budget penalty when a
   limit is given. The argmax per slot is derived; while it is over the MAC limit or the --latency one (its
   latency measured by the search's cost model, on the target device), slots are cheapened one op at a time,
   least softmax weight lost first.

`components=backbone` searches only the backbone under the fixed FPN neck and head (the paper's baseline).
Every epoch of every stage is checkpointed: a killed search resumes in the stage and epoch it reached.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from nasplat.arch import Arch
from nasplat.constraints import limit_of
from nasplat.errors import UserError
from nasplat.oneshot.bilevel import BilevelSearch
from nasplat.oneshot.contract import OneShotSpace
from nasplat.registry import register_strategy

COMPONENTS = ("backbone", "neck", "head")  # the trinity of the keep_* options; a DetectorSpace's component_ops
KEEP = {"backbone": 8, "neck": 8, "head": 6}  # the released sub-spaces' sizes (methods.md §4.2)


class DetectorSpace(OneShotSpace, Protocol):
    """A detector whose backbone, neck and head are searched slot by slot (the hitdet space)."""

    component_ops: Mapping[str, Sequence[str]]  # per component, the ops its slots choose from

    def component_slots(self, component: str) -> tuple[str, ...]:
        """The slots of a component, asked when the kept ops are widened to meet a MAC limit."""

    def candidates(self, ops: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
        """Per slot, the ops of its component in `ops` (the other components fixed at the FPN baseline): what
        `supernet(candidates=)` and `smallest(candidates=)` take, at each stage."""

    @property
    def op_costs(self) -> Mapping[str, Any]:
        """Per slot, op -> MACs at the target (and "fixed": what no choice changes)."""

    def smallest(self, *, candidates: Mapping[str, Sequence[str]] | None = None) -> Arch:
        """The cheapest detector over `candidates`: whether the screened ops can meet a MAC limit at all."""

    def cost(self, arch: Arch) -> float:
        """The MACs of a detector."""


@register_strategy("hitdet")
class HitDetector(BilevelSearch):
    """Screening of per-component sub-spaces, then a joint differentiable search with a cost term.

    Options: `components` ("backbone,neck,head", or a subset: the others stay fixed at FPN), `screen_epochs`
    (per component), `sparsity` (mu, the group-sparsity weight), `keep_backbone` / `keep_neck` / `keep_head`
    (ops kept per component), `gamma` (the cost term's weight), and DARTS's (`search_epochs` for the joint
    stage, `warmup_epochs` of both stages, learning rates, `batch_size`, `eval_limit`).
    """

    space_contract = DetectorSpace

    def __init__(self, space: Any, *, components: str = ",".join(COMPONENTS), screen_epochs: int = 4,
                 sparsity: float = 0.05, keep_backbone: int = KEEP["backbone"], keep_neck: int = KEEP["neck"],
                 keep_head: int = KEEP["head"], gamma: float = 0.02, search_epochs: int = 6,
                 warmup_epochs: int | None = 1, arch_lr: float | None = 3e-3, **options: Any):
        super().__init__(space, search_epochs=search_epochs, warmup_epochs=warmup_epochs, arch_lr=arch_lr,
                         **options)
        chosen = tuple(c.strip() for c in components.split(",") if c.strip()) if isinstance(components, str) \
            else tuple(components)
        unknown = sorted(set(chosen) - set(COMPONENTS))
        if unknown or not chosen:
            raise UserError(f"components={components!r}: choose one or more of {', '.join(COMPONENTS)}")
        self.components = tuple(c for c in COMPONENTS if c in chosen)
        keep = {"backbone": keep_backbone, "neck": keep_neck, "head": keep_head}
        for component, k in keep.items():
            if not 1 <= k <= len(space.component_ops[component]):
                raise UserError(f"keep_{component}={k}: keep between 1 and {len(space.component_ops[component])} ops")
        if screen_epochs < 1 or sparsity < 0 or gamma < 0:
            raise UserError(f"screen_epochs must be at least 1 and sparsity, gamma non-negative; got "
                            f"{screen_epochs}, {sparsity}, {gamma}")
        self.keep = keep
        self.screen_epochs = screen_epochs
        self.sparsity = sparsity
        self.gamma = gamma
        self.warmup_epochs = min(self.warmup_epochs, screen_epochs - 1, search_epochs - 1)

    def search(self, session: Any) -> Arch:
        state = session.load() or {}
        screened: dict[str, list[str]] = dict(state.get("screened", {}))
        for index, component in enumerate(self.components):
            if component in screened:
                continue
            torch.manual_seed(self.seed + index)
            ops = self.space.component_ops[component]
            supernet = self.space.supernet(candidates=self.space.candidates({component: ops}))
            stage = f"screen {component}"
            self.train_supernet(session, supernet, epochs=self.screen_epochs, warmup=self.warmup_epochs,
                                penalty=lambda net=supernet, c=component: self.sparsity * torch.stack(
                                    list(net.group_norms(c).values())).sum(),
                                state=state if state.get("stage") == stage else None, description=stage,
                                first_step=index * (self.screen_epochs + 1), keep={"stage": stage, "screened": screened})
            norms = {op: float(v.detach()) for op, v in supernet.group_norms(component).items()}
            screened[component] = sorted(norms, key=norms.get, reverse=True)[:self.keep[component]]
            state = {"stage": "screened", "screened": screened}
            session.save(state, step=(index + 1) * (self.screen_epochs + 1),  # a step of its own
                         events=[{"stage": stage, "screened": component, "kept": screened[component],
                                  "group_norms": {op: round(v, 4) for op, v in norms.items()}}])
            session.log(f"screened {component}: kept {', '.join(screened[component])}")
        limit = limit_of(self.constraints, "macs")
        screened = self._fitting(screened, limit, session)
        self.screened = screened
        torch.manual_seed(self.seed + len(COMPONENTS))
        supernet = self.space.supernet(candidates=self.space.candidates(screened))
        with torch.no_grad():
            reference = limit or float(supernet.expected_cost())

        def penalty() -> torch.Tensor:
            expected = supernet.expected_cost()
            charged = self.gamma * expected / reference
            return charged + self.cost_weight * torch.relu(expected / limit - 1) if limit else charged

        self.train_supernet(session, supernet, epochs=self.search_epochs, warmup=self.warmup_epochs, penalty=penalty,
                            state=state if state.get("stage") == "joint" else None, description="joint",
                            first_step=len(self.components) * (self.screen_epochs + 1),
                            keep={"stage": "joint", "screened": screened})
        params, info = supernet.derive(limit=limit, fits=self._latency_fits())
        self.derived = self.space.complete(params, constraints=self.constraints, costs=self.costs)
        session.log(f"derived: {self.space.describe(self.derived)}" + (f" ({info})" if info else ""))
        return self.derived

    def _fitting(self, screened: dict[str, list[str]], limit: float | None, session: Any) -> dict[str, list[str]]:
        """`screened`, with each component's cheapest op added where the cheapest detector the kept ops allow
        breaks the MAC limit: screening ranks ops by weight, not cost, and the derivation can only cheapen within
        the kept ops (a tiny search kept only the costliest neck ops and ended with no feasible detector)."""
        if limit is None or self.space.cost(self.space.smallest(candidates=self.space.candidates(screened))) <= limit:
            return screened
        costs = self.space.op_costs
        widened = {}
        for component, ops in screened.items():
            slots = self.space.component_slots(component)
            cheapest = min(self.space.component_ops[component], key=lambda op: sum(costs[s][op] for s in slots))
            widened[component] = ops if cheapest in ops else [*ops, cheapest]
        session.log(f"the kept ops cannot meet {limit / 1e6:.1f}M MACs: added each component's cheapest op ("
                    + ", ".join(f"{c}: {ops[-1]}" for c, ops in widened.items() if ops != screened[c]) + ")")
        return widened

    def _latency_fits(self) -> Callable[[dict[str, str]], bool] | None:
        """Whether a choice of ops meets --latency, measured (or looked up) on the target device by the
        search's cost model; None without a latency limit."""
        latency = limit_of(self.constraints, "latency")
        if latency is None or self.costs is None or "latency" not in self.costs.metrics:
            return None
        return lambda chosen: self.costs(self.space, self.space.arch(chosen))["latency"] <= latency
