"""Measure `recserve loadtest`'s own ceiling: requests/sec against a trivial server, per concurrency.

Starts `bench/trivial_server.py` in separate processes (several share one port through SO_REUSEPORT, which
gRPC sets on Linux), then runs `recserve loadtest -z DURATION -c C` as a subprocess for each concurrency,
RUNS times, and prints a markdown table with the median requests/sec and where the CPU went:

- client us/call: CPU time of the loadtest process per call, less the fixed cost of starting up (measured
  with `-n 1` runs); client ceiling/core = 1e6 / that, what one generator process could drive with a
  whole core to itself.
- client % / server %: CPU used during the run, in percent of one core (over 100%: several threads).

On a machine with few cores the generator and the server compete for them, so read rps with the CPU columns:
when the server processes are near 100% each, the server, not the generator, is the limit.

Usage: python bench/loadtest_ceiling.py [--concurrency 1,8,32,128] [--duration 5s] [--runs 3]
       [--connections 1] [--server-processes 1]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from recserve.client.loadtest.options import parse_go_duration

REPO_ROOT = Path(__file__).resolve().parent.parent
CALL = "grpc.health.v1.Health/Check"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One loadtest run."""

    rps: float
    count: int
    client_cpu_s: float
    server_cpu_s: float
    p50_ms: float


def start_servers(processes: int) -> tuple[list[subprocess.Popen[str]], str]:
    """Start the trivial server processes on one port; returns them and HOST:PORT."""
    servers: list[subprocess.Popen[str]] = []
    port = 0
    for _ in range(processes):
        server = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "bench" / "trivial_server.py"), "--port", str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = server.stdout.readline() if server.stdout else ""
        match = re.search(r"listening on (\S+):(\d+)", line)
        if not match:
            raise RuntimeError(f"trivial server did not start: {line!r}")
        port = int(match.group(2))
        servers.append(server)
    return servers, f"127.0.0.1:{port}"


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_loadtest(target: str, arguments: list[str]) -> tuple[str, float]:
    """Run `recserve loadtest` to the end; returns its summary output and its CPU seconds."""
    command = [
        sys.executable,
        "-m",
        "recserve",
        "loadtest",
        "--insecure",
        "--call",
        CALL,
        *arguments,
        target,
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"loadtest failed ({status}): {' '.join(command)}")
    return output, usage.ru_utime + usage.ru_stime


def summary_value(output: str, label: str) -> str:
    match = re.search(rf"^\s+{re.escape(label)}:\t(.+)$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no {label} in loadtest output:\n{output}")
    return match.group(1).strip()


def milliseconds(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"ns": 1e-6, "ms": 1.0, "s": 1e3}[unit]


def measure(
    target: str, servers: list[subprocess.Popen[str]], concurrency: int, args: argparse.Namespace
) -> Sample:
    server_before = sum(process_cpu_s(server.pid) for server in servers)
    connections = str(min(args.connections, concurrency))
    arguments = ["-z", args.duration, "-c", str(concurrency), "--connections", connections]
    output, client_cpu_s = run_loadtest(target, arguments)
    server_cpu_s = sum(process_cpu_s(server.pid) for server in servers) - server_before
    p50 = re.search(r"50 % in (.+?) $", output, re.MULTILINE)
    return Sample(
        rps=float(summary_value(output, "Requests/sec")),
        count=int(summary_value(output, "Count")),
        client_cpu_s=client_cpu_s,
        server_cpu_s=server_cpu_s,
        p50_ms=milliseconds(p50.group(1)) if p50 else float("nan"),
    )


def startup_cpu_s(target: str, runs: int) -> float:
    """CPU seconds a loadtest spends outside the load itself: imports, reflection, connecting, reporting."""
    return statistics.median(run_loadtest(target, ["-n", "1", "-c", "1"])[1] for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure recserve loadtest's requests/sec ceiling.")
    parser.add_argument("--concurrency", default="1,8,32,128", help="comma-separated -c values")
    parser.add_argument("--duration", default="5s", help="-z per run (Go duration)")
    parser.add_argument("--runs", type=int, default=3, help="runs per concurrency; the median is reported")
    parser.add_argument("--connections", type=int, default=1, help="--connections (capped at -c)")
    parser.add_argument("--server-processes", type=int, default=1, help="trivial server processes")
    args = parser.parse_args()
    servers, target = start_servers(args.server_processes)
    try:
        duration_s = parse_go_duration(args.duration) / 1e9
        baseline = startup_cpu_s(target, args.runs)
        rows = []
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            samples = [measure(target, servers, concurrency, args) for _ in range(args.runs)]
            rows.append((concurrency, samples))
        print_table(rows, baseline, duration_s, args)
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)


def print_table(
    rows: list[tuple[int, list[Sample]]], baseline: float, duration_s: float, args: argparse.Namespace
) -> None:
    cpus = os.cpu_count()
    print(
        f"\nrecserve loadtest vs trivial server ({args.server_processes} process(es)), -z {args.duration}, "
        f"median of {args.runs}, {cpus} CPUs, --connections {args.connections}, "
        f"startup CPU {baseline:.2f} s subtracted\n"
    )
    print(
        "| -c | requests/sec (median) | runs | p50 latency | client us/call | client ceiling/core | "
        "client % | server % |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for concurrency, samples in rows:
        median = statistics.median(sample.rps for sample in samples)
        middle = min(samples, key=lambda sample: abs(sample.rps - median))
        client_us = (middle.client_cpu_s - baseline) / middle.count * 1e6
        client_pct = (middle.client_cpu_s - baseline) / duration_s * 100
        server_pct = middle.server_cpu_s / duration_s * 100
        runs = " / ".join(f"{sample.rps:.0f}" for sample in samples)
        print(
            f"| {concurrency} | {median:.0f} | {runs} | {middle.p50_ms:.2f} ms | {client_us:.0f} | "
            f"~{1e6 / client_us:.0f} rps | {client_pct:.0f} | {server_pct:.0f} |"
        )


if __name__ == "__main__":
    main()
