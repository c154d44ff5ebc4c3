"""`recserve serve --workers 2` against one worker, on the same machine, through the same load generator.

Both servers run for the whole benchmark with the committed model config and the Redis state backend (which
more than one worker needs; one worker uses it too, so both pay the same for history reads), against one
`redis-server` started here. `recserve loadtest` sends Recommend (k = 10, 2,000 known users) over 16
connections (the kernel spreads connections, not calls, across workers) in a closed loop at each
concurrency. Rounds interleave both servers, the order reversed every other round; cells are medians.
Server CPU is the user + system time of the whole process tree (supervisor and workers); the load generator
shares the cores and its CPU per request is shown too. Memory is the tree's RSS and PSS after warm-up.

    .venv/bin/python bench/workers.py [--seconds 6] [--rounds 5] [--concurrency 16 64 128]
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, machine_note, median, write_result  # first: sets thread limits

# isort: on

import argparse
import json
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from perf_analyzer import K, write_inputs
from process_tree import tree_cpu_seconds, tree_memory_mb
from server_load import LOADTEST, ServerProcess, start_server

CALL = "recserve.v1.Recommender.Recommend"
CONNECTIONS = 16
WORKER_COUNTS = (1, 2)
WORKER_LISTENING = re.compile(r"\[worker (\d+)\] .* listening on")
METRICS = re.compile(r"metrics on http://[\d.]+:(\d+)/metrics")


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A throwaway redis-server on a free loopback port (no persistence: nothing here must survive)."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (make redis-deps, or apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit("redis-server did not start")


def start_workers(repository: Path, workers: int, redis_url: str, workdir: Path) -> ServerProcess:
    """`recserve serve --workers N`, once every worker has joined the port."""
    flags = ["--workers", str(workers), "--state-backend", "redis", "--redis-url", redis_url]
    server = start_server(repository, flags, workdir)
    deadline = time.monotonic() + 180
    while workers > 1 and len(set(WORKER_LISTENING.findall(server.log.read_text()))) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every worker started:\n{server.log.read_text()[-3000:]}")
        time.sleep(0.2)
    return server


def calls_by_worker(server: ServerProcess) -> dict[str, float]:
    """Finished calls per worker so far, from the merged /metrics (one worker: its own RPC count)."""
    port = METRICS.search(server.log.read_text()).group(1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    per_worker = dict(re.findall(r'^recserve_worker_rpc_total\{worker="(\d+)"\} (\S+)$', text, re.M))
    if per_worker:
        return {worker: float(count) for worker, count in per_worker.items()}
    return {"0": sum(float(n) for n in re.findall(r"^recserve_rpc_total\{.*\} (\S+)$", text, re.M))}


def run(server: ServerProcess, redis_pid: int, data: Path, concurrency: int, seconds: float) -> dict:
    """One closed-loop run: throughput, latency, CPU per request of the server tree and the load generator."""
    workers_before, server_before = calls_by_worker(server), tree_cpu_seconds(server.process.pid)
    redis_before = tree_cpu_seconds(redis_pid)
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    command = [
        *LOADTEST, "--insecure", "--call", CALL, "-D", str(data), "-c", str(concurrency),
        "--connections", str(CONNECTIONS), "-z", f"{seconds}s", "-O", "json", server.address,
    ]  # fmt: skip
    report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    wall = time.monotonic() - started
    server_s = tree_cpu_seconds(server.process.pid) - server_before
    redis_s = tree_cpu_seconds(redis_pid) - redis_before
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_s = (client_after.ru_utime + client_after.ru_stime) - (
        client_before.ru_utime + client_before.ru_stime
    )
    time.sleep(0.6)  # the workers' metrics snapshot every 0.5 s
    workers_after = calls_by_worker(server)
    split = sorted(workers_after[w] - workers_before.get(w, 0.0) for w in workers_after)
    ok = report["statusCodeDistribution"].get("OK", 0)
    latency = {p["percentage"]: p["latency"] / 1e6 for p in report["latencyDistribution"]}
    return {
        "rps": ok / (report["total"] / 1e9),
        "p50_ms": latency.get(50, 0.0),
        "p99_ms": latency.get(99, 0.0),
        "failed": sum(n for status, n in report["statusCodeDistribution"].items() if status not in ("OK", "Canceled")),
        "server_cores": server_s / wall,
        "server_us_per_request": server_s * 1e6 / max(ok, 1),
        "client_us_per_request": client_s * 1e6 / max(ok, 1),
        "redis_cores": redis_s / wall,
        "busiest_worker_share": split[-1] / max(sum(split), 1),
    }  # fmt: skip


def main() -> None:
    """Interleaved rounds per concurrency; medians; bench/results/workers.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--smoke", action="store_true", help="one 1 s round at c=16; writes no results")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.rounds, args.concurrency = 1.0, 1, [16]
    workdir = Path(tempfile.mkdtemp(prefix="recserve-workers-"))
    _, data = write_inputs(args.model_repository, workdir)
    redis, redis_url = start_redis(workdir)
    servers: dict[int, ServerProcess] = {}
    try:
        for count in WORKER_COUNTS:
            servers[count] = start_workers(args.model_repository, count, redis_url, workdir)
            run(servers[count], redis.pid, data, 32, 2)  # warm every worker's connections and code paths
        memory = {str(count): tree_memory_mb(server.process.pid) for count, server in servers.items()}
        rows = []
        for concurrency in args.concurrency:
            cells: dict[int, list[dict]] = {count: [] for count in WORKER_COUNTS}
            for round_number in range(args.rounds):
                order = WORKER_COUNTS if round_number % 2 == 0 else WORKER_COUNTS[::-1]
                for count in order:
                    cells[count].append(run(servers[count], redis.pid, data, concurrency, args.seconds))
                    print(
                        json.dumps({"workers": count, "concurrency": concurrency, **cells[count][-1]}),
                        file=sys.stderr,
                    )
            row: dict = {"concurrency": concurrency}
            for count, runs in cells.items():
                row[str(count)] = {key: median([r[key] for r in runs]) for key in runs[0]}
            row["ratios"] = [two["rps"] / one["rps"] for one, two in zip(cells[1], cells[2], strict=True)]
            row["ratio"] = median(row["ratios"])
            rows.append(row)
    finally:
        for server in servers.values():
            server.stop()
        redis.kill()
    for row in rows:
        one, two = row["1"], row["2"]
        print(
            f"c={row['concurrency']}: 1 worker {one['rps']:.0f}/s (p99 {one['p99_ms']:.1f} ms), 2 workers "
            f"{two['rps']:.0f}/s (p99 {two['p99_ms']:.1f} ms): {row['ratio']:.2f}x"
        )
    if args.smoke:
        return
    write_result(
        "workers",
        {
            "machine": machine_note(),
            "seconds": args.seconds,
            "rounds": args.rounds,
            "k": K,
            "connections": CONNECTIONS,
            "memory_mb": memory,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
