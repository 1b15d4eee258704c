"""`nasplat search`: a search from flags, a run's config.json (--config), or a killed run (--resume).

A search stopped by a repeated exception (`--max-repeated-failures`) ends with one line naming it and the
file of its traceback, and exit code 1.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..constraints import Constraint
from ..run import DEFAULT_REPEATED_FAILURES, DEFAULT_TRIALS, SearchConfig, default_trials
from ..units import format_count, format_time, parse_time
from .options import (Options, UsageError, comma_separated, console, decimal, device_table_option, option,
                      positive_int, print_error, whole_number)

# the flags of the Ray runner; any of them given without --runner selects it
_RAY_FLAGS = ("workers", "ray_address", "scheduler", "cpus_per_trial", "gpus_per_trial", "max_retries")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    s = sub.add_parser("search", help="search a space for the best architecture under constraints")
    s.add_argument("space", nargs="?", help="search space (see `nasplat list`)")
    s.add_argument("--strategy", default="bayesian", help="search strategy (default: bayesian)")
    s.add_argument("--sampler", help="bayesian only: tpe | gp | cmaes | nsga2 | random (default tpe)")
    s.add_argument("--flops", help="MAC budget, e.g. 24M (the papers' FLOPs; fvcore conv/linear/matmul MACs; for "
                                   "binarized spaces full-precision MACs + BOPs/64, the binary-network papers' rule)")
    s.add_argument("--params", help="parameter budget, e.g. 3M")
    s.add_argument("--latency", help="latency limit on --device at batch --latency-batch, e.g. 5ms; checked before "
                                     "training (predicted with --lut, else measured) and measured on the result; "
                                     "with --device table:COLUMN also pNN, the NN-th percentile of the column")
    s.add_argument("--objective", default="accuracy",
                   help="accuracy, or accuracy plus costs to minimise, e.g. accuracy,latency: best/ holds the most "
                        "accurate feasible architecture, report/pareto/ the front (bayesian and random)")
    s.add_argument("--device", help="where latency is measured: cpu (default), cuda, cuda:N, or ray:<resource>[:cuda] "
                                    "(a Ray task on the node started with that custom resource); or table:COLUMN, "
                                    "a device's column of a latency table (read, not measured)")
    s.add_argument("--latency-table", help="the CSV table of --device table:COLUMN (default: the search's own table "
                                           "where it has the column, else the one the space ships)")
    s.add_argument("--predictor", help="a predictor from `nasplat latency fit`: the latency source of the search "
                                       "(its figures are final: nothing is measured here)")
    s.add_argument("--runtime", choices=["torch", "onnxruntime"], help="what runs the model for latency "
                                                                     "(default torch)")
    s.add_argument("--latency-batch", type=positive_int, help="batch size of latency measurements (default 1)")
    s.add_argument("--latency-threads", type=positive_int, help="CPU threads of latency measurements (default 1)")
    s.add_argument("--lut", help="a latency table from `nasplat latency build-lut`: rejects by predicted latency "
                                 "before training")
    s.add_argument("--train-device", help="where trials train: cpu (default) or cuda")
    s.add_argument("--trials", type=positive_int,
                   help=f"evaluated trials (default {DEFAULT_TRIALS}; under --budget, as many as it allows)")
    s.add_argument("--epochs", type=positive_int, help="epochs per trial (default: the task's)")
    s.add_argument("--timeout", help="no new trial after this long, e.g. 10min; a --resume gets the time its run had left")
    s.add_argument("--budget", help="simulated time a tabular task may charge, e.g. 12000s; the query that "
                                    "would cross it is not made")
    s.add_argument("--task", help="proxy task (default: the space's; `nasplat list` shows them)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data", help="data source: synthetic (default), cifar10:PATH, folder:PATH")
    s.add_argument("--out", help="where run folders go (default runs/)")
    s.add_argument("--config", help="rerun from a run's config.json")
    s.add_argument("--resume", help="continue a killed or interrupted run folder")
    s.add_argument("--prior", help="a formula.json from `nasplat formula`: its prediction is evaluated first")
    for kind, example in (("space", "channels=16"), ("strategy", "order=2"), ("task", "limit_train=2000")):
        s.add_argument(f"--{kind}-option", type=option, action=Options, default={}, metavar="KEY=VALUE",
                       help=f"an option of the {kind}, e.g. {example}; repeatable (`nasplat list` names them)")
    s.add_argument("--export", type=_export_formats,
                   help="what best/ converts its trained model to at the end, besides arch.json and the weights: "
                        "torchscript,onnx (default), torchscript, onnx or none (`nasplat export` converts later)")
    s.add_argument("--max-repeated-failures", type=whole_number(0), default=DEFAULT_REPEATED_FAILURES,
                   metavar="N", help=f"stop the search when N trials in a row fail with the same exception (a bug "
                                     f"rather than a bad architecture; default {DEFAULT_REPEATED_FAILURES}, 0: never)")
    s.add_argument("--dry-run", action="store_true", help="space size, cost range, time estimate; no training")
    s.add_argument("--runner", choices=["local", "ray"], help="local: trials one at a time in this process "
                                                              "(default); ray: in parallel on Ray Tune")
    s.add_argument("--workers", type=positive_int, help="ray: trials at a time (default: as many as the CPUs "
                                                         "allow); without --ray-address, on a Ray instance "
                                                         "started for the search")
    s.add_argument("--ray-address", help="ray: join this cluster instead: auto, host:port (from `ray start "
                                         "--head`) or ray://host:port")
    s.add_argument("--scheduler", choices=["asha"], help="ray: asha stops unpromising trials at an epoch "
                                                         "(Ray Tune's ASHA on the per-epoch accuracy)")
    s.add_argument("--cpus-per-trial", type=decimal(0, above=True), help="ray: CPUs (and torch threads) per "
                                                                        "trial (default 1)")
    s.add_argument("--gpus-per-trial", type=decimal(0, above=False), help="ray: GPUs per trial (default 0)")
    s.add_argument("--max-retries", type=whole_number(0), help="ray: times a trial whose worker died is run "
                                                               "again (default 2)")
    return s


def _export_formats(text: str) -> list[str]:
    """--export's comma-separated list; "none" is the empty one (SearchConfig checks the names)."""
    names = comma_separated(text)
    return [] if names == ["none"] else names


def _runner_options(args: argparse.Namespace) -> dict[str, object]:
    given = {name: getattr(args, name) for name in _RAY_FLAGS if getattr(args, name) is not None}
    return {"runner": args.runner or ("ray" if given else "local"), **given}


def _config_from_args(args: argparse.Namespace) -> SearchConfig:
    if args.config:
        path = Path(args.config)
        try:
            config = SearchConfig.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UsageError(f"--config {path}: no such file (give a run's config.json)") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"--config {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        config.out = args.out or config.out
        return config
    if not args.space:
        raise UsageError("name a search space (nasplat search SPACE ...), or give --config or --resume; "
                         "`nasplat list` shows the spaces")
    table = device_table_option(args)
    constraints = [Constraint.parse(m, v) for m, v in (("macs", args.flops), ("params", args.params)) if v]
    if args.latency:
        from ..runner.components import latency_limit

        constraints.append(latency_limit(args.latency, space=args.space, space_options=args.space_option, table=table,
                                         task=args.task, task_options=args.task_option))
    objectives = comma_separated(args.objective)
    device = None if table else args.device
    protocol = {k: v for k, v in (("device", device), ("runtime", args.runtime), ("batch", args.latency_batch),
                                  ("threads", args.latency_threads)) if v is not None}
    if (protocol or args.lut) and not table and not args.predictor and not args.latency and \
            "latency" not in objectives:
        given = ", ".join(f"--{k.replace('batch', 'latency-batch').replace('threads', 'latency-threads')}"
                          for k in protocol) or "--lut"
        raise UsageError(f"{given} set(s) how latency is measured, but nothing asks for latency: add a limit "
                         f"(--latency 5ms) or --objective accuracy,latency")
    task_options = {**args.task_option, **{k: v for k, v in (("data", args.data), ("device", args.train_device)) if v}}
    strategy_options = {**args.strategy_option, **({"sampler": args.sampler} if args.sampler else {})}
    initial = []
    if args.prior:
        from ..formula import Formula

        initial = Formula.load(args.prior).initial_points(args.space, constraints)
    budget = parse_time(args.budget, what="--budget") if args.budget else None
    trials = args.trials if args.trials is not None else default_trials(args.strategy, budget=budget)
    return SearchConfig(space=args.space, strategy=args.strategy, task=args.task, constraints=constraints,
                        trials=trials, epochs=args.epochs, timeout=parse_time(args.timeout, what="--timeout")
                        if args.timeout else None, budget=budget, seed=args.seed, out=args.out or "runs",
                        initial=initial, strategy_options=strategy_options, task_options=task_options,
                        space_options=args.space_option,
                        objectives=objectives, latency=protocol or None, lut=args.lut, device_table=table,
                        predictor=args.predictor, max_repeated_failures=args.max_repeated_failures,
                        **_runner_options(args),
                        **({"export": args.export} if args.export is not None else {}))


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..report import summary_text
    from ..runner.driver import RepeatedFailure

    try:
        if args.resume:
            outcome = api.resume(args.resume, console=console)
        else:
            config = _config_from_args(args)
            if args.dry_run:
                return _print_dry_run(config)
            outcome = api.start(config, console=console)
    except RepeatedFailure as exc:
        print_error(str(exc), label="search stopped")
        return 1
    print(summary_text(outcome.run.path))
    return 130 if outcome.reason == "interrupted" else 0


def _grouped(parameters: dict[str, str]) -> str:
    """Parameters that take the same values are listed once ("b0, b1, h0 {...}"): a space of many alike
    positions (hitdet's 18 slots over one block zoo) would otherwise print its vocabulary at each."""
    names: dict[str, list[str]] = {}
    for name, values in parameters.items():
        names.setdefault(str(values), []).append(name)
    return ", ".join(f"{', '.join(group)} {values}" for values, group in names.items())


def _print_dry_run(config: SearchConfig) -> int:
    from .. import api

    dry = api.dry_run(config)
    size = "continuous" if dry.space_size == float("inf") else f"{dry.space_size:.4g} architectures"
    print(f"space {config.space}: {size}; searched: " + _grouped(dry.parameters))
    print("constraints: " + (", ".join(str(c) for c in config.constraints) or "none"))
    print(f"smallest architecture: MACs {format_count(dry.smallest['macs'])}, "
          f"params {format_count(dry.smallest['params'])}")
    print(f"random samples: MACs {format_count(dry.macs_range[0])}-{format_count(dry.macs_range[1])}, "
          f"params {format_count(dry.params_range[0])}-{format_count(dry.params_range[1])}, "
          f"{dry.feasible_share:.0%} feasible")
    if dry.seconds_per_trial is not None:
        print(f"estimated time: {config.trials} trials x ~{format_time(dry.seconds_per_trial)} = "
              f"~{format_time(config.trials * dry.seconds_per_trial)}")
    return 0
