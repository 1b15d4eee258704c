"""One-shot checkpoint save: packed (nasplat.runner.oneshot.pack, one flat tensor per dtype) against torch.save
of the state as it is, side by side in one process.

The state is what cp-nas checkpoints after every sampled path: a binarized Child and a full-precision Parent
supernet on binary cells, both Adam optimizers after a step, the RNG state and the strategy's counters. The
tiny setting is the tests' (C=4, 3 cells); the benchmark setting is bench/oneshot_search.py's (C=8, 5 cells).
Each figure is the median of `--repeats` saves into memory (no disk, no fsync: what is timed is the
serialisation, which is what packing changes).

    .venv/bin/python bench/checkpoint.py      # about 20 seconds
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable

import torch
from results import write_section

from nasplat.registry import SPACES
from nasplat.runner.oneshot import pack, unpack

SECTION = "One-shot checkpoint save: packed against plain torch.save"
SETTINGS = {"tests' (C=4, 3 cells)": {"channels": 4, "layers": 3}, "benchmark's (C=8, 5 cells)": {"channels": 8, "layers": 5}}


def cp_nas_state(channels: int, layers: int) -> dict:
    space = SPACES.create("binary-cells", channels=channels, layers=layers, binarize="both")
    child = space.supernet(partial_channels=4)
    parent = space.supernet(partial_channels=4, binarize="none")
    optimizers = [torch.optim.Adam(net.weight_parameters(), lr=1e-3) for net in (child, parent)]
    x = torch.randn(8, 3, 32, 32)
    for net, opt in zip((child, parent), optimizers):
        net(x).sum().backward()
        opt.step()
    return {"child": child.state_dict(), "parent": parent.state_dict(),
            "optimizers": [opt.state_dict() for opt in optimizers], "rng": torch.get_rng_state(),
            "lifetime": {"normal": [[0.0, 0.0]] * 112}, "step": 10, "stream": 10}


def tensors_in(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, dict):
        return sum(tensors_in(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensors_in(v) for v in value)
    return 0


def save_seconds(saved: Callable[[], object], repeats: int) -> float:
    """Median seconds of torch.save(saved()), the call to `saved` included (packing happens there)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.save(saved(), io.BytesIO())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = ["| state | tensors | plain torch.save | packed (pack + torch.save) | packed / plain |", "|---|---:|---:|---:|---:|"]
    for name, options in SETTINGS.items():
        state = cp_nas_state(**options)
        skeleton, flat = pack(state)
        back = unpack(skeleton, flat)  # the round trip is exact
        assert all(torch.equal(v, back["child"][k]) for k, v in state["child"].items())
        plain = save_seconds(lambda: state, args.repeats)
        packed = save_seconds(lambda: dict(zip(("packed", "flat"), pack(state))), args.repeats)
        rows.append(f"| {name} | {tensors_in(state)} | {plain * 1e3:.0f} ms | {packed * 1e3:.0f} ms | "
                    f"**{packed / plain:.2f}x** |")
    text = "\n".join([f"cp-nas's checkpoint state (binarized Child, full-precision Parent, both Adam states, RNG, "
                      f"counters) on binary cells, one torch thread, median of {args.repeats} saves into memory.",
                      "", *rows, "", f"Load average (1 min) at the end: {os.getloadavg()[0]:.2f} on 2 CPUs."])
    write_section(SECTION, text, command="python bench/checkpoint.py")
    print(text)


if __name__ == "__main__":
    main()
