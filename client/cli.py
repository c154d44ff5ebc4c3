"""The client half of the `recserve` CLI: recommend, score, similar, model-info, health, live state.

`recserve.server.cli` calls `add_client_commands` on its subparsers; every subcommand sets `func`, a handler
`(args) -> int` that returns the process exit code: 0 on success, 1 on a gRPC error (reported on stderr
as `error: <STATUS_NAME>: <details>`, without a traceback) or, for `health`, when the answer is not SERVING,
2 when the TLS options cannot be used (an unreadable file, a certificate without its key).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable

import grpc
from rich.console import Console

from recserve.client import formatting
from recserve.client.client import DEFAULT_TARGET, SERVING, RecommenderClient
from recserve.client.live_cli import add_live_commands
from recserve.client.loadtest import add_loadtest_command
from recserve.client.models_cli import add_models_command

TARGET_ENV = "RECSERVE_TARGET"
TOKEN_ENV = "RECSERVE_TOKEN"
DEFAULT_TIMEOUT_S = 10.0

Command = Callable[[argparse.Namespace, RecommenderClient, Console], int]


def build_client_parser() -> argparse.ArgumentParser:
    """A `recserve` parser holding only the client subcommands (for tests and client-only use)."""
    parser = argparse.ArgumentParser(prog="recserve", description="Query a running recserve server.")
    add_client_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def add_client_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register recommend, score, similar, model-info and health on the main CLI's subparsers."""
    recommend = _add_command(subparsers, "recommend", _recommend, "Top-k items for a user, best first.")
    recommend.add_argument("--user", required=True, help="user id, e.g. user-3")
    _add_k(recommend)
    _add_recent(recommend)
    recommend.add_argument("--exclude", nargs="+", default=[], metavar="ITEM", help="items never to return")
    recommend.add_argument(
        "--include-recent", action="store_true", help="allow the --recent items in the results"
    )
    _add_priority(recommend)
    _add_ignore_history(recommend)

    score = _add_command(subparsers, "score", _score, "P(like) for given items, in the order given.")
    score.add_argument("--user", required=True, help="user id, e.g. user-3")
    score.add_argument("--items", nargs="+", required=True, metavar="ITEM", help="items to score")
    _add_recent(score)
    _add_priority(score)
    _add_ignore_history(score)

    similar = _add_command(subparsers, "similar", _similar, "Items closest (cosine) to an item.")
    similar.add_argument("--item", required=True, help="item id, e.g. item-7")
    _add_k(similar)

    _add_command(subparsers, "model-info", _model_info, "What model the server has loaded.")
    _add_command(subparsers, "stats", _stats, "Batching and pipeline-stage counters since the model loaded.")

    health = _add_command(
        subparsers, "health", _health, "Standard gRPC health check; exit code 0 only when SERVING."
    )
    health.add_argument("--service", default="", metavar="NAME", help="service to check; default the server")
    add_live_commands(subparsers, _add_command)
    add_models_command(subparsers, _add_command)
    add_loadtest_command(subparsers)


def _add_command(
    subparsers: argparse._SubParsersAction, name: str, command: Command, summary: str
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=summary, description=summary)
    parser.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV) or DEFAULT_TARGET,
        metavar="HOST:PORT",
        help=f"server address (default ${TARGET_ENV}, else {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"deadline for the call (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _add_security(parser)
    parser.set_defaults(func=functools.partial(_run, command))
    return parser


def _add_security(parser: argparse.ArgumentParser) -> None:
    """TLS and token flags, named as ghz and grpcurl name them."""
    group = parser.add_argument_group("transport security (plaintext unless --tls, --cacert or --cert)")
    group.add_argument("--tls", action="store_true", help="TLS, verifying the server with the system's roots")
    group.add_argument("--cacert", metavar="FILE", help="PEM root certificates to verify the server (TLS)")
    group.add_argument("--cert", metavar="FILE", help="PEM client certificate for mutual TLS (with --key)")
    group.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    group.add_argument(
        "--cname", metavar="NAME", help="server name to verify in its certificate instead of the target host"
    )
    group.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        metavar="TOKEN",
        help=f"bearer token sent with every call (default ${TOKEN_ENV})",
    )


def _add_k(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", type=int, default=0, help="how many items; 0 means the server default")


def _add_recent(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recent", nargs="+", default=[], metavar="ITEM", help="recent items as context, most recent last"
    )


def _add_priority(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--priority", type=int, default=0, help="batching priority: 1 is the highest; 0 the server default"
    )


def _add_ignore_history(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ignore-history",
        action="store_true",
        help="leave the user's stored history out (as if they had none)",
    )


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return seconds


def _run(command: Command, args: argparse.Namespace) -> int:
    """Run one command against the server; a gRPC error becomes a one-line message and exit code 1."""
    problem = _security_problem(args)
    if problem is not None:
        sys.stderr.write(f"error: {problem}\n")
        return 2
    try:
        client = RecommenderClient(
            args.target,
            timeout_s=args.timeout,
            tls=args.tls,
            root_certificates=args.cacert,
            certificate_chain=args.cert,
            private_key=args.key,
            server_name=args.cname,
            token=args.token,
        )
    except OSError as error:
        sys.stderr.write(f"error: cannot read {error.filename}: {error.strerror}\n")
        return 2
    except ValueError as error:  # a token that cannot be a header value, PEM that is not what it should be
        sys.stderr.write(f"error: {error}\n")
        return 2
    try:
        with client:
            return command(args, client, Console())
    except grpc.RpcError as error:
        sys.stderr.write(f"error: {describe_rpc_error(error)}\n")
        return 1


def _security_problem(args: argparse.Namespace) -> str | None:
    """What is contradictory in the TLS flags, in the flags' own words; None when nothing is."""
    if bool(args.cert) != bool(args.key):
        return "--cert and --key go together (mutual TLS): give both"
    if args.cname and not (args.tls or args.cacert or args.cert):
        return "--cname only applies to TLS: add --tls or --cacert"
    return None


def describe_rpc_error(error: grpc.RpcError) -> str:
    """`STATUS_NAME: details`, e.g. `NOT_FOUND: unknown item id 'item-x': ...`."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    if code is None or details is None:
        return str(error)
    return f"{code().name}: {details()}"


def _recommend(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    result = client.recommend(
        args.user,
        k=args.k,
        recent_item_ids=args.recent,
        exclude_item_ids=args.exclude,
        include_recent_items=args.include_recent,
        priority=args.priority,
        ignore_history=args.ignore_history,
    )
    if args.json:
        formatting.write_json(formatting.recommendation_json(result))
    else:
        formatting.show_recommendation(console, args.user, result)
    return 0


def _score(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    result = client.score(
        args.user,
        args.items,
        recent_item_ids=args.recent,
        priority=args.priority,
        ignore_history=args.ignore_history,
    )
    if args.json:
        formatting.write_json(formatting.score_json(args.items, result))
    else:
        formatting.show_scores(console, args.user, args.items, result)
    return 0


def _similar(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    result = client.similar_items(args.item, k=args.k)
    if args.json:
        formatting.write_json(formatting.similar_json(args.item, result))
    else:
        formatting.show_similar(console, args.item, result)
    return 0


def _model_info(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    info = client.model_info()
    if args.json:
        formatting.write_json(formatting.model_info_json(info))
    else:
        formatting.show_model_info(console, info)
    return 0


def _stats(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    stats = client.model_statistics()
    if args.json:
        formatting.write_json(formatting.statistics_json(stats))
    else:
        formatting.show_statistics(console, stats)
    return 0


def _health(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    status = client.health(args.service)
    if args.json:
        formatting.write_json(formatting.health_json(args.service, status))
    else:
        console.print(status, markup=False, highlight=False)
    return 0 if status == SERVING else 1
