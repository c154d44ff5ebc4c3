"""The `recserve` command: `serve`, `build-demo`, `retrain`, and the client commands of `recserve.client.cli`.

Heavy imports (TensorFlow, numpy) happen inside the commands that need them, so client commands start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from recserve.client.cli import add_client_commands

# Each pool is sized deliberately: a spinning BLAS/OpenMP worker steals a core from gRPC on small machines.
THREAD_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
# Training keeps oneDNN: without it a tower step at a million items takes 196 instead of 55 ms.
QUIET_TRAINING = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def build_parser() -> argparse.ArgumentParser:
    """The full `recserve` argument parser."""
    parser = argparse.ArgumentParser(
        prog="recserve", description="Real-time recommendation inference server."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_build_demo(commands)
    _add_retrain(commands)
    _add_token(commands)
    add_client_commands(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--config", type=Path, help="YAML file of server settings (also $RECSERVE_CONFIG)")
    serve.add_argument("--grpc-host", help="bind address (default 0.0.0.0)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 8001)")
    serve.add_argument("--model-repository", type=Path, help="model repository directory (default models)")
    serve.add_argument("--model-name", help="model to serve (default recommender)")
    serve.add_argument("--model-version", help="version to serve (default: the highest)")
    serve.add_argument(
        "--model-control-mode",
        choices=("none", "poll", "explicit"),
        help="none: load at start; poll: follow the repository; explicit: RepositoryModelLoad/Unload (admin)",
    )
    serve.add_argument(
        "--repository-poll-seconds", type=float, help="poll mode: seconds between looks (default 15)"
    )
    serve.add_argument("--max-batch-size", type=int, help="override the model's batching.max_batch_size")
    serve.add_argument(
        "--max-queue-delay-us", type=int, help="override batching.max_queue_delay_microseconds"
    )
    serve.add_argument("--instance-count", type=int, help="override batching.instance_count")
    serve.add_argument(
        "--overlap-only-full-batches",
        action=argparse.BooleanOptionalAction,
        help="override batching.overlap_only_full_batches",
    )
    serve.add_argument("--ann-threads", type=int, help="override retrieval.ann_threads")
    serve.add_argument(
        "--adaptive-batching",
        action=argparse.BooleanOptionalAction,
        help="override batching.adaptive.enabled",
    )
    serve.add_argument("--metrics-port", type=int, help="Prometheus /metrics HTTP port (default 8002)")
    serve.add_argument(
        "--tracing-exporter",
        choices=["none", "console", "otlp_grpc", "otlp_http"],
        help="where spans go (default from OTEL_TRACES_EXPORTER, else none)",
    )
    serve.add_argument("--tracing-endpoint", help="OTLP collector endpoint, e.g. http://otel-collector:4317")
    serve.add_argument(
        "--tracing-sampling-ratio", type=float, help="share of new traces sampled (default 0.01)"
    )
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument("--log-format", choices=["text", "json"], help="log as text (default) or JSON lines")
    serve.add_argument(
        "--enable-events",
        action=argparse.BooleanOptionalAction,
        dest="events_enabled",
        help="serve recserve.v1.Events (writes: off by default)",
    )
    serve.add_argument(
        "--enable-catalog",
        action=argparse.BooleanOptionalAction,
        dest="catalog_enabled",
        help="serve recserve.v1.Catalog (writes: off by default)",
    )
    serve.add_argument("--state-backend", choices=["memory", "redis"], help="where live state is kept")
    serve.add_argument("--state-dir", type=Path, help="memory backend: directory of the log (default state)")
    serve.add_argument("--fsync", choices=["always", "everysec"], help="memory backend: fsync policy")
    serve.add_argument("--redis-url", help="redis backend: e.g. redis://redis:6379/0")
    serve.add_argument("--tls-cert", type=Path, help="PEM server certificate: the gRPC port speaks TLS")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA bundle: clients need a certificate it signed (mTLS)"
    )
    serve.add_argument(
        "--tokens-file", type=Path, help="YAML of token hashes and roles (`recserve token create` makes them)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes on one port, ~1 core each (default 1; >1 needs --state-backend redis)",
    )
    serve.add_argument(
        "--frontend",
        choices=["auto", "native", "aio"],
        help="gRPC transport: native (grpc++), aio (grpc.aio); auto (default) = native when built",
    )
    serve.set_defaults(func=_serve)


def _add_build_demo(commands: argparse._SubParsersAction) -> None:
    build = commands.add_parser(
        "build-demo", help="generate demo data, train the models, write a new version"
    )
    build.add_argument("--model-repository", type=Path, default=Path("models"))
    build.add_argument("--model-name", default="recommender")
    build.add_argument("--ratings", type=Path, help="train on a MovieLens ratings.csv / u.data instead")
    build.add_argument("--num-users", type=int, help="demo users (default from config.yaml)")
    build.add_argument("--num-items", type=int, help="demo items (default from config.yaml)")
    build.add_argument(
        "--max-epochs",
        "--epochs",
        dest="max_epochs",
        type=int,
        help="most two-tower training epochs (training stops earlier when validation recall stops rising)",
    )
    build.add_argument("--seed", type=int, help="random seed")
    build.add_argument("--no-progress", action="store_true", help="log stages instead of a progress display")
    build.set_defaults(func=_build_demo)


def _add_retrain(commands: argparse._SubParsersAction) -> None:
    retrain = commands.add_parser(
        "retrain",
        help="train the next version from the newest one's data plus the server's recorded events",
        description="Train version N+1 of the model from version N's training data and what the server "
        "recorded since (events, upserted and deleted items), read from the state backend the server uses "
        "(the same --config, RECSERVE_* variables and flags as `recserve serve`). evaluation.json compares "
        "both versions on each user's most recent new interaction. See docs/retraining.md.",
    )
    retrain.add_argument("--config", type=Path, help="YAML file of server settings (also $RECSERVE_CONFIG)")
    retrain.add_argument("--model-repository", type=Path, help="model repository directory (default models)")
    retrain.add_argument("--model-name", help="model to retrain (default recommender)")
    retrain.add_argument(
        "--state-backend", choices=["memory", "redis"], help="where the server keeps live state"
    )
    retrain.add_argument("--state-dir", type=Path, help="memory backend: the server's state directory")
    retrain.add_argument("--redis-url", help="redis backend: e.g. redis://redis:6379/0")
    retrain.add_argument(
        "--no-progress", action="store_true", help="log stages instead of a progress display"
    )
    retrain.set_defaults(func=_retrain)


def _add_token(commands: argparse._SubParsersAction) -> None:
    token = commands.add_parser("token", help="make bearer tokens for the server's tokens file")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="print a new token on stdout; its hash and roles go to the tokens file (or stderr)",
        description="Print a new random token on stdout (shown once: only its SHA-256 is stored). With "
        "--tokens-file its entry is appended to that file (created owner-only), which a running server "
        "re-reads; without, the entry is printed on stderr to paste into one.",
    )
    create.add_argument("--name", required=True, help="who holds it (shown in logs when it is refused)")
    create.add_argument(
        "--role",
        dest="roles",
        action="append",
        required=True,
        choices=["read", "write", "admin"],
        help="a role it grants; repeat for several (admin grants everything)",
    )
    create.add_argument("--tokens-file", type=Path, help="append the entry to this YAML tokens file")
    create.set_defaults(func=_token_create)


def _token_create(args: argparse.Namespace) -> int:
    from recserve.server.auth.tokens_file import append_entry, new_token_entry

    token, entry = new_token_entry(args.name, args.roles)
    if args.tokens_file is not None:
        try:
            append_entry(args.tokens_file, entry)
        except (OSError, ValueError) as error:
            sys.stderr.write(f"error: {error}\n")
            return 1
        sys.stderr.write(f"added token {args.name!r} ({', '.join(args.roles)}) to {args.tokens_file}\n")
    else:
        import yaml

        sys.stderr.write("add this entry under `tokens:` in the tokens file:\n")
        sys.stderr.write(yaml.safe_dump([entry], sort_keys=False))
    sys.stdout.write(token + "\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    for name, value in {**THREAD_ENVIRONMENT, **QUIET_TENSORFLOW}.items():
        os.environ.setdefault(name, value)
    from pydantic import ValidationError

    from recserve.server.settings import load_server_settings

    try:
        settings = load_server_settings(
            args.config,
            grpc_host=args.grpc_host,
            grpc_port=args.grpc_port,
            model_repository=args.model_repository,
            model_name=args.model_name,
            model_version=args.model_version,
            model_control_mode=args.model_control_mode,
            repository_poll_seconds=args.repository_poll_seconds,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            instance_count=args.instance_count,
            overlap_only_full_batches=args.overlap_only_full_batches,
            ann_threads=args.ann_threads,
            adaptive_batching=args.adaptive_batching,
            metrics_port=args.metrics_port,
            tracing={
                "exporter": args.tracing_exporter,
                "endpoint": args.tracing_endpoint,
                "sampling_ratio": args.tracing_sampling_ratio,
            },
            log_level=args.log_level,
            log_format=args.log_format,
            frontend=args.frontend,
            events_enabled=args.events_enabled,
            catalog_enabled=args.catalog_enabled,
            state={
                "backend": args.state_backend,
                "state_dir": args.state_dir,
                "fsync": args.fsync,
                "redis_url": args.redis_url,
            },
            tls={"cert_file": args.tls_cert, "key_file": args.tls_key, "client_ca_file": args.tls_client_ca},
            auth={"tokens_file": args.tokens_file},
            workers=args.workers,
        )
    except ValidationError as error:
        sys.stderr.write(f"error: invalid settings: {_validation_message(error)}\n")
        return 2
    except (ValueError, FileNotFoundError) as error:
        sys.stderr.write(f"error: invalid settings: {error}\n")
        return 2
    from recserve.server.telemetry.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from recserve.server.exceptions import StartupError

    if settings.workers > 1:
        from recserve.server.workers.supervisor import run_workers

        try:
            return run_workers(settings)
        except StartupError as error:
            sys.stderr.write(f"error: {error}\n")
            return 2
    from recserve.server.app import run

    try:
        run(settings)
    except StartupError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    os.environ.update(QUIET_TRAINING)
    _configure_logging("INFO")
    from pydantic import ValidationError

    from recserve.training.build import build_demo
    from recserve.training.config import DemoConfig, load_demo_config
    from recserve.training.movielens import TrainingDataError

    overrides = {
        "num_users": args.num_users,
        "num_items": args.num_items,
        "max_epochs": args.max_epochs,
        "seed": args.seed,
    }
    try:
        config = load_demo_config(args.model_repository / args.model_name / "config.yaml")
        given = {name: value for name, value in overrides.items() if value is not None}
        config = DemoConfig.model_validate({**config.model_dump(), **given})  # checks the flags' values too
    except ValidationError as error:
        sys.stderr.write(f"error: {_validation_message(error, flags=overrides)}\n")
        return 2
    try:
        version_dir = build_demo(
            args.model_repository,
            args.model_name,
            config,
            ratings_path=args.ratings,
            show_progress=not args.no_progress,
        )
    except (FileNotFoundError, TrainingDataError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    sys.stdout.write(f"built {version_dir}\n")
    return 0


def _validation_message(error: Exception, flags: dict[str, object] | None = None) -> str:
    """A pydantic ValidationError in one line, `field: problem` per error; a field set by a flag named so."""
    problems = []
    for problem in error.errors():  # type: ignore[attr-defined]
        location = ".".join(str(part) for part in problem["loc"])
        if flags is not None and location in flags:
            location = "--" + location.replace("_", "-")
        problems.append(f"{location}: {problem['msg']}" if location else problem["msg"])
    return "; ".join(problems)


def _retrain(args: argparse.Namespace) -> int:
    os.environ.update(QUIET_TRAINING)
    from pydantic import ValidationError

    from recserve.server.settings import load_server_settings

    try:
        settings = load_server_settings(
            args.config,
            model_repository=args.model_repository,
            model_name=args.model_name,
            state={"backend": args.state_backend, "state_dir": args.state_dir, "redis_url": args.redis_url},
        )
    except ValidationError as error:
        sys.stderr.write(f"error: invalid settings: {_validation_message(error)}\n")
        return 2
    except (ValueError, FileNotFoundError) as error:
        sys.stderr.write(f"error: invalid settings: {error}\n")
        return 2
    _configure_logging("INFO")
    from recserve.training.retrain import RetrainError, retrain

    try:
        result = retrain(
            settings.model_repository, settings.model_name, settings.state, show_progress=not args.no_progress
        )
    except RetrainError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    figures, previous = result.evaluation, result.previous_version
    sys.stdout.write(
        f"built {result.version_dir} from version {previous}: "
        f"recall@10 {figures['recall@10']} (version {previous}: {figures['previous_recall@10']}), "
        f"ndcg@10 {figures['ndcg@10']} (version {previous}: {figures['previous_ndcg@10']}) "
        f"on {figures['users_evaluated']} users' most recent new interactions\n"
    )
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `recserve` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        if exit_.code == 2 and argv[:1] == ["loadtest"]:
            return 1  # a bad command line: ghz exits 1, and scripts written for it check for that
        raise
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
