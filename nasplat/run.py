"""The run directory: resolved config, append-only journal, strategy snapshot, best bundle, report.

runs/<id>/config.json       the resolved SearchConfig (rerun it with --config)
runs/<id>/journal.jsonl     one JSON line per event, flushed and fsynced as written: the authoritative record
runs/<id>/state.json        the strategy's snapshot and the trials in flight, replaced atomically
runs/<id>/best/             bundle of the best feasible trial (export.py)
runs/<id>/report/           plots and summary.md (report.py)
"""
from __future__ import annotations

import datetime
import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .arch import Arch
from .constraints import Constraint
from .errors import UserError
from .files import write_atomic
from .strategy import Result, Trial


DEFAULT_TRIALS = 8  # trials of a search that names no number and no simulated budget
DEFAULT_REPEATED_FAILURES = 3  # trials in a row failed by the same exception that stop a search (a bug)
RUNNERS = ("local", "ray")
SCHEDULERS = (None, "asha")
CONVERTED = ("torchscript", "onnx")  # what best/ converts the trained model to (export.FILES), by default both
# the Ray runner's options and their defaults, which the local runner must be left with
_RAY_DEFAULTS = {"workers": None, "ray_address": None, "scheduler": None, "cpus_per_trial": 1.0,
                 "gpus_per_trial": 0.0, "max_retries": 2}


def default_trials(strategy: str, *, budget: float | None) -> int | None:
    """Trials of a search that names none: one for a one-shot strategy (its derived architecture), as many as a
    simulated budget allows, else DEFAULT_TRIALS."""
    from .registry import STRATEGIES

    if getattr(STRATEGIES.get(strategy), "one_shot", False):
        return 1
    return None if budget is not None else DEFAULT_TRIALS


class RunError(UserError):
    """A folder that is no run, or a run that cannot do what was asked (one line, for the CLI)."""


@dataclass
class SearchConfig:
    """Everything needed to run (or rerun) a search; config.json holds exactly this."""

    space: str
    strategy: str = "bayesian"
    task: str | None = None  # None: the space's default task
    constraints: list[Constraint] = field(default_factory=list)
    trials: int | None = DEFAULT_TRIALS  # None: until the budget or the timeout ends the search
    epochs: int | None = None  # None: the task's default
    timeout: float | None = None  # seconds; no new trial starts after it
    budget: float | None = None  # simulated seconds a tabular task may charge; the query that would cross it is not made
    seed: int = 0
    out: str = "runs"
    initial: list[dict[str, Any]] = field(default_factory=list)  # parameter sets evaluated first (--prior)
    space_options: dict[str, Any] = field(default_factory=dict)
    strategy_options: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)
    objectives: list[str] = field(default_factory=lambda: ["accuracy"])  # accuracy first; then costs to minimise
    latency: dict[str, Any] | None = None  # the latency Protocol, where a constraint or an objective needs it
    lut: str | None = None  # a latency lookup table (nasplat latency build-lut) to reject by before training
    # latency read, not measured: a device's column of a latency table ({"column": ..., "path": ... or None for
    # the default}, --device table:COLUMN), or a predictor fitted by `nasplat latency fit` (--predictor)
    device_table: dict[str, Any] | None = None
    predictor: str | None = None
    runner: str = "local"  # local: trials one at a time in this process; ray: on Ray Tune, in parallel
    workers: int | None = None  # ray: trials at a time (None: as many as the CPUs allow at cpus_per_trial)
    ray_address: str | None = None  # ray: join this cluster (auto, host:port, ray://host:port); None: start one
    scheduler: str | None = None  # ray: "asha" stops unpromising trials early (Tune's ASHA, per epoch)
    cpus_per_trial: float = 1.0  # ray: CPUs reserved per trial (and torch threads in it)
    gpus_per_trial: float = 0.0  # ray: GPUs reserved per trial
    max_retries: int = 2  # ray: a trial whose worker died is run again up to this many times
    export: list[str] = field(default_factory=lambda: list(CONVERTED))  # best/'s conversions, made at the end
    # the search stops when this many trials in a row fail with the same exception (0: never)
    max_repeated_failures: int = DEFAULT_REPEATED_FAILURES

    def __post_init__(self) -> None:
        from .cost.latency import Protocol
        from .strategy import check_objectives

        if self.trials is None and self.budget is None and self.timeout is None:
            raise UserError("a search without a number of trials needs a --budget or a --timeout to end it")
        self.objectives = list(check_objectives(self.objectives))
        read = [flag for flag, given in (("--device table:", self.device_table), ("--predictor", self.predictor))
                if given]
        if len(read) > 1:
            raise UserError("--device table:COLUMN and --predictor are two latency sources: give one")
        if read and (self.latency is not None or self.lut is not None):
            raise UserError(f"{read[0]} gives latency without measuring it: it takes no --runtime, --latency-batch, "
                            f"--latency-threads or --lut")
        if read and not self.needs_latency:
            raise UserError(f"{read[0]} is a latency source, but nothing asks for latency: add a limit "
                            f"(--latency 5ms) or --objective accuracy,latency")
        if self.latency is None and self.needs_latency and not read:
            self.latency = Protocol().to_dict()
        if self.latency is not None:
            self.latency = Protocol.from_dict(self.latency).to_dict()  # checks the device and runtime
        if self.lut is not None and self.latency is None:
            raise UserError("--lut predicts latency: give a --latency limit or --objective accuracy,latency too")
        self._check_runner()
        if self.max_repeated_failures < 0:
            raise UserError(f"--max-repeated-failures must be at least 0 (0: never stop), got "
                            f"{self.max_repeated_failures}")
        self.export = list(self.export)
        unknown = sorted(set(self.export) - set(CONVERTED))
        if unknown:
            raise UserError(f"--export {','.join(unknown)}: best/ always holds arch.json and the weights; choose "
                            f"its conversions among {', '.join(CONVERTED)}, or none")

    def _check_runner(self) -> None:
        if self.runner not in RUNNERS:
            raise UserError(f"unknown runner {self.runner!r}; use {' or '.join(RUNNERS)}")
        if self.runner == "local":
            given = [f"--{f.replace('_', '-')}" for f, default in _RAY_DEFAULTS.items() if getattr(self, f) != default]
            if given:
                raise UserError(f"{', '.join(given)} set(s) how trials run on Ray: add --runner ray")
            return
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"unknown scheduler {self.scheduler!r}; use {', '.join(s for s in SCHEDULERS if s)}")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        if not self.cpus_per_trial > 0 or self.gpus_per_trial < 0 or self.max_retries < 0:
            raise UserError(f"--cpus-per-trial must be above 0, --gpus-per-trial and --max-retries at least 0; got "
                            f"{self.cpus_per_trial:g}, {self.gpus_per_trial:g} and {self.max_retries}")
        if self.budget is not None:
            raise UserError("a simulated --budget charges queries one at a time in order: run it with the "
                            "local runner (table lookups take microseconds; Ray would not speed them up)")

    @property
    def needs_latency(self) -> bool:
        return "latency" in self.objectives or any(c.metric == "latency" for c in self.constraints)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["constraints"] = [c.to_dict() for c in self.constraints]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown config keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(data)
        values["constraints"] = [Constraint.from_dict(c) for c in values.get("constraints", [])]
        return cls(**values)


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The journal's events in order. A process killed while appending leaves a cut-off last line (maybe cut
    inside a UTF-8 character): it is skipped. Any other bad line raises, since what follows is untrustworthy."""
    lines = [(n, line) for n, line in enumerate(path.read_bytes().split(b"\n"), 1) if line.strip()] \
        if path.exists() else []
    events = []
    for index, (number, line) in enumerate(lines):
        try:
            event = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if index == len(lines) - 1:
                break
            raise RunError(f"{path} line {number} is not valid JSON ({exc}); only a cut-off last line is "
                           "tolerated, so the journal was damaged") from None
        if not (isinstance(event, dict) and "event" in event):
            raise RunError(f"{path} line {number} is not a journal event (a JSON object with \"event\")")
        events.append(event)
    return events


class RunDir:
    """`sync=False` skips the fsync of each journal line and snapshot: written and flushed, they still
    survive a kill -9 (the kernel holds them), only not an operating-system crash. For runs that are cheap
    to redo, where fsync would be most of the time per trial (a benchmark of table lookups)."""

    # the run folder this process created or opened last: where the CLI writes the traceback of a bug
    latest: ClassVar[Path | None] = None

    def __init__(self, path: Path, *, sync: bool = True):
        self.path = Path(path)
        self.sync = sync
        self.journal_path = self.path / "journal.jsonl"
        self.best = self.path / "best"
        self.report = self.path / "report"
        self._checked = False  # whether a torn last line of the journal was looked for

    @classmethod
    def create(cls, config: SearchConfig, *, sync: bool = True) -> RunDir:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(config.out) / f"{config.space}-{config.strategy}-{stamp}-{secrets.token_hex(2)}"
        path.mkdir(parents=True, exist_ok=False)
        run = cls(path, sync=sync)
        write_atomic(path / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        run.journal_path.touch()
        RunDir.latest = path
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(Path(path))
        if not run.path.is_dir():
            raise RunError(f"{path}: no such folder; give a run folder such as runs/<id>")
        for name in ("config.json", "journal.jsonl"):
            if not (run.path / name).is_file():
                raise RunError(f"{path} is not a nasplat run: it has no {name} (a run folder holds config.json "
                               f"and journal.jsonl)")
        RunDir.latest = run.path
        return run

    @property
    def id(self) -> str:
        return self.path.name

    def config(self) -> SearchConfig:
        try:
            return SearchConfig.from_dict(json.loads((self.path / "config.json").read_text()))
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
            raise RunError(f"{self.path / 'config.json'} is not a valid run configuration: {exc}") from None

    # -- journal ---------------------------------------------------------------------------------------
    def _cut_torn_line(self) -> None:
        """After a kill -9 mid-write the last line is cut off; appending to it would corrupt the next event."""
        with open(self.journal_path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)

    def append(self, event: Mapping[str, Any], *, durable: bool = True) -> None:
        """Appends one event and makes it durable before returning (a kill -9 never loses a told result).
        Without `durable` the line is flushed (a kill -9 keeps it) and the next durable one syncs it, since an
        fsync writes the whole file."""
        if not self._checked:
            self._cut_torn_line()
            self._checked = True
        line = json.dumps({**event, "time": round(time.time(), 3)}, separators=(",", ":"))
        with open(self.journal_path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            if self.sync and durable:
                os.fsync(fh.fileno())

    def events(self) -> list[dict[str, Any]]:
        return read_journal(self.journal_path)

    def asked(self, trial: Trial) -> None:
        """Journals an ask with no fsync of its own (one fewer per trial): the snapshot saved at the same ask,
        synced, holds the trial, and the result's sync covers this line."""
        self.append({"event": "ask", "trial": trial.id, "arch": trial.arch.to_dict()}, durable=False)

    def told(self, trial: Trial, result: Result) -> None:
        self.append({"event": "result", "trial": trial.id, "arch": trial.arch.to_dict(), **result.to_dict()})

    def results(self) -> dict[int, tuple[Trial, Result]]:
        """The finished trials, by id."""
        out = {}
        for event in self.events():
            if event.get("event") == "result":
                trial = Trial(int(event["trial"]), Arch.from_dict(event["arch"]))
                out[trial.id] = (trial, Result.from_dict(event))
        return out

    # -- strategy snapshot -----------------------------------------------------------------------------
    def save_state(self, strategy_state: Mapping[str, Any], pending: Sequence[Trial]) -> None:
        data = {"strategy": strategy_state, "pending": [{"id": t.id, "arch": t.arch.to_dict()} for t in pending]}
        write_atomic(self.path / "state.json", json.dumps(data), sync=self.sync)

    def load_state(self) -> tuple[dict[str, Any], list[Trial]] | None:
        path = self.path / "state.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return data["strategy"], [Trial(int(p["id"]), Arch.from_dict(p["arch"])) for p in data["pending"]]
