"""NAS-Bench-201's CIFAR-10 (train/valid) table as a task: the `nasbench201` space's default.

A query answers from the benchmark's table, keyed by the space's cell string, with the published
protocol: strategies see the 12-epoch validation accuracy, the 200-epoch figures are only reported, and a
query is charged 12 epochs of training plus one evaluation in simulated seconds.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..registry import register_task
from .tabular import TableTask

SHIPPED_TABLE = Path(__file__).parent.parent / "data" / "nasbench201" / "cifar10-valid.csv"


@register_task("nasbench201")
class NasBench201Table(TableTask):
    """NAS-Bench-201 CIFAR-10 (train/valid) from its table: 12-epoch signal, 200-epoch accuracy reported."""

    default_epochs = 12  # the published protocol: a query costs 12 epochs of training plus one evaluation

    def __init__(self, *, table: str | Path = SHIPPED_TABLE, signal: str = "valid_acc_12ep",
                 report: str | Sequence[str] = ("valid_acc_200ep", "test_acc_200ep"),
                 time_columns: str | Sequence[str] = ("train_seconds_per_epoch", "eval_seconds")):
        super().__init__(table=table, key="arch", signal=signal, report=report, time_columns=time_columns)
