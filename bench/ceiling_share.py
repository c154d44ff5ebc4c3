"""Concurrency 128: the server's throughput as a share of its own pipeline's ceiling, and where the rest goes.

The target (issue: share of the ceiling) is >= 80% of the in-process pipeline at the server's max batch
size (64), measured in the same minutes. The machine drifts by tens of percent within an hour, so every
round measures both, back to back, and the share is taken per round:

- **the server** (`recserve serve`, committed config), Recommend at concurrency 128 through
  `recserve loadtest` for `--seconds`: OK answers/s, and over the same run the CPU of every server thread
  (per-thread /proc counters: event loop, batch threads, ANN threads, TensorFlow's pool, grpc++), the load
  generator's CPU, the machine's idle time, and from `GetModelStatistics` each stage's wall time per batch;
- **the ceiling**: `bench/pipeline_ceiling.py --batch-sizes 64` in a process of its own for `--seconds`
  (the server idle meanwhile), rows/s and each stage per batch, and that process's CPU per row.

    .venv/bin/python bench/ceiling_share.py [--model-repository models] [--rounds 5] [--seconds 8]
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, machine_note, median, write_result  # first: sets thread limits

# isort: on

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from light_load import per_batch_ms
from server_load import (
    GRPC_THREADS,
    SERVER_MAX_BATCH_SIZE,
    ServerProcess,
    request_data,
    run_load,
    start_server,
)
from server_load import summarize as summarize_load

from recserve.server.pipeline import STAGES

CONCURRENCY = 128
TARGET_SHARE = 0.8
# The server's threads by what they do (names as /proc shows them, 15 characters at most).
THREADS = ("event_loop", "batch", "ann", "tensorflow", "grpc", "other")


def thread_kind(is_main: bool, name: str) -> str:
    """Which of THREADS a server thread is."""
    if is_main:
        return "event_loop"
    for prefix, kind in (("batch", "batch"), ("ann", "ann"), ("tf_", "tensorflow")):
        if name.startswith(prefix):
            return kind
    return "grpc" if name.startswith(GRPC_THREADS) else "other"


def server_cpu(server: ServerProcess) -> dict[str, float]:
    """CPU seconds the server's threads have used, by kind (every kind present)."""
    return {**dict.fromkeys(THREADS, 0.0), **server.cpu_by_thread_group(thread_kind)}


def machine_idle_s() -> float:
    """Idle CPU seconds of the whole machine since boot (all cores; /proc/stat idle + iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the load generator, the ceiling process)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_server(
    server: ServerProcess, data: Path, seconds: float, client_start_cpu_s: float = 0.0
) -> dict[str, float]:
    """One closed-loop run at CONCURRENCY: throughput, CPU per request by thread, stages per batch.

    The load generator's CPU leaves out `client_start_cpu_s`, what its process costs to start and stop.
    """
    stats, cpu = server.statistics(), server_cpu(server)
    idle, client, started = machine_idle_s(), children_cpu_s(), time.monotonic()
    report = run_load(server.address, data, CONCURRENCY, seconds, use_ghz=False)
    wall = time.monotonic() - started
    idle, client = machine_idle_s() - idle, children_cpu_s() - client
    after_stats, after_cpu = server.statistics(), server_cpu(server)
    requests = max(1, after_stats.inference_count - stats.inference_count)
    batches = max(1, after_stats.execution_count - stats.execution_count)
    return {
        **summarize_load(report),
        "mean_batch": requests / batches,
        **{f"cpu_us_{kind}": (after_cpu[kind] - cpu[kind]) / requests * 1e6 for kind in THREADS},
        "cpu_us_load_generator": max(0.0, client - client_start_cpu_s) / requests * 1e6,
        "idle_us": idle / requests * 1e6,
        "busy_cores": (os.cpu_count() or 1) - idle / wall,
        **{f"server_{name}": value for name, value in per_batch_ms(stats, after_stats).items()},
    }


def measure_ceiling(repository: Path, seconds: float) -> dict[str, float]:
    """The pipeline at the server's max batch size in a process of its own: rows/s, stages, CPU per row.

    `process_cpu_s` includes the process's start (the model load); `main` subtracts what a start-only run
    costs (`ceiling_start_cpu_s`) for `ceiling_cpu_us_per_row`.
    """
    client = children_cpu_s()
    command = [sys.executable, str(Path(__file__).with_name("pipeline_ceiling.py")), "--model-repository",
               str(repository), "--batch-sizes", str(SERVER_MAX_BATCH_SIZE), "--seconds", str(seconds),
               "--json"]  # fmt: skip
    (row,) = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return {**row, "process_cpu_s": children_cpu_s() - client}


def one_round(
    servers: dict[str, ServerProcess], repository: Path, data: Path, seconds: float, client_start_cpu_s: float
) -> dict[str, dict[str, float]]:
    """Every server at CONCURRENCY, then the ceiling: per server, its figures, the ceiling's and the share."""
    loads = {
        name: measure_server(server, data, seconds, client_start_cpu_s) for name, server in servers.items()
    }
    ceiling = measure_ceiling(repository, seconds)
    return {
        name: {
            **load,
            "ceiling_rows_per_s": ceiling["rows_per_s"],
            "ceiling_ms_per_batch": ceiling["ms_per_batch"],
            **{f"ceiling_{stage}_ms": ceiling[f"{stage}_ms"] for stage in STAGES},
            "ceiling_cpu_s": ceiling["process_cpu_s"],
            "ceiling_rows": ceiling["rows_per_s"] * seconds,  # about: it runs `seconds` of batches
            "share": load["rps"] / ceiling["rows_per_s"],
        }
        for name, load in loads.items()
    }


def ceiling_start_cpu_s(repository: Path) -> float:
    """CPU seconds of a ceiling process that loads the model and runs next to nothing (0.01 s)."""
    return measure_ceiling(repository, 0.01)["process_cpu_s"]


def main() -> None:
    """Interleave the servers and the ceiling for `--rounds`; print the split; bench/results/ceiling_share.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--result", default="ceiling_share", help="name of the result file (bench/results/)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--server-flags",
        action="append",
        help="a server's extra `recserve serve` flags, one string; repeat to compare servers in the same "
        "rounds (default: one server, the committed config)",
    )
    parser.add_argument("--smoke", action="store_true", help="one 1 s round; writes no results")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.seconds = 1, 1.0
    configs = args.server_flags or [""]
    workdir = Path(tempfile.mkdtemp(prefix="recserve-ceiling-share-"))
    data = workdir / "requests.json"
    data.write_text(json.dumps(request_data(args.model_repository)))
    start_cpu = ceiling_start_cpu_s(args.model_repository)
    servers: dict[str, ServerProcess] = {}
    try:
        for flags in configs:
            servers[flags] = start_server(args.model_repository, flags.split(), workdir)
            run_load(servers[flags].address, data, CONCURRENCY, 2.0, use_ghz=False)  # warm code and pages
        before = children_cpu_s()
        run_load(next(iter(servers.values())).address, data, 1, 0.01, use_ghz=False)
        client_start_cpu = children_cpu_s() - before  # a run of next to nothing: start and stop
        rounds = []
        for _ in range(args.rounds):
            rounds.append(one_round(servers, args.model_repository, data, args.seconds, client_start_cpu))
            print(json.dumps(rounds[-1]), file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    results = {}
    for flags in configs:
        entries = [entry[flags] for entry in rounds]
        for entry in entries:
            entry["ceiling_cpu_us_per_row"] = (
                max(0.0, entry["ceiling_cpu_s"] - start_cpu) / entry["ceiling_rows"] * 1e6
            )
        cell = {key: median([entry[key] for entry in entries]) for key in entries[0]}
        print_summary(flags, cell, args)
        results[flags] = {"rounds": entries, "median": cell}
    if not args.smoke:
        write_result(
            args.result,
            {"machine": machine_note(), "seconds": args.seconds, "concurrency": CONCURRENCY, "stages": list(STAGES),
             "configs": results, "ceiling_start_cpu_s": start_cpu,
             "load_generator_start_cpu_s": client_start_cpu},
        )  # fmt: skip


def print_summary(flags: str, cell: dict[str, float], args: argparse.Namespace) -> None:
    """One server's share and its split, as text."""
    share = cell["share"]
    print(
        f"`recserve serve {flags}`".replace(" `", "`")
        + f" at concurrency {CONCURRENCY}, {args.rounds} rounds "
        f"of {args.seconds:g} s, medians; {machine_note()}"
    )
    print(
        f"server {cell['rps']:.0f} req/s, ceiling at batch {SERVER_MAX_BATCH_SIZE} {cell['ceiling_rows_per_s']:.0f} "
        f"rows/s: share {share:.0%} (median of per-round shares; target {TARGET_SHARE:.0%}: "
        f"{'met' if share >= TARGET_SHARE else 'not met'})"
    )
    total = sum(cell[f"cpu_us_{kind}"] for kind in THREADS)
    print(f"  server CPU {total:.0f} us/request, ceiling {cell['ceiling_cpu_us_per_row']:.0f} us/row")
    for kind in (*THREADS, "load_generator"):
        print(f"    {kind}: {cell[f'cpu_us_{kind}']:.0f}")
    print(f"    idle: {cell['idle_us']:.0f} ({cell['busy_cores']:.2f} cores busy)")
    print(f"  mean batch {cell['mean_batch']:.1f}; stage ms per batch, server / ceiling:")
    for stage in STAGES:
        print(f"    {stage}: {cell[f'server_{stage}_ms']:.2f} / {cell[f'ceiling_{stage}_ms']:.2f}")


if __name__ == "__main__":
    main()
