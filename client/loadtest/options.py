"""`recserve loadtest` options: ghz's command line and config file, merged into one typed `LoadtestOptions`.

Precedence, lowest first: ghz's defaults, the `--config` file (JSON, TOML or YAML by extension, keys spelled
like the long flags), then the flags given on the command line. Flags are registered with no argparse default
so that "given" and "not given" stay distinguishable. Every value, from either source, goes through the same
converters, so a bad value reads the same error whichever way it came.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import grpc

NS_PER_S = 1_000_000_000
MAX_TOTAL_WITH_DURATION = 2**31 - 1  # ghz sets n = math.MaxInt32 when a duration is given
FORMATS = ("summary", "csv", "json", "pretty")
TRANSPORTS = ("auto", "native", "aio")
LB_STRATEGIES = ("pick_first", "round_robin")
DURATION_STOPS = ("close", "ignore", "wait")

JsonObject = dict[str, Any]


class SetupError(Exception):
    """Anything that stops a load test before it starts: bad options, proto, reflection, connection."""


@dataclass(frozen=True)
class LoadtestOptions:
    """One load test, as ghz would run it. Durations are integer nanoseconds, as in ghz's JSON report."""

    call: str
    """Method to call: pkg.Service.Method or pkg.Service/Method."""
    host: str
    """HOST:PORT of the server."""
    proto: str = ""
    """A .proto file to compile for the method's types (instead of server reflection)."""
    protoset: str = ""
    """A compiled FileDescriptorSet for the method's types (instead of server reflection)."""
    import_paths: tuple[str, ...] = ()
    """Extra directories searched for --proto imports."""
    insecure: bool = False
    """Plaintext HTTP/2; otherwise TLS."""
    cacert: str = ""
    """PEM file of root certificates for TLS (default: the system roots)."""
    cert: str = ""
    """PEM client certificate for mutual TLS (with `key`)."""
    key: str = ""
    """PEM client private key for mutual TLS (with `cert`)."""
    cname: str = ""
    """Server name expected in the server's certificate, when it differs from HOST."""
    lb_strategy: str = ""
    """gRPC's client load-balancing policy over the addresses the host resolves to ("" = gRPC's default)."""
    total: int = 200
    """Requests to make in all (ignored when `duration_ns` is set)."""
    concurrency: int = 50
    """Workers, each with at most one call in flight."""
    connections: int = 1
    """Connections the workers are spread over, round-robin; at most `concurrency`."""
    rps: int = 0
    """Total rate limit in requests per second; 0 means none."""
    duration_ns: int = 0
    """Run for this long instead of `total` requests; 0 means use `total`."""
    duration_stop: str = "close"
    """At the end of a duration: close (cancel in-flight calls, count them as Canceled), ignore (cancel,
    do not count them), or wait (let them finish)."""
    timeout_ns: int = 20 * NS_PER_S
    """Deadline of each call; 0 means none."""
    connect_timeout_ns: int = 10 * NS_PER_S
    """How long to wait for the connections (and reflection) before giving up."""
    data: JsonObject | list[JsonObject] = field(default_factory=dict)
    """Request data: one JSON object, or a list used round-robin (request N gets data[N % len])."""
    metadata: dict[str, str] | None = None
    """Call metadata; values may hold templates."""
    format: str = "summary"
    """Report format: summary, csv, json or pretty."""
    output: str = ""
    """File to write the report to; empty means stdout."""
    name: str = ""
    """Name of the run, shown in the report and prefixed to worker ids."""
    tags: dict[str, str] | None = None
    """Free-form labels copied into the JSON report."""
    count_errors: bool = False
    """Include failed calls in fastest, slowest, histogram and percentiles."""
    skip_first: int = 0
    """Leave the first N results out of the report (warm-up)."""
    cpus: int = 0
    """Only reported, as ghz's `CPUs`; 0 means the number of CPUs of this machine."""
    transport: str = "auto"
    """Not in ghz: native (grpc++, least CPU per call), aio (grpc.aio), or auto: native when it was built,
    else aio. Both speak plaintext (--insecure), TLS and mutual TLS."""

    @property
    def effective_total(self) -> int:
        """Requests to make: `total`, or ghz's MaxInt32 when a duration is given."""
        return MAX_TOTAL_WITH_DURATION if self.duration_ns else self.total

    def proto_search_paths(self) -> tuple[str, ...]:
        """Search path for --proto, as ghz builds it: the file's directory (unless "."), ".", the -i dirs."""
        directory = str(Path(self.proto).parent)
        return (*([directory] if directory != "." else []), ".", *self.import_paths)

    def channel_options(self) -> list[tuple[str, Any]]:
        """Channel arguments; a local subchannel pool gives each channel its own TCP connection."""
        arguments: list[tuple[str, Any]] = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ]
        if self.cname:
            arguments.append(("grpc.ssl_target_name_override", self.cname))
        if self.lb_strategy:
            arguments.append(("grpc.lb_policy_name", self.lb_strategy))
        return arguments

    def tls_files(self) -> tuple[bytes, bytes, bytes]:
        """The PEM bytes of --cacert, --key and --cert; empty where not given (no --cacert: system roots).

        Raises:
            SetupError: a file cannot be read.
        """
        try:
            return tuple(
                Path(path).read_bytes() if path else b"" for path in (self.cacert, self.key, self.cert)
            )
        except OSError as error:
            raise SetupError(f"cannot read TLS file {error.filename}: {error.strerror}") from error

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials for grpc from --cacert/--cert/--key (system roots when no --cacert)."""
        root, key, chain = self.tls_files()
        return grpc.ssl_channel_credentials(root or None, key or None, chain or None)


def parse_go_duration(text: str) -> int:
    """Nanoseconds in a Go duration string such as "20s", "1m30s", "500ms", "1.5h" or "0".

    Raises:
        ValueError: not a Go duration (a number without a unit is one, except "0").
    """
    units = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": NS_PER_S}
    units |= {"m": 60 * NS_PER_S, "h": 3600 * NS_PER_S}
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    total, position = Decimal(0), 0
    for match in re.finditer(r"(\d+\.?\d*|\.\d+)([a-zµμ]+)", body):
        if match.start() != position or match.group(2) not in units:
            raise ValueError(f"invalid duration {text!r}")
        total += Decimal(match.group(1)) * units[match.group(2)]
        position = match.end()
    if position != len(body):
        raise ValueError(f"invalid duration {text!r}")
    nanoseconds = int(total)
    return -nanoseconds if text.startswith("-") else nanoseconds


# --- command line -------------------------------------------------------------------------------------

# (flags, config key, help); values stay text here and are converted together with the config file's.
_VALUE_FLAGS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("--config",), "config", "JSON, TOML or YAML file of options (keys as the long flags)"),
    (("--call",), "call", "method to call: pkg.Service.Method or pkg.Service/Method"),
    (("--proto",), "proto", "a .proto file for the method's types (default: server reflection)"),
    (("-i", "--import-paths"), "import-paths", "comma-separated directories for --proto imports"),
    (("--protoset",), "protoset", "a compiled FileDescriptorSet for the method's types"),
    (("--cacert",), "cacert", "PEM root certificates for TLS"),
    (("--cert",), "cert", "PEM client certificate for mutual TLS"),
    (("--key",), "key", "PEM client key for mutual TLS"),
    (("--cname",), "cname", "server name to verify in the server certificate"),
    (("--lb-strategy",), "lb-strategy", "spreading calls over the host's addresses: pick_first, round_robin"),
    (("-n", "--total"), "total", "number of requests to run (default 200)"),
    (("-c", "--concurrency"), "concurrency", "number of workers (default 50)"),
    (("--connections",), "connections", "connections to spread the workers over (default 1)"),
    (("-r", "--rps"), "rps", "total requests-per-second limit; 0 means none (default 0)"),
    (("-z", "--duration"), "duration", "run for this long (Go duration, e.g. 30s), overriding -n"),
    (("--duration-stop",), "duration-stop", "at the end of -z: close, ignore or wait (default close)"),
    (("-t", "--timeout"), "timeout", "per-call deadline, Go duration; 0 means none (default 20s)"),
    (("--connect-timeout",), "connect-timeout", "connection and reflection timeout (default 10s)"),
    (("-d", "--data"), "data", "request data as JSON (object, or array used round-robin); @ reads stdin"),
    (("-D", "--data-file"), "data-file", "file holding the request data as JSON"),
    (("-m", "--metadata"), "metadata", "call metadata as a JSON object of strings"),
    (("-M", "--metadata-file"), "metadata-file", "file holding the call metadata as JSON"),
    (("-O", "--format"), "format", "report format: summary, csv, json or pretty (default summary)"),
    (("-o", "--output"), "output", "write the report to this file instead of stdout"),
    (("--skipFirst", "--skip-first"), "skipFirst", "leave the first N results out of the report"),
    (("--name",), "name", "name of the run"),
    (("--tags",), "tags", "JSON object of string labels for the report"),
    (("--cpus",), "cpus", "reported as CPUs in the JSON report (default: this machine's CPUs)"),
    (
        ("--transport",),
        "transport",
        "not in ghz: native (grpc++), aio (grpc.aio) or auto (default: native when built)",
    ),
)
_SWITCH_FLAGS = (
    (("--insecure",), "insecure", "plaintext connection (no TLS)"),
    (("--count-errors",), "count-errors", "count failed calls in latency statistics too"),
)


# Of ghz's options that recserve loadtest lacks (UNSUPPORTED_GHZ_KEYS, below): the flags that take no value,
# and the short spellings.
_UNSUPPORTED_SWITCHES = frozenset(
    "skipTLS skip-verify async binary enable-compression disable-template-functions "
    "disable-template-data".split()
)
_UNSUPPORTED_SHORT = {"max-duration": "-x", "binary": "-b", "binary-file": "-B", "enable-compression": "-e"}


class _Unsupported(argparse.Action):
    """A ghz flag recserve loadtest does not implement: refused by name, not mistaken for HOST:PORT."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(f"ghz's {'/'.join(self.option_strings)} is not supported by recserve loadtest")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ghz's flags and the HOST:PORT argument; nothing is set on the namespace unless given."""
    for key in sorted(UNSUPPORTED_GHZ_KEYS):
        flags = [_UNSUPPORTED_SHORT[key]] if key in _UNSUPPORTED_SHORT else []
        nargs = 0 if key in _UNSUPPORTED_SWITCHES else None
        parser.add_argument(*flags, f"--{key}", action=_Unsupported, nargs=nargs, help=argparse.SUPPRESS)
    for flags, key, summary in _VALUE_FLAGS:
        metavar = key.upper().replace("-", "_")
        parser.add_argument(*flags, dest=_dest(key), default=argparse.SUPPRESS, metavar=metavar, help=summary)
    for flags, key, summary in _SWITCH_FLAGS:
        parser.add_argument(
            *flags, dest=_dest(key), action="store_true", default=argparse.SUPPRESS, help=summary
        )
    parser.add_argument("host", nargs="?", default=argparse.SUPPRESS, metavar="HOST:PORT", help="server")


def _dest(key: str) -> str:
    return "opt_" + key.replace("-", "_")


def options_from_args(args: argparse.Namespace, stdin: TextIO | None = None) -> LoadtestOptions:
    """Merge defaults, the --config file and the explicit flags into validated options.

    Raises:
        SetupError: a file cannot be read, a value is invalid, or the options contradict each other.
    """
    given = {
        key: getattr(args, _dest(key))
        for _, key, _ in (*_VALUE_FLAGS, *_SWITCH_FLAGS)
        if hasattr(args, _dest(key))
    }
    if hasattr(args, "host"):
        given["host"] = args.host
    settings = load_config(Path(given.pop("config"))) if "config" in given else {}
    for key in given:  # a flag overrides the file's other spelling of the same thing (-d vs data-file)
        settings.pop(_SAME_TARGET.get(key, ""), None)
    return build_options(settings | given, stdin or sys.stdin)


_SAME_TARGET = {
    "data": "data-file",
    "data-file": "data",
    "metadata": "metadata-file",
    "metadata-file": "metadata",
}


# --- config file ---------------------------------------------------------------------------------------

# ghz keys we read, with their aliases; ghz keys we know but do not support are refused unless they hold
# ghz's default (a config file written for ghz often spells every option out).
_ALIASES = {"skip-first": "skipFirst", "qps": "rps", "dial-timeout": "connect-timeout"}
UNSUPPORTED_GHZ_KEYS = frozenset(
    "skipTLS skip-verify authority async load-schedule load-start load-end load-step load-step-duration "
    "load-max-duration concurrency-schedule concurrency-start concurrency-end concurrency-step "
    "concurrency-step-duration concurrency-max-duration max-duration binary binary-file stream-interval "
    "stream-call-duration stream-call-count stream-dynamic-messages reflect-metadata keepalive "
    "enable-compression disable-template-functions disable-template-data protoset-binary "
    "debug".split()
)
_GHZ_DEFAULTS = (None, False, 0, "", "0", "0s", "const", {}, [])


def load_config(path: Path) -> dict[str, Any]:
    """The options in a ghz config file, keys normalised to the long-flag spelling.

    Raises:
        SetupError: unreadable, unparsable, not a table/object, or a key ghz does not have.
    """
    try:
        text = path.read_text()
    except OSError as error:
        raise SetupError(f"cannot read config file {path}: {error.strerror}") from error
    raw = _parse_config(path, text)
    if not isinstance(raw, dict):
        raise SetupError(f"config file {path} must hold an object of options")
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        key = _ALIASES.get(key, key)
        if key in UNSUPPORTED_GHZ_KEYS:
            if not any(value == default and type(value) is type(default) for default in _GHZ_DEFAULTS):
                raise SetupError(
                    f"config file {path}: ghz's option {key!r} is not supported by recserve loadtest; "
                    "remove it (or set it to ghz's default) to run without it"
                )
        elif key in _CONVERTERS or key in ("host", "config"):
            settings[key] = value
        else:
            raise SetupError(f"config file {path}: unknown option {key!r}")
    settings.pop("config", None)
    return settings


def _parse_config(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as error:  # noqa: BLE001  # each parser has its own error type
        raise SetupError(f"cannot parse config file {path}: {error}") from error


# --- converting and validating -------------------------------------------------------------------------


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SetupError(f"{key} must be a string, got {value!r}")
    return value


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SetupError(f"{key} must be a whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError as error:
        raise SetupError(f"{key} must be a whole number, got {value!r}") from error
    if number < 0:
        raise SetupError(f"{key} must not be negative, got {number}")
    return number


def _switch(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise SetupError(f"{key} must be true or false, got {value!r}")


def _duration(key: str, value: Any) -> int:
    try:
        nanoseconds = parse_go_duration(_text(key, value))
    except ValueError as error:
        raise SetupError(f"{key}: {error} (expected a Go duration such as 500ms, 20s or 1m30s)") from error
    if nanoseconds < 0:
        raise SetupError(f"{key} must not be negative, got {value}")
    return nanoseconds


def _json(key: str, value: Any) -> Any:
    """A JSON value: parsed when typed on the command line or given as a string, else as the file held it."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise SetupError(f"{key} is not valid JSON: {error}") from error


def _string_map(key: str, value: Any) -> dict[str, str]:
    parsed = _json(key, value)
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise SetupError(f"{key} must be a JSON object of strings, got {value!r}")
    return parsed


# What gRPC allows in metadata (anything else makes the transport refuse, or abort, the call).
_METADATA_KEY = re.compile(r"[0-9a-z_.-]+")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


def _metadata(key: str, value: Any) -> dict[str, str]:
    """Call metadata as given, checked: keys gRPC allows once lower-cased (as sent), ASCII values."""
    metadata = _string_map(key, value)
    for name, text in metadata.items():
        lowered = name.lower()
        if not _METADATA_KEY.fullmatch(lowered) or lowered.startswith("grpc-"):
            raise SetupError(
                f"{key}: {name!r} is not a valid metadata key: use lower-case letters, digits, '-', '_' and "
                "'.', not starting with 'grpc-'"
            )
        if not lowered.endswith("-bin") and not _METADATA_VALUE.fullmatch(text):
            raise SetupError(
                f"{key}: the value of {name!r} must be printable ASCII (no line breaks or other characters); "
                "binary values need a key ending in -bin"
            )
    return metadata


def _paths(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part for part in value.split(",") if part)
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return tuple(value)
    raise SetupError(f"{key} must be a comma-separated string or a list of directories, got {value!r}")


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def convert(key: str, value: Any) -> str:
        text = _text(key, value).lower()
        if text not in choices:
            raise SetupError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return text

    return convert


# config key -> (LoadtestOptions field, converter)
_CONVERTERS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "call": ("call", _text),
    "proto": ("proto", _text),
    "protoset": ("protoset", _text),
    "import-paths": ("import_paths", _paths),
    "insecure": ("insecure", _switch),
    "cacert": ("cacert", _text),
    "cert": ("cert", _text),
    "key": ("key", _text),
    "cname": ("cname", _text),
    "lb-strategy": ("lb_strategy", _choice(LB_STRATEGIES)),
    "total": ("total", _count),
    "concurrency": ("concurrency", _count),
    "connections": ("connections", _count),
    "rps": ("rps", _count),
    "duration": ("duration_ns", _duration),
    "duration-stop": ("duration_stop", _choice(DURATION_STOPS)),
    "timeout": ("timeout_ns", _duration),
    "connect-timeout": ("connect_timeout_ns", _duration),
    "data": ("data", _json),
    "data-file": ("data", _json),
    "metadata": ("metadata", _metadata),
    "metadata-file": ("metadata", _metadata),
    "format": ("format", _choice(FORMATS)),
    "output": ("output", _text),
    "name": ("name", _text),
    "tags": ("tags", _string_map),
    "count-errors": ("count_errors", _switch),
    "skipFirst": ("skip_first", _count),
    "cpus": ("cpus", _count),
    "transport": ("transport", _choice(TRANSPORTS)),
}


def build_options(settings: Mapping[str, Any], stdin: TextIO) -> LoadtestOptions:
    """Typed, validated options from merged settings keyed like the long flags.

    Raises:
        SetupError: a value is invalid or the options contradict each other.
    """
    values = _resolve_files(dict(settings), stdin)
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if key == "host":
            converted["host"] = _text("host", value).strip()
            continue
        name, convert = _CONVERTERS[key]
        converted[name] = convert(f"--{key}", value)
    for required in ("call", "host"):
        if not converted.get(required):
            what = "--call" if required == "call" else "HOST:PORT (argument, or host in the config file)"
            raise SetupError(f"{what} is required")
    options = LoadtestOptions(
        **{f.name: converted[f.name] for f in fields(LoadtestOptions) if f.name in converted}
    )
    _validate(options)
    return options


def _resolve_files(values: dict[str, Any], stdin: TextIO) -> dict[str, Any]:
    """Turn -d @, --data-file and --metadata-file into the JSON text they point at (-d wins over -D)."""
    if values.get("data") == "@":
        values["data"] = stdin.read()
    for key, target in (("data-file", "data"), ("metadata-file", "metadata")):
        if key not in values:
            continue
        path = Path(_text(f"--{key}", values.pop(key)))
        try:
            text = path.read_text()
        except OSError as error:
            raise SetupError(f"cannot read {path}: {error.strerror}") from error
        values.setdefault(target, text)
    return values


def _validate(options: LoadtestOptions) -> None:
    data = options.data
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(item, dict) for item in items):
        raise SetupError("--data must be a JSON object or a non-empty array of objects")
    if options.concurrency < 1:
        raise SetupError("--concurrency must be at least 1")
    if not options.duration_ns and options.total < 1:
        raise SetupError("--total must be at least 1 (or give --duration)")
    if options.connections < 1:
        raise SetupError("--connections must be at least 1")
    if options.connections > options.concurrency:
        raise SetupError("number of connections cannot be greater than concurrency")
    if options.skip_first > options.effective_total:
        raise SetupError("you cannot skip more requests than those run")
    if options.connect_timeout_ns <= 0:
        raise SetupError("--connect-timeout must be positive")
    if options.proto and options.protoset:
        raise SetupError("give --proto or --protoset, not both")
    if bool(options.cert) != bool(options.key):
        raise SetupError("--cert and --key go together (mutual TLS): give both")


def machine_cpus() -> int:
    """CPUs of this machine, reported where ghz reports GOMAXPROCS."""
    return os.cpu_count() or 1
