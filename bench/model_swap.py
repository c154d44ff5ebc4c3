"""Recommend at c=64 through version swaps: latency, throughput and memory while new versions load.

A `recserve serve` in poll mode (`--model-control-mode poll`, a look every 0.5 s, the default admission
settings) serves version 1 of the demo model; `recserve loadtest` sends Recommend at c=64 over 8
connections, closed loop, for the whole run; meanwhile a new version appears every 12 s (the
same files under new numbers, so each swap costs what a real one costs to load, check, warm up and catch
up, from a warm page cache). Per second: OK answers, p50 and p99, failed calls; the server's RSS every
0.2 s; each swap's duration from the server's log (loading ... serving). Steady state is the seconds
before the first swap.

Results go to bench/results/model_swap.json and docs/benchmarks-model-swap.png.

    flock /tmp/bench.lock .venv/bin/python bench/model_swap.py [--seconds 132]
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, REPO_ROOT, machine_note, median, write_result  # first: thread limits

# isort: on

import argparse
import json
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from live_state import finish_load, percentile, start_load, wall_seconds
from overload import rss_mb
from server_load import Periodic, ServerProcess, request_data, start_server

CALL = "recserve.v1.Recommender.Recommend"
SWAP_EVERY_S = (
    12.0  # versions 2, 3, ... appear this often from this far into the load, until this long before its end
)
LOG_LINE = re.compile(
    r"^(\S+ \S+) INFO recserve\.server\.model_control\.manager: model \S+ version (\d+) (\w+)"
)
PLOT = REPO_ROOT / "docs" / "benchmarks-model-swap.png"


class RssSampler(Periodic):
    """The server's RSS every `interval_s`, with the wall time of each sample."""

    def __init__(self, server: ServerProcess, interval_s: float = 0.2) -> None:
        super().__init__(interval_s)
        self.server = server
        self.samples: list[tuple[float, float]] = []

    def tick(self) -> None:
        """One sample."""
        self.samples.append((time.time(), rss_mb(self.server)))


def model_repository(workdir: Path, source: Path) -> tuple[Path, Path]:
    """A repository whose model has version 1 = the newest built version of `source`; (root, model dir)."""
    newest = max((p for p in source.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    model_dir = workdir / "models" / source.name
    model_dir.mkdir(parents=True)
    shutil.copy(source / "config.yaml", model_dir / "config.yaml")
    (model_dir / "1").symlink_to(newest.resolve(), target_is_directory=True)
    return model_dir.parent, model_dir


def swaps_from_log(log: str) -> dict[str, dict[str, float]]:
    """Per version: when it started loading and when it served (wall seconds, from the server's log)."""
    events: dict[str, dict[str, float]] = {}
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        if match:
            stamp, version, what = match.groups()
            moment = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc)
            events.setdefault(version, {})[what] = moment.timestamp()
    return events


def per_second(details: list[dict], start: float, seconds: int) -> list[dict]:
    """OK answers, p50/p99 (ms) and failures in each second of the run."""
    windows: list[dict] = [{"ok": [], "failed": 0} for _ in range(seconds)]
    for detail in details:
        index = int(wall_seconds(detail["timestamp"]) - start)
        if 0 <= index < seconds:
            if detail["status"] == "OK":
                windows[index]["ok"].append(detail["latency"] / 1e6)
            else:
                windows[index]["failed"] += 1
    return [
        {
            "second": i,
            "ok_per_s": len(w["ok"]),
            "p50_ms": percentile(w["ok"], 0.5),
            "p99_ms": percentile(w["ok"], 0.99),
            "failed": w["failed"],
        }
        for i, w in enumerate(windows)
    ]


def p99_between(details: list[dict], started: float, begin_s: float, end_s: float) -> float:
    """The p99 (ms) of the OK calls that ended while a version loaded (from `begin_s` to `end_s`)."""
    latencies = [
        d["latency"] / 1e6
        for d in details
        if d["status"] == "OK" and begin_s <= wall_seconds(d["timestamp"]) - started <= end_s
    ]
    return percentile(latencies, 0.99)


def swap_times(seconds: float) -> list[float]:
    """Seconds into a run of `seconds` at which new versions appear."""
    return [SWAP_EVERY_S * n for n in range(1, int(seconds / SWAP_EVERY_S))]


def failed_between(details: list[dict], started: float, begin_s: float, end_s: float) -> int:
    """Calls that failed (neither OK nor cut off at the end) while a version loaded, or within 1 s after."""
    return sum(
        1
        for d in details
        if d["status"] not in ("OK", "Canceled")
        and begin_s <= wall_seconds(d["timestamp"]) - started <= end_s + 1
    )


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    root, model_dir = model_repository(workdir, args.model_repository / "recommender")
    data_file = workdir / "recommend.json"
    data_file.write_text(json.dumps(request_data(args.model_repository)))
    flags = ["--model-control-mode", "poll", "--repository-poll-seconds", "0.5"]
    server = start_server(root, flags, workdir)
    try:
        finish_load(start_load(server.address, CALL, data_file, 8, 3))  # warm
        with RssSampler(server) as sampler:
            started = time.time()
            load = start_load(server.address, CALL, data_file, 64, args.seconds, connections=8)
            newest = model_dir / "1"
            for number, at in enumerate(swap_times(args.seconds), start=2):
                time.sleep(max(0.0, started + at - time.time()))
                (model_dir / str(number)).symlink_to(newest.resolve(), target_is_directory=True)
            report = finish_load(load)
        log = server.log.read_text()
    finally:
        server.stop()
    return summarize(report, started, int(args.seconds), sampler.samples, swaps_from_log(log))


def summarize(
    report: dict, started: float, seconds: int, rss: list[tuple[float, float]], swaps: dict[str, dict]
) -> dict:
    details = report.get("details") or []
    windows = per_second(details, started, seconds)
    loads = [
        (swap["loading"] - started, swap["serving"] - started)
        for version, swap in sorted(swaps.items(), key=lambda item: int(item[0]))
        if version != "1" and "loading" in swap and "serving" in swap
    ]
    first = loads[0][0] if loads else seconds
    steady = [w for w in windows if 2 <= w["second"] < int(first)]
    during = [w for w in windows if any(a - 1 < w["second"] < b for a, b in loads)]
    steady_rss = [mb for at, mb in rss if at - started < first]
    swap_rss = [mb for at, mb in rss if any(a <= at - started <= b + 2 for a, b in loads)]
    statuses = report.get("statusCodeDistribution", {})
    return {
        "machine": machine_note(),
        "seconds": seconds,
        "statuses": statuses,
        "failed": sum(n for status, n in statuses.items() if status not in ("OK", "Canceled")),
        "errors": report.get("errorDistribution", {}),
        "swaps_s": [round(b - a, 2) for a, b in loads],
        "swap_windows_s": [[round(a, 2), round(b, 2)] for a, b in loads],
        "steady_ok_per_s": median([w["ok_per_s"] for w in steady]),
        "steady_p50_ms": median([w["p50_ms"] for w in steady]),
        "steady_p99_ms": median([w["p99_ms"] for w in steady]),
        "swap_p99_ms": [round(p99_between(details, started, a, b), 1) for a, b in loads],
        "swap_failed": [failed_between(details, started, a, b) for a, b in loads],
        "swap_ok_per_s_min": min((w["ok_per_s"] for w in during), default=float("nan")),
        "swap_p99_ms_max": max((w["p99_ms"] for w in during), default=float("nan")),
        "rss_mb_steady": median(steady_rss) if steady_rss else float("nan"),
        "rss_mb_peak_swap": max(swap_rss, default=float("nan")),
        "rss_mb_end": rss[-1][1] if rss else float("nan"),
        "windows": windows,
        "rss": [(round(at - started, 2), round(mb, 1)) for at, mb in rss],
    }


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = result["windows"]
    seconds = [w["second"] + 0.5 for w in windows]
    figure, (throughput, latency, memory) = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    throughput.plot(seconds, [w["ok_per_s"] for w in windows], color="tab:blue")
    throughput.set_ylabel("OK / s")
    latency.plot(seconds, [w["p50_ms"] for w in windows], label="p50")
    latency.plot(seconds, [w["p99_ms"] for w in windows], label="p99")
    latency.axhline(2 * result["steady_p99_ms"], color="grey", linestyle=":", label="2 x steady p99")
    latency.set_ylabel("ms")
    latency.legend(loc="upper right")
    memory.plot([at for at, _ in result["rss"]], [mb for _, mb in result["rss"]], color="tab:green")
    memory.set_ylabel("RSS MB")
    memory.set_xlabel("seconds (Recommend, c=64; shaded: a new version loading until it serves)")
    for axis in (throughput, latency, memory):
        for start, end in result["swap_windows_s"]:
            axis.axvspan(start, end, color="orange", alpha=0.2)
    throughput.set_title(f"Recommend through {len(result['swaps_s'])} version swaps ({result['machine']})")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--seconds", type=float, default=132.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recserve-swap-") as directory:
        result = measure(args, Path(directory))
    plot(result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("windows", "rss")}, indent=1))
    print("results:", write_result("model_swap", result))


if __name__ == "__main__":
    main()
