"""What the one-shot benchmarks share: searches started once, resumed after a kill and reused once derived,
and retrainings whose metrics are kept in a file each, so that a rerun skips what is done."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasplat import api
from nasplat.run import SearchConfig, read_journal


def derived_events(config: SearchConfig) -> list[dict[str, Any]]:
    """The journal of the search `config` describes in its `out` folder, run to its derived architecture:
    started when the folder holds no run, resumed when its run has not derived yet, else read as it is."""
    out = Path(config.out)
    runs = sorted(out.glob("*")) if out.exists() else []
    if not runs:
        api.start(config)
    elif not any(e["event"] == "derived" for e in read_journal(runs[-1] / "journal.jsonl")):
        api.resume(runs[-1])
    return read_journal(sorted(out.glob("*"))[-1] / "journal.jsonl")


def search_seconds(events: list[dict[str, Any]]) -> float:
    """Wall time from each session's start to its last event, until the derived genotype (a killed session's
    time after its last checkpoint is lost, and redone by the next)."""
    total, start, last = 0.0, None, None
    for event in events:
        if event["event"] == "start":
            if start is not None:
                total += last - start
            start = event["time"]
        last = event["time"]
        if event["event"] == "derived":
            break
    return total + (last - start if start is not None else 0.0)


def cached_metrics(cache: Path, train: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """`train()`'s metrics, kept in `cache` (JSON) and read from it when it exists; and whether they were
    just computed."""
    if cache.exists():
        return json.loads(cache.read_text()), False
    metrics = train()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(metrics))
    return metrics, True
