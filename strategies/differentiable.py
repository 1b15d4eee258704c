"""DARTS and PC-DARTS: a softmax relaxation of each edge's operation choice, learnt by gradient descent.

The supernet's weights train on one half of the training split and its architecture parameters on the other
(DARTS's bi-level split), first order by default or second order (`order=2`). PC-DARTS sends 1/M of each
edge's channels through the operations and normalises the edges of each node. A MAC budget becomes an
expected-cost term on the architecture step, and the derived genotype is checked against it (and cheapened
op by op, least-weight first, if it is over). Needs a space with a supernet (nasplat.oneshot.OneShotSpace).
"""
from __future__ import annotations

from typing import Any

import torch

from nasplat.arch import Arch
from nasplat.constraints import limit_of
from nasplat.oneshot.bilevel import BilevelSearch
from nasplat.registry import register_strategy


@register_strategy("darts")
class DARTS(BilevelSearch):
    """DARTS: softmax-relaxed edges trained by gradient (first or second order), genotype derived from alphas."""

    def search(self, session: Any) -> Arch:
        torch.manual_seed(self.seed)
        supernet = self.space.supernet(partial_channels=self.partial_channels,
                                       edge_normalization=self.edge_normalization)
        limit = limit_of(self.constraints, "macs")
        penalty = (lambda: self.cost_weight * torch.relu(supernet.expected_cost() / limit - 1)) if limit else None
        self.train_supernet(session, supernet, epochs=self.search_epochs, warmup=self.warmup_epochs,
                            penalty=penalty, state=session.load(), description=f"{self.name} supernet")
        params, info = supernet.derive(max_skip=self.max_skip, limit=limit)
        self.derived = self.space.complete(params, constraints=self.constraints, costs=self.costs)
        session.log(f"derived: {self.space.describe(self.derived)}" + (f" ({info})" if info else ""))
        return self.derived


@register_strategy("pc-darts")
class PCDARTS(DARTS):
    """PC-DARTS: DARTS with 1/M of each edge's channels through its ops (M=4) and normalised edges."""

    partial_channels_default = 4
    edge_normalization_default = True
    arch_lr_default = 6e-4
