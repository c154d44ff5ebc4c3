"""Overload from outside: goodput, refusal speed and recovery, with admission on against admission off.

Everything runs on the same cores as the load generator (`recserve loadtest`, a separate process), against
`recserve serve` processes of the same model version:

1. capacity: Recommend at c=64 over the same 8 connections as every other cell, closed loop, no deadline
   (what the server does when it is busy, not overloaded): OK answers per second;
2. deadline storms: closed loops of 3,000 and 6,000 callers whose every call has a 500 ms deadline, against
   a server with admission (the defaults) and one without (`max_queue_wait_microseconds: 0`,
   `deadline_admission: false`: queue until the deadline passes, as before), interleaved: OK/s against
   capacity, statuses, OK latency, refusal latency;
3. open loop: a fixed rate of 10 × capacity (`--rps`, callers enough that the schedule never waits for
   answers; 1 s deadlines) against the admission server: accepted rate and p50/p99, refusal latency, queue
   depth and RSS sampled every 0.25 s;
4. recovery: right after the open loop, c=8 for 10 s; the p99 of each 1 s window against the same load
   before the storm, and how long until it is back within 1.5x.

Results go to bench/results/overload.json; docs/reliability.md ("Overload") quotes them.

    .venv/bin/python bench/overload.py [--seconds 15] [--rounds 3]
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, REPO_ROOT, machine_note, median, write_result  # first: thread limits

# isort: on

import argparse
import contextlib
import json
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from server_load import LOADTEST, Periodic, ServerProcess, repository_with, request_data, start_server

CALL = "recserve.v1.Recommender.Recommend"
DEADLINE = "500ms"
STORM_CALLERS = (3000, 6000)
OPEN_LOOP_FACTOR = 10
CONNECTIONS = "8"  # every cell, capacity included: one connection caps the server at ~2/3 of its capacity
RECOVERY_CONCURRENCY = 8
NO_ADMISSION = {"max_queue_wait_microseconds": 0, "deadline_admission": False}
DOCS = REPO_ROOT / "docs" / "reliability.md"


def loadtest(address: str, data_file: Path, *options: str, timeout_s: float = 300) -> dict:
    """One `recserve loadtest` run; its ghz-format JSON report (with per-call details)."""
    command = [*LOADTEST, "--insecure", "--call", CALL, "-D", str(data_file), *options, "-O", "json", address]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if finished.returncode != 0:
        raise RuntimeError(f"loadtest failed: {finished.stderr[-2000:]}")
    return json.loads(finished.stdout)


def percentile(values: list[float], share: float) -> float:
    """The `share` percentile (0-1) of `values`, nearest rank; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def by_status(report: dict) -> dict[str, list[float]]:
    """Per-call latencies (ms) by status, from the report's details."""
    latencies: dict[str, list[float]] = {}
    for detail in report.get("details") or []:
        latencies.setdefault(detail["status"], []).append(detail["latency"] / 1e6)
    return latencies


def summary(report: dict, seconds: float) -> dict:
    """OK/s, statuses, OK latency and refusal latency of one run."""
    latencies = by_status(report)
    ok, refused = latencies.get("OK", []), latencies.get("ResourceExhausted", [])
    return {
        "ok_per_s": len(ok) / seconds,
        "calls_per_s": report["count"] / seconds,
        "statuses": report["statusCodeDistribution"],
        "ok_p50_ms": percentile(ok, 0.5),
        "ok_p99_ms": percentile(ok, 0.99),
        "refused_p50_ms": percentile(refused, 0.5),
        "refused_p99_ms": percentile(refused, 0.99),
    }


class Sampler(Periodic):
    """Samples a server's RSS (from /proc) and queue depth (from /metrics) every `interval_s`, in a thread."""

    def __init__(self, server: ServerProcess, interval_s: float = 0.25) -> None:
        super().__init__(interval_s)
        self._server = server
        self._metrics_url = metrics_url(server)
        self.rss_mb: list[float] = []
        self.queue_depth: list[float] = []

    def tick(self) -> None:
        """One sample of each."""
        self.rss_mb.append(rss_mb(self._server))
        with contextlib.suppress(OSError, ValueError):
            self.queue_depth.append(gauge(self._metrics_url, "recserve_queue_depth"))


def rss_mb(server: ServerProcess) -> float:
    """Resident memory of the server process, MB."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metrics_url(server: ServerProcess) -> str:
    """The server's /metrics URL, from its log."""
    for line in server.log.read_text().splitlines():
        if "metrics on http://" in line:
            return line.rsplit("metrics on ", 1)[1].strip()
    raise RuntimeError("the server log names no metrics endpoint")


def gauge(url: str, name: str) -> float:
    """The sum of a metric's samples on the /metrics page."""
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def windows_p99(report: dict, window_s: float = 1.0) -> list[float]:
    """The OK calls' p99 (ms) in each `window_s` window, by completion time."""
    details = [d for d in report.get("details") or [] if d["status"] == "OK"]
    if not details:
        return []
    stamps = [parse_stamp(d["timestamp"]) for d in details]
    start = min(stamps)
    windows: dict[int, list[float]] = {}
    for stamp, detail in zip(stamps, details, strict=True):
        windows.setdefault(int((stamp - start) / window_s), []).append(detail["latency"] / 1e6)
    return [percentile(windows[index], 0.99) for index in sorted(windows)]


def parse_stamp(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp with up to nanoseconds."""
    from datetime import datetime

    base, _, rest = text.partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())
    zone = rest[len(fraction) :] or "+00:00"
    stamp = datetime.fromisoformat(base + (zone if zone != "Z" else "+00:00")).timestamp()
    return stamp + (float("0." + fraction) if fraction else 0.0)


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    data_file = workdir / "recommend.json"
    data_file.write_text(json.dumps(request_data(args.model_repository)))
    plain = repository_with("batching", NO_ADMISSION, args.model_repository, workdir)
    results: dict = {"machine": machine_note(), "seconds": args.seconds, "rounds": args.rounds}
    with contextlib.ExitStack() as stack:
        servers = {
            "admission": start_server(args.model_repository, [], workdir),
            "no admission": start_server(plain, [], workdir),
        }
        for server in servers.values():
            stack.callback(server.stop)
            loadtest(server.address, data_file, "-c", "8", "-z", "2s")  # warm
        seconds = str(args.seconds) + "s"
        capacity = [
            summary(
                loadtest(
                    servers["admission"].address,
                    data_file,
                    *("-c", "64", "--connections", CONNECTIONS, "-z", seconds),
                ),
                args.seconds,
            )
            for _ in range(args.rounds)
        ]
        results["capacity"] = {"ok_per_s": median([c["ok_per_s"] for c in capacity]), "rounds": capacity}
        print("capacity", json.dumps(results["capacity"]["ok_per_s"]), flush=True)
        storms: dict[str, list[dict]] = {}
        for round_number in range(args.rounds):
            order = list(servers.items()) if round_number % 2 == 0 else list(servers.items())[::-1]
            for callers in STORM_CALLERS:
                for name, server in order:
                    options = ["-c", str(callers), "--connections", CONNECTIONS, "-t", DEADLINE]
                    options += ["-z", seconds]
                    cell = summary(loadtest(server.address, data_file, *options), args.seconds)
                    storms.setdefault(f"{name}|{callers}", []).append(cell)
                    print(f"storm {name} c={callers}", json.dumps(cell), flush=True)
        results["storms"] = {key: medians(cells) | {"rounds": cells} for key, cells in storms.items()}
        results["open_loop"] = open_loop(
            servers["admission"], data_file, results["capacity"]["ok_per_s"], args
        )
    return results


def medians(cells: list[dict]) -> dict:
    """The median of every numeric field over rounds."""
    keys = [k for k, v in cells[0].items() if isinstance(v, int | float)]
    return {key: median([cell[key] for cell in cells]) for key in keys}


def open_loop(server: ServerProcess, data_file: Path, capacity: float, args: argparse.Namespace) -> dict:
    """A fixed rate of OPEN_LOOP_FACTOR x capacity, then recovery at c=8 against c=8 before."""
    rate = int(capacity * OPEN_LOOP_FACTOR)
    before = loadtest(server.address, data_file, "-c", str(RECOVERY_CONCURRENCY), "-z", "10s")
    steady = windows_p99(before)
    with Sampler(server) as sampler:
        options = [
            "--rps",
            str(rate),
            "-c",
            "2000",
            "--connections",
            CONNECTIONS,
            "-t",
            "1s",
            "-z",
            f"{args.seconds}s",
        ]
        report = loadtest(server.address, data_file, *options)
        after = loadtest(server.address, data_file, "-c", str(RECOVERY_CONCURRENCY), "-z", "10s")
    cell = summary(report, args.seconds)
    recovery = windows_p99(after)
    baseline = median(steady) if steady else float("nan")
    back = next((index for index, p99 in enumerate(recovery) if p99 <= 1.5 * baseline), None)
    result = {
        "offered_per_s": rate,
        **cell,
        "ok_share_of_capacity": cell["ok_per_s"] / capacity,
        "queue_depth_max": max(sampler.queue_depth, default=float("nan")),
        "rss_mb_start": sampler.rss_mb[0] if sampler.rss_mb else float("nan"),
        "rss_mb_max": max(sampler.rss_mb, default=float("nan")),
        "steady_p99_ms": baseline,
        "recovery_p99_ms_by_second": recovery,
        "recovered_within_s": None if back is None else back + 1,
    }
    print("open loop", json.dumps({k: v for k, v in result.items() if k != "recovery_p99_ms_by_second"}))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--seconds", type=float, default=15.0, help="per load cell")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the storms")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recserve-overload-") as directory:
        results = measure(args, Path(directory))
    print("results:", write_result("overload", results))


if __name__ == "__main__":
    main()
