"""`recserve loadtest`: a load generator with ghz's command line, config file and report formats.

For machines without ghz. The steps, one module each: `options` (flags + config file -> typed options),
`descriptors` (the method's request type, via reflection, --proto or --protoset), `templates` (call data
compiled once), `runner` (the asyncio load loop) and `report` (ghz's statistics and outputs).

Exit codes, as ghz's: 0 when the run completes, even if calls failed; 1 with a message on stderr when the
run cannot start (bad options, proto or protoset, reflection failure, unknown method, unreachable server).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from recserve.client.loadtest.options import LoadtestOptions, SetupError, add_arguments, options_from_args

if TYPE_CHECKING:
    from recserve.client.loadtest.report import Report

__all__ = ["LoadtestOptions", "SetupError", "add_loadtest_command", "run_loadtest", "run_options"]

_DESCRIPTION = (
    "Load-test a unary gRPC method the way ghz does (same flags, config file and report formats). "
    "Example: recserve loadtest --insecure --call recserve.v1.Recommender.Recommend "
    '-d \'{"user_id":"user-{{randomInt 0 1500}}"}\' -n 1000 -c 32 127.0.0.1:8001'
)


def add_loadtest_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `loadtest` on the main CLI's subparsers."""
    parser = subparsers.add_parser(
        "loadtest", help="ghz-compatible load test of a gRPC method", description=_DESCRIPTION
    )
    add_arguments(parser)
    parser.set_defaults(func=run_loadtest)


def run_options(options: LoadtestOptions) -> Report:
    """Resolve the method, compile the data, run the load and build the report.

    Raises:
        SetupError: the run could not start.
    """
    # Imported here, not at the top: every `recserve` command imports this package to register `loadtest`,
    # and the others should not pay for asyncio, reflection and the report code.
    from recserve.client.loadtest.descriptors import resolve_method
    from recserve.client.loadtest.report import build_report
    from recserve.client.loadtest.runner import run_load
    from recserve.client.loadtest.templates import TemplateError, build_plan

    method = resolve_method(options)
    try:
        plan = build_plan(options.data, options.metadata, method.codec, method.template_constants())
    except (TemplateError, ValueError) as error:
        raise SetupError(str(error)) from error
    run = run_load(options, method.path, plan)
    return build_report(run, options, time.time_ns())


def run_loadtest(args: argparse.Namespace) -> int:
    """The `loadtest` command: run, write the report (stdout or -o), return the exit code."""
    from recserve.client.loadtest.report import render  # lazily, as in run_options

    try:
        options = options_from_args(args)
        text = render(run_options(options), options.format)
        if options.output:
            Path(options.output).write_text(text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()  # now, not at interpreter exit: a report cut short must fail loudly here
    except SetupError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    except OSError as error:
        sys.stderr.write(f"error: cannot write the report: {error}\n")
        return 1
    return 0
