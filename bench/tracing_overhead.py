"""What tracing costs: the server with tracing off, on at the default sampling ratio, and on at 100%.

Spans go over OTLP/gRPC to a counting collector in another process (`otlp_sink.py`), as in production.
The servers run side by side and their runs interleave (see `server_load.py`); cells are medians. A
second tracing-off server is the control: the gap between the two identical servers is the noise floor.

    .venv/bin/python bench/tracing_overhead.py [--seconds 5] [--runs 5] [--concurrency 1 16 64]
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, machine_note, write_result  # first: thread limits before numpy

# isort: on

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from server_load import ServerProcess, measure_row, request_data, run_load, start_server

from recserve.server.settings import DEFAULT_SAMPLING_RATIO


def start_sink(workdir: Path) -> tuple[subprocess.Popen, str]:
    """The counting collector, and its endpoint."""
    port_file = workdir / "sink.port"
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("otlp_sink.py")), str(port_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the OTLP sink did not start")
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{port_file.read_text()}"


def configs(endpoint: str) -> dict[str, list[str]]:
    """`recserve serve` flags per configuration."""
    exporter = ["--tracing-exporter", "otlp_grpc", "--tracing-endpoint", endpoint]
    return {
        "tracing off": ["--tracing-exporter", "none"],
        # The same as the first: how far two identical servers drift apart here (the noise floor).
        "tracing off (control)": ["--tracing-exporter", "none"],
        f"tracing on, ratio {DEFAULT_SAMPLING_RATIO:g} (default)": exporter,
        "tracing on, ratio 1": [*exporter, "--tracing-sampling-ratio", "1"],
    }


def main() -> None:
    """Measure every configuration at every concurrency; print a table; store the JSON result."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    args.ghz = False
    workdir = Path(tempfile.mkdtemp(prefix="recserve-tracing-"))
    data_file = workdir / "requests.json"
    data_file.write_text(json.dumps(request_data(args.model_repository)))
    sink, endpoint = start_sink(workdir)
    flags = configs(endpoint)
    servers: dict[str, ServerProcess] = {}
    try:
        for name, config_flags in flags.items():
            servers[name] = start_server(args.model_repository, config_flags, workdir)
            run_load(servers[name].address, data_file, 8, 1, False)  # warm connections and code paths
        rows = [row for c in args.concurrency for row in measure_row(servers, data_file, c, args)]
    finally:
        for server in servers.values():
            server.stop()
        sink.send_signal(signal.SIGTERM)
        sink_report = json.loads(sink.communicate(timeout=30)[0] or "{}")
    print_table(rows, args)
    print(f"spans received by the collector: {sink_report.get('spans', 0)}")
    write_result(
        "tracing_overhead",
        {
            "machine": machine_note(),
            "seconds": args.seconds,
            "runs": args.runs,
            "configs": {
                name: [f for f in config_flags if f != endpoint] for name, config_flags in flags.items()
            },
            "spans_exported": sink_report.get("spans", 0),
            "rows": rows,
        },
    )


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """Markdown table of the medians."""
    print(f"Tracing overhead, {machine_note()}; {args.seconds:g} s per run, median of {args.runs}")
    print("| config | concurrency | req/s | p50 ms | p99 ms | server CPU µs/req |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['config']} | {row['concurrency']} | {row['rps']:.0f} | {row['p50_ms']:.2f} "
            f"| {row['p99_ms']:.2f} | {row['cpu_us_per_request']:.0f} |"
        )


if __name__ == "__main__":
    main()
