"""The server under closed-loop load: batching off vs fixed delays vs adaptive, at several concurrencies.

Each configuration runs in its own server process (`recserve serve` with the flags below); load comes
from a separate process (`recserve loadtest`, ghz-compatible; `--ghz` uses a real ghz binary instead).
Per cell: requests/s, p50/p90/p99, mean batch size (from the server's own statistics) and server CPU per
request. Each cell is the median of `--runs` runs. At the concurrencies of `--ceiling-at` (128) every round
also measures the in-process pipeline ceiling (`pipeline_ceiling.py --json`) right after its server
runs, so that the server's share of the ceiling compares measurements taken side by side.

    .venv/bin/python bench/server_load.py [--seconds 5] [--runs 3] [--concurrency 1 8 32 128 256]
"""

from __future__ import annotations

# isort: off
from common import (
    DEFAULT_REPOSITORY,
    machine_note,
    median,
    write_result,
)  # first: sets thread limits before numpy loads

# isort: on

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from recserve.client import ModelStatistics, RecommenderClient

CONFIGS: dict[str, list[str]] = {
    "batching off": ["--max-batch-size", "1", "--max-queue-delay-us", "0"],
    # the committed config: delay 0, two instances (the second only for a full batch), 2 ANN threads
    "default": [],
    "one instance": ["--instance-count", "1"],
    "2 instances, any batch": ["--no-overlap-only-full-batches"],  # Triton's rule: a free instance takes all
    "default, grpc.aio front end": ["--frontend", "aio"],
    "default, 1 ANN thread": ["--ann-threads", "1"],
    "delay 500us": ["--max-queue-delay-us", "500"],
    "delay 2ms": ["--max-queue-delay-us", "2000"],
    "adaptive": ["--adaptive-batching"],
}
CEILING_BATCH_SIZES = ("64", "128", "256", "512")  # where the best batch size has always been
SERVER_MAX_BATCH_SIZE = 64  # the default max_batch_size (models/recommender/config.yaml)
THREAD_GROUPS = ("event_loop", "batch_threads", "tensorflow", "grpc_core")
# Threads of grpc's C core (grpc.aio) and of grpc++ (the native front end), by name (15 characters at most).
GRPC_THREADS = (
    "grpc",
    "event_engine",
    "lifeguard",
    "nexting_thread",
    "default-executo",
    "resolver-execut",
    "timer_manager",
    "recserve-ops",
)
LISTENING = re.compile(r"listening on [\d.]+:(\d+)")
CALL = "recserve.v1.Recommender.Recommend"


class Periodic:
    """Calls `tick()` every `interval_s` on a thread of its own while its `with` block runs (samplers,
    background writers beside a load)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Periodic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def tick(self) -> None:
        """One round of the work."""
        raise NotImplementedError


@dataclass
class ServerProcess:
    """A `recserve serve` child process."""

    process: subprocess.Popen
    address: str
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used."""
        return sum(self.cpu_by_thread_group().values())

    def cpu_by_thread_group(self, group_of: Callable[[bool, str], str] | None = None) -> dict[str, float]:
        """CPU seconds per thread group: by default the event loop, other Python threads (batches),
        TensorFlow, gRPC; `group_of(is_main_thread, os_thread_name)` groups otherwise."""
        group_of = group_of or _thread_group
        groups: dict[str, float] = {}
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the thread ended
            group = group_of(int(task.name) == self.process.pid, name)
            groups[group] = groups.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf(
                "SC_CLK_TCK"
            )
        return groups

    def statistics(self) -> ModelStatistics:
        """The server's batching counters."""
        with RecommenderClient(self.address) as client:
            return client.model_statistics()

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _thread_group(is_main: bool, name: str) -> str:
    if is_main:
        return "event_loop"
    if name.startswith("tf_"):
        return "tensorflow"
    if name.startswith(GRPC_THREADS):
        return "grpc_core"
    return "batch_threads"


def start_server(
    repository: Path, flags: list[str], workdir: Path, client_options: dict[str, Any] | None = None
) -> ServerProcess:
    """Start a server on a free port and wait until it reports SERVING (asked with `client_options`, e.g.
    the TLS arguments of RecommenderClient)."""
    log = workdir / f"server-{time.monotonic_ns()}.log"
    command = [
        sys.executable,
        "-m",
        "recserve",
        "serve",
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--model-repository",
        str(repository),
        "--state-dir",
        str(log.with_suffix(".state")),
        *flags,
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text())
        if match:
            server = ServerProcess(process, f"127.0.0.1:{match.group(1)}", log)
            with RecommenderClient(server.address, **(client_options or {})) as client:
                client.wait_until_serving(max(deadline - time.monotonic(), 1))
            return server
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        time.sleep(0.2)
    raise RuntimeError(f"server did not become ready:\n{log.read_text()}")


def repository_with(section: str, values: dict, model_repository: Path, workdir: Path) -> Path:
    """A model repository whose config.yaml differs in `values` of `section` (batching, retrieval...) and
    whose versions link to the built ones: a bench server with other settings, the committed config intact."""
    source = model_repository / "recommender"
    target = workdir / f"models-{time.monotonic_ns()}" / "recommender"
    target.mkdir(parents=True)
    config = yaml.safe_load((source / "config.yaml").read_text())
    config.setdefault(section, {}).update(values)
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    for version in source.iterdir():
        if version.name.isdigit():
            (target / version.name).symlink_to(version.resolve(), target_is_directory=True)
    return target.parent


def request_data(repository: Path, count: int = 2000, seed: int = 1) -> list[dict]:
    """Realistic Recommend requests: known users, 0-5 recent items, k=10."""
    version = max(
        (p for p in (repository / "recommender").iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    users = (version / "user_ids.txt").read_text().split()
    items = (version / "item_ids.txt").read_text().split()
    rng = random.Random(seed)
    return [
        {"user_id": rng.choice(users), "recent_item_ids": rng.sample(items, rng.randint(0, 5)), "k": 10}
        for _ in range(count)
    ]


LOADTEST = [sys.executable, "-m", "recserve", "loadtest"]  # every benchmark's load generator, as a process


def run_load(address: str, data_file: Path, concurrency: int, seconds: float, use_ghz: bool) -> dict:
    """One closed-loop run from a separate process; returns the ghz-format JSON report."""
    tool = [shutil.which("ghz")] if use_ghz else LOADTEST
    command = [
        *tool,
        "--insecure",
        "--call",
        CALL,
        "-D",
        str(data_file),
        "-c",
        str(concurrency),
        "--connections",
        str(min(concurrency, 4)),
        "-z",
        f"{seconds}s",
        "-O",
        "json",
        address,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=seconds + 120).stdout
    return json.loads(output)


def summarize(report: dict) -> dict:
    """Throughput of successful calls, latency percentiles (ms) and errors from a ghz-format report."""
    percentiles = {
        entry["percentage"]: entry["latency"] / 1e6 for entry in report.get("latencyDistribution") or []
    }
    ok = report["statusCodeDistribution"].get("OK", 0)
    return {
        "rps": ok / (report["total"] / 1e9),
        "p50_ms": percentiles.get(50, float("nan")),
        "p90_ms": percentiles.get(90, float("nan")),
        "p99_ms": percentiles.get(99, float("nan")),
        "errors": report["count"] - ok,
    }


def measure_cell(
    server: ServerProcess, data_file: Path, concurrency: int, seconds: float, use_ghz: bool
) -> dict:
    """Load once and read throughput, latency, batch size and CPU per request."""
    before_stats, before_cpu = server.statistics(), server.cpu_by_thread_group()
    report = run_load(server.address, data_file, concurrency, seconds, use_ghz)
    after_stats, after_cpu = server.statistics(), server.cpu_by_thread_group()
    requests = after_stats.inference_count - before_stats.inference_count
    batches = after_stats.execution_count - before_stats.execution_count
    return {
        **summarize(report),
        "mean_batch": requests / batches if batches else 0.0,
        "cpu_us_per_request": (sum(after_cpu.values()) - sum(before_cpu.values())) / max(requests, 1) * 1e6,
        **{
            f"cpu_us_{group}": (after_cpu.get(group, 0.0) - before_cpu.get(group, 0.0))
            / max(requests, 1)
            * 1e6
            for group in THREAD_GROUPS
        },
        **{
            f"stage_us_{stage.name}": _stage_us(before_stats, after_stats, stage.name) / max(requests, 1)
            for stage in after_stats.stages
        },
    }


def ceiling_rows(repository: Path, batch_sizes: Sequence[str], seconds: float) -> list[dict]:
    """`bench/pipeline_ceiling.py` in a process of its own: one row per batch size."""
    command = [
        sys.executable,
        str(Path(__file__).with_name("pipeline_ceiling.py")),
        "--model-repository",
        str(repository),
        "--batch-sizes",
        *batch_sizes,
        "--seconds",
        str(seconds),
        "--json",
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure_ceiling(repository: Path) -> dict:
    """The in-process pipeline now, between server runs (the servers idle meanwhile): its best batch size's
    row, and its row at the server's max_batch_size (64) for comparison."""
    rows = ceiling_rows(repository, CEILING_BATCH_SIZES, 1)
    best = max(rows, key=lambda row: row["rows_per_s"])
    at_server_batch = next(row for row in rows if row["batch_size"] == SERVER_MAX_BATCH_SIZE)
    return {**best, "rows_per_s_at_server_batch": at_server_batch["rows_per_s"]}


def _stage_us(before: ModelStatistics, after: ModelStatistics, name: str) -> float:
    def total(stats: ModelStatistics) -> int:
        return next((stage.compute_duration_us for stage in stats.stages if stage.name == name), 0)

    return float(total(after) - total(before))


def main() -> None:
    """Run every configuration at every concurrency and print a markdown table.

    All servers start first and the runs interleave (run 1 of every config, then run 2, ...), so a slow
    drift of this noisy machine hits every configuration alike.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--ghz", action="store_true", help="drive the load with ghz instead of recserve loadtest"
    )
    parser.add_argument(
        "--ceiling-at",
        type=int,
        nargs="*",
        default=[128],
        help="concurrencies whose every round also measures the in-process pipeline ceiling",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="recserve-bench-"))
    data_file = workdir / "requests.json"
    data_file.write_text(json.dumps(request_data(args.model_repository)))
    servers: dict[str, ServerProcess] = {}
    try:
        for name in args.configs:
            servers[name] = start_server(args.model_repository, CONFIGS[name], workdir)
            run_load(servers[name].address, data_file, 8, 1, args.ghz)  # warm connections and code paths
        rows = [
            measure_row(servers, data_file, concurrency, args, concurrency in args.ceiling_at)
            for concurrency in args.concurrency
        ]
    finally:
        for server in servers.values():
            server.stop()
    flat = [row for group in rows for row in group]
    print_table(flat, args)
    write_result(
        "server_load",
        {
            "machine": machine_note(),
            "seconds": args.seconds,
            "runs": args.runs,
            "load_generator": "ghz" if args.ghz else "recserve loadtest",
            "configs": {name: CONFIGS[name] for name in args.configs},
            "rows": flat,
        },
    )


def measure_row(
    servers: dict[str, ServerProcess],
    data_file: Path,
    concurrency: int,
    args: argparse.Namespace,
    with_ceiling: bool = False,
) -> list[dict]:
    """Every configuration at one concurrency, runs interleaved; medians per configuration.

    With `with_ceiling`, every round also measures the in-process pipeline ceiling after its server runs.
    """
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    ceilings: list[dict] = []
    for _ in range(args.runs):
        for name, server in servers.items():
            runs[name].append(measure_cell(server, data_file, concurrency, args.seconds, args.ghz))
        if with_ceiling:
            ceilings.append(measure_ceiling(args.model_repository))
    rows = []
    for name, cells in runs.items():
        row = {
            "config": name,
            "concurrency": concurrency,
            **{key: median([c[key] for c in cells]) for key in cells[0]},
        }
        if ceilings:
            row["ceiling_rows_per_s"] = median([c["rows_per_s"] for c in ceilings])
            row["ceiling_rows_per_s_at_server_batch"] = median(
                [c["rows_per_s_at_server_batch"] for c in ceilings]
            )
            row["ceiling_runs"] = ceilings
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """Markdown table of the medians."""
    print(
        f"Server under closed-loop load, {machine_note()}; {args.seconds:g} s per run, median of {args.runs}"
    )
    print(
        "| config | concurrency | req/s | p50 ms | p90 ms | p99 ms | mean batch | server CPU µs/req | errors |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['config']} | {row['concurrency']} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} "
            f"| {row['p99_ms']:.2f} | {row['mean_batch']:.1f} | {row['cpu_us_per_request']:.0f} | {row['errors']:.0f} |"
        )


if __name__ == "__main__":
    main()
