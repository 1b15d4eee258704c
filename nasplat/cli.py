"""The `nasplat` command: search, export, retrain, formula, bench, show, list.

Bad input gets one line on stderr and exit code 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from .constraints import Constraint
from .run import DEFAULT_TRIALS, RunDir, RunError, SearchConfig, default_trials
from .units import format_count, format_time, parse_time

console = Console(stderr=True, highlight=False)


class UsageError(ValueError):
    """Bad input found by the CLI itself."""


def _error(message: str) -> None:
    """One line on stderr, never wrapped: scripts grep it."""
    sys.stderr.write(f"nasplat: error: {' '.join(message.split())}\n")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _error(f"{message} (see `{self.prog} --help`)")
        raise SystemExit(2)


# flags whose values may start with '-' (a negative budget is bad input to report, not an unknown option)
_VALUE_FLAGS = ("--flops", "--params", "--latency", "--timeout", "--budget", "--seed")


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    for token in argv:
        if out and out[-1] in _VALUE_FLAGS and token.startswith("-") and token[1:2].isdigit():
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


_positive_int = whole_number(1)


def decimal(minimum: float, *, above: bool) -> Callable[[str], float]:
    """An argparse type: a number above `minimum` (`above`), or at least it."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > minimum if above else value >= minimum) or value != value:
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {minimum:g}, got {text}")
        return value
    return parse


# the flags of the Ray runner; any of them given without --runner selects it
_RAY_FLAGS = ("workers", "ray_address", "scheduler", "cpus_per_trial", "gpus_per_trial", "max_retries")


def _export_formats(text: str) -> list[str]:
    """--export's comma-separated list; "none" is the empty one (SearchConfig checks the names)."""
    names = [f.strip() for f in text.split(",") if f.strip()]
    return [] if names == ["none"] else names


def option(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value read as JSON where it is JSON (8, 0.5, true, [1, 2]) and as a string otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. channels=16)")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


class _Options(argparse.Action):
    """Collects repeated KEY=VALUE flags into one dict."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        getattr(namespace, self.dest).update([values])


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
    table = _device_table(args)
    constraints = [Constraint.parse(m, v) for m, v in (("macs", args.flops), ("params", args.params)) if v]
    if args.latency:
        from .runner.components import latency_limit

        constraints.append(latency_limit(args.latency, space=args.space, space_options=args.space_option, table=table,
                                         task=args.task, task_options=args.task_option))
    objectives = [o.strip() for o in args.objective.split(",") if o.strip()]
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
        from .formula import Formula

        initial = Formula.load(args.prior).initial_points(args.space, constraints)
    budget = parse_time(args.budget, what="--budget") if args.budget else None
    trials = args.trials if args.trials is not None else default_trials(args.strategy, budget=budget)
    return SearchConfig(space=args.space, strategy=args.strategy, task=args.task, constraints=constraints,
                        trials=trials, epochs=args.epochs, timeout=parse_time(args.timeout, what="--timeout")
                        if args.timeout else None, budget=budget, seed=args.seed, out=args.out or "runs",
                        initial=initial, strategy_options=strategy_options, task_options=task_options,
                        space_options=args.space_option,
                        objectives=objectives, latency=protocol or None, lut=args.lut, device_table=table,
                        predictor=args.predictor, **_runner_options(args),
                        **({"export": args.export} if args.export is not None else {}))


def _device_table(args: argparse.Namespace) -> dict[str, Any] | None:
    """--device table:COLUMN [--latency-table CSV] as the config holds it."""
    from .cost.device_table import PREFIX

    if args.device and args.device.startswith(PREFIX):
        column = args.device[len(PREFIX):]
        if not column:
            raise UsageError("--device table: needs a column, e.g. table:lat_pixel3 (`nasplat list` names the "
                             "latency tables the spaces ship)")
        return {"column": column, "path": args.latency_table}
    if args.latency_table:
        raise UsageError("--latency-table is read by --device table:COLUMN: name the device's column too")
    return None


def cmd_search(args: argparse.Namespace) -> int:
    from . import api

    if args.resume:
        outcome = api.resume(args.resume, console=console)
    else:
        config = _config_from_args(args)
        if args.dry_run:
            return _print_dry_run(config)
        outcome = api.start(config, console=console)
    from .report import summary_text

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
    from . import api

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


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BENCHMARKS, run_benchmark

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    options = {k: v for k, v in (("table", args.table), ("signal", args.signal), ("report", args.report),
                                 ("time_columns", args.time_columns)) if v}
    bench = BENCHMARKS[args.name]
    objectives = [o.strip() for o in args.objective.split(",") if o.strip()]
    summary = run_benchmark(bench, strategies=strategies, seeds=args.seeds,
                            budget=parse_time(args.budget, what="--budget"), out=Path(args.out),
                            task_options=options, epochs=args.epochs, results=Path(args.results),
                            latency=_bench_latency(args, bench, options), objectives=objectives, console=console)
    print(summary.table)
    return 0


def _bench_latency(args: argparse.Namespace, bench: Any, task_options: Mapping[str, Any]) -> Any:
    """--device table:COLUMN [--latency-table CSV] [--latency LIMIT|pNN] as the benchmark takes them."""
    from .bench import DeviceLatency
    from .registry import SPACES
    from .runner.components import device_table, latency_limit

    table = _device_table(args)
    if table is None:
        if args.device or args.latency:
            raise UsageError("a benchmark reads latency from a device's table: give --device table:COLUMN "
                             "(e.g. table:lat_pixel3) with --latency")
        return None
    space = SPACES.create(bench.space)
    device = device_table(space, column=table["column"], path=table["path"], task=bench.task,
                          task_options=task_options)
    device.check_space(space)
    if not args.latency:
        return DeviceLatency(device)
    limit = latency_limit(args.latency, space=bench.space, table=table, task=bench.task, task_options=task_options)
    return DeviceLatency(device, limit.limit, args.latency)


def cmd_show(args: argparse.Namespace) -> int:
    from .report import summary_text, write_report

    run = RunDir.open(args.run)
    if args.refresh or not (run.report / "summary.md").exists():
        write_report(run.path)
    print(summary_text(run.path))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import SPACES, STRATEGIES, TASKS
    from .runner.components import user_options

    for title, registry in (("spaces", SPACES), ("strategies", STRATEGIES), ("tasks", TASKS)):
        print(f"{title}:")
        for name in registry.names(args.pattern):
            doc = (registry.get(name).__doc__ or "").strip().splitlines()
            print(f"  {name:<16} {doc[0] if doc else ''}")
            options = user_options(registry.get(name))
            if options:
                print(f"  {'':<16} options: {', '.join(sorted(options))}")
            shipped = getattr(registry.get(name), "latency_table", None)
            if registry is SPACES and shipped is not None:
                from .cost.device_table import latency_columns
                from .tasks.tabular import load_table

                columns = latency_columns(load_table(shipped, key="arch"))
                print(f"  {'':<16} devices (--device table:COLUMN): {', '.join(columns)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    paths = export_run(args.run, out=Path(args.out), formats=formats, target=args.target)
    for kind, path in paths.items():
        print(f"{kind:<12} {path}")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from .retrain import retrain

    result = retrain(args.run, epochs=args.epochs, data=args.data, seed=args.seed, console=console)
    print(f"retrained {args.run} for {args.epochs} epochs: accuracy {result['accuracy']:.2f}% "
          f"(bundle in {result['bundle']})")
    return 0


def cmd_formula(args: argparse.Namespace) -> int:
    from .formula import fit_formula

    budgets = [b.strip() for b in args.flops.split(",") if b.strip()]
    path = fit_formula(args.space, budgets=budgets, trials=args.trials, epochs=args.epochs, seed=args.seed,
                       out=Path(args.out), strategy=args.strategy, data=args.data, console=console)
    print(f"formula written to {path}; use it with: nasplat search {args.space} --flops 24M --prior {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nasplat", description="Neural architecture search for small hardware.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

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
    s.add_argument("--latency-batch", type=_positive_int, help="batch size of latency measurements (default 1)")
    s.add_argument("--latency-threads", type=_positive_int, help="CPU threads of latency measurements (default 1)")
    s.add_argument("--lut", help="a latency table from `nasplat latency build-lut`: rejects by predicted latency "
                                 "before training")
    s.add_argument("--train-device", help="where trials train: cpu (default) or cuda")
    s.add_argument("--trials", type=_positive_int,
                   help=f"evaluated trials (default {DEFAULT_TRIALS}; under --budget, as many as it allows)")
    s.add_argument("--epochs", type=_positive_int, help="epochs per trial (default: the task's)")
    s.add_argument("--timeout", help="no new trial after this long, e.g. 10min")
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
        s.add_argument(f"--{kind}-option", type=option, action=_Options, default={}, metavar="KEY=VALUE",
                       help=f"an option of the {kind}, e.g. {example}; repeatable (`nasplat list` names them)")
    s.add_argument("--export", type=_export_formats,
                   help="what best/ converts its trained model to at the end, besides arch.json and the weights: "
                        "torchscript,onnx (default), torchscript, onnx or none (`nasplat export` converts later)")
    s.add_argument("--dry-run", action="store_true", help="space size, cost range, time estimate; no training")
    s.add_argument("--runner", choices=["local", "ray"], help="local: trials one at a time in this process "
                                                              "(default); ray: in parallel on Ray Tune")
    s.add_argument("--workers", type=_positive_int, help="ray: trials at a time (default: as many as the CPUs "
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
    s.set_defaults(func=cmd_search)

    e = sub.add_parser("export", help="write a run's best architecture as JSON, weights, TorchScript, ONNX")
    e.add_argument("run")
    e.add_argument("--format", default="json,weights,torchscript,onnx")
    e.add_argument("--target", action="store_true", help="the untrained model at the target configuration")
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export)

    r = sub.add_parser("retrain", help="train a run's best architecture from scratch")
    r.add_argument("run")
    r.add_argument("--epochs", type=_positive_int, required=True)
    r.add_argument("--data", help="data source (default: the run's)")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_retrain)

    f = sub.add_parser("formula", help="TinyNet's tiny formula: search several budgets, fit r and d by GPR")
    f.add_argument("space")
    f.add_argument("--flops", required=True, help="comma-separated budgets, e.g. 12M,24M,50M,100M")
    f.add_argument("--trials", type=_positive_int, default=8)
    f.add_argument("--epochs", type=_positive_int)
    f.add_argument("--strategy", default="random")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--data")
    f.add_argument("--out", default="runs/formula")
    f.set_defaults(func=cmd_formula)

    b = sub.add_parser("bench", help="benchmark strategies on a tabular benchmark under its published protocol")
    b.add_argument("name", choices=["nb201"], help="nb201: NAS-Bench-201 (CIFAR-10 valid table by default)")
    b.add_argument("--strategies", default="random,evolution,local,bayesian", help="comma-separated strategies")
    b.add_argument("--seeds", type=_positive_int, default=100, help="seeds 0..N-1 of each strategy (default 100)")
    b.add_argument("--budget", default="12000s", help="simulated time per search (default 12000s)")
    b.add_argument("--out", default="bench/out/nb201", help="per-seed JSON files, runs and the plot")
    b.add_argument("--table", help="a CSV table in the schema of the shipped one (default: the shipped table)")
    b.add_argument("--signal", help="the column strategies see (default valid_acc_12ep)")
    b.add_argument("--report", help="comma-separated columns only reported; the first is plotted "
                                    "(default valid_acc_200ep,test_acc_200ep)")
    b.add_argument("--time-columns", help="seconds per training epoch[,seconds per evaluation] "
                                          "(default train_seconds_per_epoch,eval_seconds)")
    b.add_argument("--epochs", type=_positive_int, help="training epochs charged per query (default 12)")
    b.add_argument("--device", help="table:COLUMN: every search reads latency from that device's column of the "
                                    "latency table (see --latency-table)")
    b.add_argument("--latency-table", help="the CSV table of --device (default: the space's, 14 devices)")
    b.add_argument("--latency", help="latency limit of every search: e.g. 5ms, or pNN, the NN-th percentile of the "
                                     "device's column (p25)")
    b.add_argument("--objective", default="accuracy", help="accuracy, or accuracy,latency (needs --device): "
                                                           "scores each search's front by its hypervolume")
    b.add_argument("--results", default="bench/RESULTS.md", help="the Markdown file whose section is rewritten")
    b.set_defaults(func=cmd_bench)

    sh = sub.add_parser("show", help="print a run's summary")
    sh.add_argument("run")
    sh.add_argument("--refresh", action="store_true", help="rewrite the report from the journal first")
    sh.set_defaults(func=cmd_show)

    ls = sub.add_parser("list", help="list the registered spaces, strategies and tasks")
    ls.add_argument("pattern", nargs="?", default="*")
    ls.set_defaults(func=cmd_list)

    from .latency_cli import add_latency_parser
    add_latency_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except (UsageError, RunError, ValueError, LookupError, FileNotFoundError) as exc:
        if args.debug:
            raise
        message = exc.args[0] if isinstance(exc, LookupError) and exc.args else str(exc)
        _error(message)
        return 2


if __name__ == "__main__":
    sys.exit(main())
