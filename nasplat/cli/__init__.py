"""The `nasplat` command: one module per verb in this package, this one dispatching to them.

Each verb module has `add_parser(sub)` and `run(args)`; verbs import `options` and nasplat below the CLI,
never each other nor this module. Bad input (a UserError) is one line on stderr and exit code 2. Any
other exception is a bug: exit code 1 and one line naming it and the file its traceback was written to,
in the run folder's logs/ where the command worked on a run, else under the user's cache
(nasplat.tracebacks). `--debug` lets either propagate, with Python's traceback. Ctrl-C is not caught here:
a search records it and exits 130, anything else stops as Python stops.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from . import bench, export, formula, latency, listing, retrain, search, show
from .options import Parser, join_negative_values, print_error

VERBS = (search, export, retrain, formula, bench, show, listing, latency)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nasplat", description="Neural architecture search for small hardware.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.add_parser(sub).set_defaults(verb=verb)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..run import RunDir

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(join_negative_values(argv))
    RunDir.latest = None  # the run this command works on, if it opens or creates one: where a bug is logged
    try:
        return args.verb.run(args)
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, UserError):
            print_error(exc.args[0] if isinstance(exc, LookupError) and exc.args else str(exc))
            return 2
        print_error(f"{type(exc).__name__}: {exc} ({_log_bug(exc, argv, RunDir.latest)})", label="internal error")
        return 1


def _log_bug(exc: Exception, argv: Sequence[str], run: Path | None) -> str:
    """Writes the traceback of `exc` to a file and says where; prints it on stderr where no file can be written."""
    from .. import __version__
    from ..tracebacks import traceback_folder, write_traceback

    text = (f"nasplat {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
            f"command: nasplat {shlex.join(argv)}\n\n" + "".join(traceback.format_exception(exc)))
    try:
        return f"traceback: {write_traceback(text, folder=traceback_folder(run))}"
    except OSError:
        sys.stderr.write(text)
        return "traceback above"
