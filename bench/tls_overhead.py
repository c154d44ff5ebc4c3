"""What TLS costs: Recommend throughput over plaintext, TLS and mutual TLS, on each front end.

Per front end, four servers run side by side: plaintext, a second plaintext one (the control: the gap
between two identical servers is the noise floor), TLS, and mutual TLS (certificates from the openssl CLI,
EC P-256). Load comes from `recserve loadtest` in a separate process, over the same grpc++ transport for
every server, with the same flags as `server_load.py` (4 connections, so handshakes are a negligible share:
what is measured is encrypting and decrypting every message). Runs interleave, in an order that rotates
every round; cells are medians, and ratios to plaintext are medians of the round-by-round ratios. The load
generator shares the cores with the servers, so its own CPU per request is reported beside the server's.

    .venv/bin/python bench/tls_overhead.py [--seconds 5] [--runs 7] [--concurrency 64] [--frontends native aio]
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, machine_note, median, write_result  # first: thread limits

# isort: on

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import server_load
from certificates import Pki, make_pki
from server_load import CALL, LOADTEST, ServerProcess, request_data, summarize

from recserve.client import ModelStatistics, RecommenderClient


@dataclass
class SecureServerProcess(ServerProcess):
    """A `recserve serve` child process and how a client must reach it."""

    client_options: dict[str, Any] = field(default_factory=dict)
    loadtest_flags: list[str] = field(default_factory=list)

    def statistics(self) -> ModelStatistics:
        """The server's batching counters, over its own transport security."""
        with RecommenderClient(self.address, **self.client_options) as client:
            return client.model_statistics()


@dataclass(frozen=True)
class Security:
    """One transport-security configuration: server flags, client arguments, loadtest flags."""

    serve_flags: list[str]
    client_options: dict[str, Any]
    loadtest_flags: list[str]


def securities(pki: Pki) -> dict[str, Security]:
    """Every configuration compared, by name."""
    plaintext = Security([], {}, ["--insecure"])
    server_tls = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    client_tls = {"root_certificates": pki.ca.cert}
    client_cert = {"certificate_chain": pki.client.cert, "private_key": pki.client.key}
    return {
        "plaintext": plaintext,
        "plaintext (control)": plaintext,
        "TLS": Security(server_tls, client_tls, ["--cacert", str(pki.ca.cert)]),
        "mutual TLS": Security(
            [*server_tls, "--tls-client-ca", str(pki.ca.cert)],
            {**client_tls, **client_cert},
            ["--cacert", str(pki.ca.cert), "--cert", str(pki.client.cert), "--key", str(pki.client.key)],
        ),
    }


def start_server(repository: Path, front_end: str, security: Security, workdir: Path) -> SecureServerProcess:
    """Start a server on a free port and wait until it reports SERVING (asked over its own security)."""
    flags = ["--frontend", front_end, *security.serve_flags]
    server = server_load.start_server(repository, flags, workdir, security.client_options)
    return SecureServerProcess(
        server.process, server.address, server.log, security.client_options, security.loadtest_flags
    )


def run_load(
    server: SecureServerProcess, data_file: Path, concurrency: int, seconds: float
) -> tuple[dict, float]:
    """One closed-loop run from a separate process: the ghz-format report and the generator's CPU seconds."""
    command = [
        *LOADTEST, *server.loadtest_flags, "--call", CALL,
        "-D", str(data_file), "-c", str(concurrency), "--connections", str(min(concurrency, 4)),
        "-z", f"{seconds}s", "-O", "json", server.address,
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=seconds + 120).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(output), cpu_s


def measure_cell(server: SecureServerProcess, data_file: Path, concurrency: int, seconds: float) -> dict:
    """Load once: throughput and latency, and CPU per request of the server and of the load generator."""
    before_stats, before_cpu = server.statistics(), server.cpu_seconds()
    report, generator_cpu_s = run_load(server, data_file, concurrency, seconds)
    after_stats, after_cpu = server.statistics(), server.cpu_seconds()
    requests = max(after_stats.inference_count - before_stats.inference_count, 1)
    calls = max(report["count"], 1)
    return {
        **summarize(report),
        "cpu_us_per_request": (after_cpu - before_cpu) / requests * 1e6,
        "generator_cpu_us_per_request": generator_cpu_s / calls * 1e6,
    }


def measure(
    servers: dict[tuple[str, str], SecureServerProcess], data_file: Path, args: argparse.Namespace
) -> list[dict]:
    """Every server at each concurrency, runs interleaved (order rotating each round); medians per server."""
    rows = []
    keys = list(servers)
    for concurrency in args.concurrency:
        runs: dict[tuple[str, str], list[dict]] = {key: [] for key in keys}
        for round_number in range(args.runs):
            shift = round_number % len(keys)
            for key in keys[shift:] + keys[:shift]:
                runs[key].append(measure_cell(servers[key], data_file, concurrency, args.seconds))
        for (front_end, name), cells in runs.items():
            rows.append(summarize_runs(front_end, name, concurrency, cells, runs[(front_end, "plaintext")]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def summarize_runs(
    front_end: str, name: str, concurrency: int, cells: list[dict], baseline: list[dict]
) -> dict:
    """Medians of one server's runs, and its ratios to plaintext taken round by round (the same minutes of
    this shared machine), whose median is steadier than a ratio of medians."""
    return {
        "front_end": front_end,
        "config": name,
        "concurrency": concurrency,
        **{key: median([cell[key] for cell in cells]) for key in cells[0]},
        "rps_runs": [cell["rps"] for cell in cells],
        "rps_vs_plaintext": median([c["rps"] / b["rps"] for c, b in zip(cells, baseline, strict=True)]),
        "cpu_vs_plaintext": median(
            [c["cpu_us_per_request"] / b["cpu_us_per_request"] for c, b in zip(cells, baseline, strict=True)]
        ),
    }


def main() -> None:
    """Start every server, measure, print a table, store bench/results/tls_overhead.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64])
    parser.add_argument("--frontends", nargs="+", default=["native", "aio"], choices=["native", "aio"])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="recserve-tls-"))
    pki = make_pki(workdir)
    data_file = workdir / "requests.json"
    data_file.write_text(json.dumps(request_data(args.model_repository)))
    configs = securities(pki)
    servers: dict[tuple[str, str], SecureServerProcess] = {}
    try:
        for front_end in args.frontends:
            for name, security in configs.items():
                server = start_server(args.model_repository, front_end, security, workdir)
                servers[(front_end, name)] = server
                run_load(server, data_file, 8, 1)  # warm connections and code paths
        rows = measure(servers, data_file, args)
    finally:
        for server in servers.values():
            server.stop()
    print_table(rows, args)
    write_result(
        "tls_overhead",
        {
            "machine": machine_note(),
            "seconds": args.seconds,
            "runs": args.runs,
            "load_generator": "recserve loadtest (grpc++ transport), 4 connections",
            "configs": {name: security.loadtest_flags for name, security in configs.items()},
            "rows": rows,
        },
    )


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """Markdown table of the medians."""
    print(f"TLS overhead, {machine_note()}; {args.seconds:g} s per run, median of {args.runs}")
    print(
        "| front end | config | concurrency | req/s | req/s vs plaintext | p50 ms | p99 ms "
        "| server CPU µs/req | vs plaintext | load generator CPU µs/req |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['front_end']} | {row['config']} | {row['concurrency']} | {row['rps']:.0f} "
            f"| {row['rps_vs_plaintext']:.2f}× | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {row['cpu_us_per_request']:.0f} | {row['cpu_vs_plaintext']:.2f}× "
            f"| {row['generator_cpu_us_per_request']:.0f} |"
        )


if __name__ == "__main__":
    main()
