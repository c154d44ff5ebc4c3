"""Live state under load: what history, ingestion, freshness, index rebuilds and the exact delta cost.

Five measurements, each side by side in one run on the same cores as its load generator:

1. history: Recommend at c=64 with stored history against `ignore_history` on the same server (users of the
   request data preloaded with 20-50 events each), memory backend and Redis backend;
2. ingestion: RecordEvents (100 events per call) at c=8 while Recommend runs at c=32 beside it, memory
   backend with `--fsync everysec` and `--fsync always`; for reference, Recommend beside RecordEvents paced
   to the target 20,000 events/s, and Recommend alone;
3. freshness: from an UpsertItems acknowledgement until SimilarItems(anchor, k=1) returns the new item
   (it has the anchor's tags, so the same embedding), on the same server and across two servers on one Redis;
4. rebuild: read p99 during a background index rebuild of 20,000 + 4,000 items against steady state, from
   the load generator's per-call timestamps, and the rebuild's duration; a fresh server each round;
5. exact delta: Recommend at c=64 with 0, 1,000 and 10,000 upserted items searched exactly beside the index.

Throughput cells are medians of `--runs` interleaved rounds (every configuration once per round, the order
reversed every other round, so the machine's drift hits all alike). Servers and Redis listen on loopback and
are stopped at the end, also on failure. Results go to bench/results/live_state.json; bench/report.py renders
them into docs/benchmarks.md ("Live state").

    .venv/bin/python bench/live_state.py [--seconds 6] [--runs 5] [--trials 200] [--rebuild-rounds 5]
"""

from __future__ import annotations

# isort: off
from common import (
    DEFAULT_REPOSITORY,
    REPO_ROOT,
    RESULTS,
    machine_note,
    median,
    write_result,
)  # first: sets thread limits before numpy loads

# isort: on

import argparse
import contextlib
import importlib.util
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import yaml
from report import live_state_target_table
from server_load import (
    LOADTEST,
    ServerProcess,
    measure_cell,
    repository_with,
    request_data,
    run_load,
    start_server,
    summarize,
)

from recserve.client import Event, Item, ModelStatistics, RecommenderClient
from recserve.server.auth import Role, new_token, token_entry

sys.path.insert(0, str(REPO_ROOT / "tests"))
from redis_server import RedisServer  # noqa: E402  (the tests' redis-server on a free loopback port)

# The servers inherit this: their metrics endpoint binds to loopback too (gRPC does through start_server).
os.environ["RECSERVE_METRICS_HOST"] = "127.0.0.1"

EVENTS_PER_CALL = 100
# Writes need a token, as in production: every bench server reads one tokens file holding this token.
WRITE_TOKEN = new_token()
WRITER = (("authorization", f"Bearer {WRITE_TOKEN}"),)
UPSERT_BATCH = 1000  # the server's max_items_per_call
TAGS = [f"tag-{n}" for n in range(1, 101)]  # the demo model's tags
# What users do, roughly as often as a shop sees it; DISLIKE is rare and takes the item out of the context.
EVENT_MIX = {"VIEW": 60, "CLICK": 25, "ADD_TO_CART": 6, "PURCHASE": 3, "LIKE": 5, "DISLIKE": 1}
HISTORY_CONCURRENCY = 64
INGEST_RECOMMEND_CONCURRENCY = 32
INGEST_EVENTS_CONCURRENCY = 8
INGEST_TARGET_EVENTS_PER_S = 20_000
REBUILD_CONCURRENCY = 16
REBUILD_DELTA_ITEMS = 4000  # 20% of the demo's 20,000 items
NO_REBUILD = 1_000_000
DELTA_SIZES = (0, 1000, 10_000)
RECOMMEND = "recserve.v1.Recommender.Recommend"
RECORD_EVENTS = "recserve.v1.Events.RecordEvents"
FRESHNESS_TIMEOUT_S = 5.0  # a trial that does not see its item by then counts as not returned
PHASES = ("history and freshness", "ingestion", "rebuild", "exact delta")
LOAD_START_S = 3.0  # a load generator process is sending by then (imports, reflection, connections)
METRICS_URL = re.compile(r"metrics on (http://[\d.]+:\d+/metrics)")
REBUILT = "index rebuilt over"  # server/catalog/rebuild.py logs this once a rebuilt index is installed
STAMP = re.compile(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


# --- servers and their state -------------------------------------------------------------------------


def launch(stack: contextlib.ExitStack, repository: Path, flags: list[str], workdir: Path) -> ServerProcess:
    """A server that is stopped when the stack unwinds, whatever happens meanwhile."""
    tokens = workdir / "tokens.yaml"
    if not tokens.exists():
        tokens.write_text(yaml.safe_dump({"tokens": [token_entry("bench", WRITE_TOKEN, [Role.WRITE])]}))
    server = start_server(repository, [*flags, "--tokens-file", str(tokens)], workdir)
    stack.callback(server.stop)
    return server


def metrics(server: ServerProcess) -> dict[str, float]:
    """The server's Prometheus samples by metric name, summed over labels (the gauges read have one)."""
    url = METRICS_URL.search(server.log.read_text()).group(1)
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            samples[name] = samples.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return samples


def random_items(prefix: str, count: int, rng: random.Random) -> list[Item]:
    """New items with 1-4 of the model's tags, as a catalog feed would send them."""
    return [Item(f"{prefix}-{n}", tuple(rng.sample(TAGS, rng.randint(1, 4)))) for n in range(count)]


def upsert(server: ServerProcess, items: list[Item]) -> None:
    """Upsert in calls of the largest size the server takes."""
    with RecommenderClient(server.address, timeout_s=60, metadata=WRITER) as client:
        for start in range(0, len(items), UPSERT_BATCH):
            client.upsert_items(items[start : start + UPSERT_BATCH])


def random_events(user_ids: list[str], per_user: tuple[int, int], items: list[str], rng: random.Random):
    """Each user's events (between per_user[0] and per_user[1] of them), user after user."""
    kinds, weights = list(EVENT_MIX), list(EVENT_MIX.values())
    events = []
    for user_id in user_ids:
        count = rng.randint(*per_user)
        events += [
            Event(user_id, item_id, kind)
            for item_id, kind in zip(
                rng.choices(items, k=count), rng.choices(kinds, weights, k=count), strict=True
            )
        ]
    return events


def record(server: ServerProcess, events: list[Event]) -> None:
    """Store events through RecordEvents, 100 per call."""
    with RecommenderClient(server.address, timeout_s=60, metadata=WRITER) as client:
        for start in range(0, len(events), EVENTS_PER_CALL):
            client.record_events(events[start : start + EVENTS_PER_CALL])


def model_ids(repository: Path) -> tuple[list[str], list[str]]:
    """The built version's user and item ids."""
    version = max(
        (p for p in (repository / "recommender").iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    return (version / "user_ids.txt").read_text().split(), (version / "item_ids.txt").read_text().split()


# --- load from a separate process ----------------------------------------------------------------------


def start_load(
    address: str,
    call: str,
    data_file: Path,
    concurrency: int,
    seconds: float,
    rps: int = 0,
    connections: int | None = None,
) -> subprocess.Popen:
    """A `recserve loadtest` run in the background (run_load is blocking and calls Recommend only): several
    can run at once, and SIGINT ends one early with its full report, as in ghz. `rps` > 0 paces the calls;
    `connections` defaults to min(concurrency, 4)."""
    command = [
        *LOADTEST, "--insecure",
        "--call", call,
        "-D", str(data_file),
        "-c", str(concurrency),
        "--connections", str(connections or min(concurrency, 4)),
        "-z", f"{seconds}s",
        "-r", str(rps),
        "-m", json.dumps(dict(WRITER)),
        "-O", "json",
        address,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def finish_load(process: subprocess.Popen, interrupt: bool = False) -> dict:
    """The ghz-format report of a background run, once it ends (at once with `interrupt`)."""
    if interrupt:
        process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)
    if process.returncode != 0:
        raise RuntimeError(f"loadtest failed with exit status {process.returncode}")
    return json.loads(output)


def finish_all(loads: dict[str, subprocess.Popen]) -> dict[str, dict]:
    """Every background run's report; if one fails, none is left running."""
    try:
        return {name: finish_load(process) for name, process in loads.items()}
    finally:
        for process in loads.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def completions(report: dict) -> list[tuple[float, float]]:
    """(completion wall time in s, latency in ms) of each successful call, from the report's details."""
    return [
        (wall_seconds(detail["timestamp"]), detail["latency"] / 1e6)
        for detail in report.get("details") or []
        if detail["status"] == "OK"
    ]


def wall_seconds(stamp: str) -> float:
    """An RFC 3339 timestamp with up to nanoseconds (which datetime does not parse) as Unix seconds."""
    head, fraction, offset = STAMP.match(stamp).groups()
    whole = datetime.fromisoformat(head + ("+00:00" if offset == "Z" else offset)).timestamp()
    return whole + int((fraction or "0").ljust(9, "0")[:9]) / 1e9


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (ghz's rule); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def data_file(workdir: Path, name: str, payload: list[dict]) -> Path:
    """Request data for the load generator (an array, used round-robin)."""
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(payload))
    return path


def round_order(names: list[str], round_number: int) -> list[str]:
    """The order of one round: reversed every other round, so that no configuration always goes first."""
    return names if round_number % 2 == 0 else names[::-1]


def interleaved(runs: int, cells: dict[str, Callable[[], dict]]) -> dict[str, list[dict]]:
    """Every cell once per round, in `round_order`; all rounds' results per cell."""
    results: dict[str, list[dict]] = {name: [] for name in cells}
    for round_number in range(runs):
        for name in round_order(list(cells), round_number):
            results[name].append(cells[name]())
            log_cell(name, results[name][-1])
    return results


def log_cell(name: str, cell: dict) -> None:
    """Progress on stderr, as each cell finishes."""
    print(f"  {name}: {json.dumps(cell)}", file=sys.stderr)


def medians(cells: list[dict]) -> dict:
    """Per key, the median over rounds."""
    return {key: median([cell[key] for cell in cells]) for key in cells[0]}


# --- 1. history cost -----------------------------------------------------------------------------------


def measure_history(servers: dict[str, ServerProcess], requests: list[dict], args, workdir: Path) -> dict:
    """Recommend with stored history against the same requests with ignore_history, per backend."""
    with_history = data_file(workdir, "recommend-history", requests)
    without = data_file(workdir, "recommend-no-history", [{**r, "ignore_history": True} for r in requests])
    for server in servers.values():
        for path in (with_history, without):
            run_load(server.address, path, 8, 1, False)  # warm connections, caches and code paths
    cells = {
        f"{backend}|{mode}": (
            lambda server=server, path=path: measure_cell(
                server, path, HISTORY_CONCURRENCY, args.seconds, False
            )
        )
        for backend, server in servers.items()
        for mode, path in (("on", with_history), ("off", without))
    }
    rows = []
    for name, results in interleaved(args.runs, cells).items():
        backend, mode = name.split("|")
        rows.append({"backend": backend, "history": mode, **medians(results), "rounds": results})
    return {"concurrency": HISTORY_CONCURRENCY, "rows": rows}


def preload_histories(
    server: ServerProcess, requests: list[dict], items: list[str], rng: random.Random
) -> dict:
    """Give every user the requests name 20-50 events, so that reading history is real work."""
    users = sorted({r["user_id"] for r in requests})
    events = random_events(users, (20, 50), items, rng)
    record(server, events)
    with RecommenderClient(server.address, metadata=WRITER) as client:
        stored = len(client.user_history(users[0]))
    return {"users": len(users), "events": len(events), "events_per_user": [20, 50], "check_stored": stored}


# --- 2. ingestion ----------------------------------------------------------------------------------------


def ingestion_calls(users: list[str], items: list[str], rng: random.Random) -> list[dict]:
    """RecordEvents requests, 100 events each over 20 users: every user once across the file."""
    calls = []
    per_call = 20
    for start in range(0, len(users) - per_call + 1, per_call):
        events = random_events(users[start : start + per_call], (5, 5), items, rng)
        calls.append(
            {"events": [{"user_id": e.user_id, "item_id": e.item_id, "type": e.type} for e in events]}
        )
    return calls


def ingest_beside_recommend(
    server: ServerProcess, recommend_file: Path, events_file: Path | None, seconds: float, events_rps: int = 0
) -> dict:
    """Recommend at c=32 and (unless events_file is None) RecordEvents at c=8 in two processes at once;
    RecordEvents as fast as it goes, or paced to `events_rps` events/s."""
    loads = {
        "recommend": start_load(
            server.address, RECOMMEND, recommend_file, INGEST_RECOMMEND_CONCURRENCY, seconds
        )
    }
    if events_file is not None:
        calls_per_s = events_rps // EVENTS_PER_CALL
        loads["record"] = start_load(
            server.address, RECORD_EVENTS, events_file, INGEST_EVENTS_CONCURRENCY, seconds, calls_per_s
        )
    reports = {name: summarize(report) for name, report in finish_all(loads).items()}
    reads = reports["recommend"]
    cell = {"recommend_rps": reads["rps"], "recommend_p99_ms": reads["p99_ms"], "errors": reads["errors"]}
    if "record" in reports:
        written = reports["record"]
        cell |= {
            "events_per_s": written["rps"] * EVENTS_PER_CALL,
            "record_p50_ms": written["p50_ms"],
            "record_p99_ms": written["p99_ms"],
            "errors": reads["errors"] + written["errors"],
        }
    return cell


def ingestion_configs() -> dict[str, tuple[str, bool, int]]:
    """Name -> (fsync policy, whether RecordEvents runs, its pace in events/s or 0 for as fast as it goes)."""
    return {
        "fsync everysec, with ingestion": ("everysec", True, 0),
        "fsync always, with ingestion": ("always", True, 0),
        f"fsync everysec, ingestion paced to {INGEST_TARGET_EVENTS_PER_S:,} events/s": (
            "everysec",
            True,
            INGEST_TARGET_EVENTS_PER_S,
        ),
        "fsync everysec, Recommend alone": ("everysec", False, 0),
    }


def measure_ingestion(args, workdir: Path, recommend_file: Path, events_file: Path) -> dict:
    """Each configuration on a fresh server in every round, so that all start from the same (empty) state:
    at ~100,000 events/s the state grows by hundreds of MB a minute, and a server that had taken earlier
    cells' events would be measured on a larger state (see `measure_sustained`)."""
    configs = ingestion_configs()
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for round_number in range(args.runs):
        with contextlib.ExitStack() as stack:
            servers = {
                name: launch(stack, args.model_repository, ["--enable-events", "--fsync", policy], workdir)
                for name, (policy, _, _) in configs.items()
            }
            for name in round_order(list(configs), round_number):
                _, writes, pace = configs[name]
                run_load(servers[name].address, recommend_file, 8, 1, False)  # warm
                cell = ingest_beside_recommend(
                    servers[name], recommend_file, events_file if writes else None, args.seconds, pace
                )
                servers[name].stop()  # frees its memory; the stack's stop is then a no-op
                results[name].append(cell)
                log_cell(name, cell)
    return {
        "recommend_concurrency": INGEST_RECOMMEND_CONCURRENCY,
        "events_concurrency": INGEST_EVENTS_CONCURRENCY,
        "events_per_call": EVENTS_PER_CALL,
        "rows": [{"config": name, **medians(cells), "rounds": cells} for name, cells in results.items()],
        "sustained": measure_sustained(args, workdir, recommend_file, events_file),
    }


def measure_sustained(args, workdir: Path, recommend_file: Path, events_file: Path) -> list[dict]:
    """One fsync-everysec server taking RecordEvents as fast as it goes, cell after cell, with Recommend
    beside it: how both rates move as the stored state grows."""
    cells, stored = [], 0.0
    with contextlib.ExitStack() as stack:
        server = launch(stack, args.model_repository, ["--enable-events", "--fsync", "everysec"], workdir)
        run_load(server.address, recommend_file, 8, 1, False)  # warm
        for number in range(args.sustained_cells):
            cell = {
                "events_stored_before": stored,
                **ingest_beside_recommend(server, recommend_file, events_file, args.seconds),
            }
            stored += cell["events_per_s"] * args.seconds
            cells.append(cell)
            log_cell(f"sustained {number + 1}", cell)
    return cells


# --- 3. freshness ----------------------------------------------------------------------------------------


class TagCombinations:
    """Three-tag combinations never used before in this run: an item with one of them and no training id
    has an embedding no other item has, except the one item given the same tags on purpose."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[tuple[str, ...]] = set()

    def fresh(self) -> tuple[str, ...]:
        """A combination not handed out yet."""
        while True:
            tags = tuple(sorted(self._rng.sample(TAGS, 3)))
            if tags not in self._used:
                self._used.add(tags)
                return tags


def returns_item(client: RecommenderClient, anchor: str, item_id: str) -> bool:
    """Whether SimilarItems(anchor, k=1) answers item_id (False while the anchor is unknown there)."""
    try:
        return [i.item_id for i in client.similar_items(anchor, k=1).items] == [item_id]
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False


def knows_item(client: RecommenderClient, item_id: str, timeout_s: float) -> bool:
    """Wait until the server has the item (a reader following another server's writes)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        try:
            client.get_item(item_id)
            return True
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
    return False


def freshness_trial(writer: RecommenderClient, reader: RecommenderClient, name: str, tags, timeout_s: float):
    """(ms from the fresh item's UpsertItems acknowledgement until the reader returns it, whether the first
    read after the acknowledgement did); (None, False) if it did not within timeout_s."""
    anchor, fresh = f"{name}-anchor", f"{name}-fresh"
    writer.upsert_items([Item(anchor, tags)])
    if not knows_item(reader, anchor, timeout_s):
        return None, False
    writer.upsert_items([Item(fresh, tags)])
    acknowledged = time.perf_counter()
    reads = 0
    while time.perf_counter() - acknowledged < timeout_s:
        reads += 1
        if returns_item(reader, anchor, fresh):
            return (time.perf_counter() - acknowledged) * 1000, reads == 1
    return None, False


def measure_freshness(
    paths: dict[str, tuple[ServerProcess, ServerProcess]], args, rng: random.Random
) -> dict:
    """Upsert-to-visible latency per path (writer, reader), trials of the paths interleaved."""
    tags = TagCombinations(rng)
    intervals: dict[str, list[float | None]] = {name: [] for name in paths}
    first_hits = dict.fromkeys(paths, 0)
    clients = {
        name: (RecommenderClient(writer.address, metadata=WRITER), RecommenderClient(reader.address))
        for name, (writer, reader) in paths.items()
    }
    try:
        for trial in range(args.trials):
            for number, (name, (writer, reader)) in enumerate(clients.items()):
                interval, first = freshness_trial(
                    writer, reader, f"fresh-{number}-{trial}", tags.fresh(), FRESHNESS_TIMEOUT_S
                )
                intervals[name].append(interval)
                first_hits[name] += first
    finally:
        for writer, reader in clients.values():
            writer.close()
            reader.close()
    rows = []
    for name, values in intervals.items():
        found = [v for v in values if v is not None]
        rows.append(
            {
                "path": name,
                "trials": len(values),
                "found": len(found),
                "first_read_hits": first_hits[name],
                "p50_ms": percentile(found, 0.5),
                "p99_ms": percentile(found, 0.99),
                "max_ms": max(found, default=float("nan")),
            }
        )
    return {"rows": rows}


# --- 4. rebuild --------------------------------------------------------------------------------------------


def rebuilds_logged(server: ServerProcess) -> int:
    """Completed rebuilds so far, from the server's log (one line each, written as the new index goes in)."""
    return server.log.read_text().count(REBUILT)


def wait_for_rebuild(server: ServerProcess, logged_before: int, timeout_s: float) -> float | None:
    """The wall time the next rebuild was seen done, or None. The log is watched rather than /metrics, so
    that watching costs the loaded server nothing; /metrics is read before and after for the gauges."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if rebuilds_logged(server) > logged_before:
            return time.time()
        time.sleep(0.02)
    return None


@dataclass(frozen=True)
class Checkpoint:
    """The server's counters at one moment of a rebuild round, to say where the time went in each window."""

    wall_s: float
    statistics: ModelStatistics
    server_cpu_s: float
    machine_busy_s: float

    @classmethod
    def take(cls, server: ServerProcess) -> Checkpoint:
        """Read them now (one GetModelStatistics call and /proc)."""
        return cls(time.time(), server.statistics(), server.cpu_seconds(), busy_cpu_s())


def window_costs(start: Checkpoint, end: Checkpoint) -> dict:
    """Per request: wall µs in each pipeline stage; and cores busy: the server's, and the whole machine's
    (load generator and the rebuild's child included)."""
    requests = max(end.statistics.inference_count - start.statistics.inference_count, 1)
    seconds = max(end.wall_s - start.wall_s, 1e-9)
    before = {stage.name: stage.compute_duration_us for stage in start.statistics.stages}
    costs = {
        f"stage_us_{stage.name}": (stage.compute_duration_us - before.get(stage.name, 0)) / requests
        for stage in end.statistics.stages
    }
    return {
        **costs,
        "server_cores": (end.server_cpu_s - start.server_cpu_s) / seconds,
        "machine_cores": (end.machine_busy_s - start.machine_busy_s) / seconds,
    }


def rebuild_round(repository: Path, recommend_file: Path, number: int, args, workdir: Path) -> dict:
    """One fresh server: 3,999 items in the delta, steady load, then the 4,000th item starts the rebuild.

    The load runs from before the steady window until `--after-seconds` past the rebuild's end; latencies
    are split by completion time into steady (`--steady-seconds` up to the trigger), during the rebuild
    (from the trigger's acknowledgement until the server logs the new index in) and after it.
    """
    rng = random.Random(100 + number)
    with contextlib.ExitStack() as stack:
        server = launch(stack, repository, ["--enable-catalog"], workdir)
        items = random_items(f"rebuild-{number}", REBUILD_DELTA_ITEMS, rng)
        upsert(server, items[:-1])
        run_load(server.address, recommend_file, 8, 1, False)  # warm
        before, logged = metrics(server), rebuilds_logged(server)
        load = start_load(
            server.address,
            RECOMMEND,
            recommend_file,
            REBUILD_CONCURRENCY,
            LOAD_START_S + args.steady_seconds + args.rebuild_timeout,
        )
        try:
            time.sleep(LOAD_START_S)
            checkpoints = [Checkpoint.take(server)]
            time.sleep(args.steady_seconds)
            checkpoints.append(Checkpoint.take(server))
            upsert(server, items[-1:])
            acknowledged = time.time()
            done = wait_for_rebuild(server, logged, args.rebuild_timeout)
            checkpoints.append(Checkpoint.take(server))
            if done is not None:
                time.sleep(args.after_seconds)
        finally:
            report = finish_load(load, interrupt=True)
        after = metrics(server)
    return {
        "delta_items_before": before["recserve_catalog_delta_items"],
        "delta_items_after": after["recserve_catalog_delta_items"],
        "rebuilt": done is not None,
        "rebuild_duration_s": after["recserve_index_rebuild_last_duration_seconds"],
        **rebuild_latencies(completions(report), checkpoints, acknowledged, done),
        **{f"steady_{key}": value for key, value in window_costs(*checkpoints[:2]).items()},
        **{f"rebuild_{key}": value for key, value in window_costs(*checkpoints[1:]).items()},
        "errors": summarize(report)["errors"],
    }


def rebuild_latencies(
    calls: list[tuple[float, float]], checkpoints: list[Checkpoint], acknowledged: float, done: float | None
) -> dict:
    """Throughput and latency of the calls that completed in each window; during the rebuild also the p99
    of each quarter of the window (slow calls at its start, its end or throughout tell different stories)."""
    steady_start, triggered = checkpoints[0].wall_s, checkpoints[1].wall_s
    end = done if done is not None else checkpoints[2].wall_s
    steady = [ms for t, ms in calls if steady_start <= t < triggered]
    during = [ms for t, ms in calls if acknowledged <= t <= end]
    quarter = (end - acknowledged) / 4
    return {
        "window_s": end - acknowledged,
        "steady_calls": len(steady),
        "rebuild_calls": len(during),
        "steady_rps": len(steady) / (triggered - steady_start),
        "rebuild_rps": len(during) / max(end - acknowledged, 1e-9),
        "steady_p50_ms": percentile(steady, 0.5),
        "steady_p99_ms": percentile(steady, 0.99),
        "rebuild_p50_ms": percentile(during, 0.5),
        "rebuild_p99_ms": percentile(during, 0.99),
        "rebuild_p99_by_quarter_ms": [
            percentile(
                [ms for t, ms in calls if acknowledged + q * quarter <= t < acknowledged + (q + 1) * quarter],
                0.99,
            )
            for q in range(4)
        ],
        "after_p99_ms": percentile([ms for t, ms in calls if done is not None and done < t], 0.99),
        "p99_ratio": percentile(during, 0.99) / percentile(steady, 0.99),
    }


def is_number(value: object) -> bool:
    """A figure a median can be taken of (not a flag, not a list)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def measure_rebuild(model_repository: Path, recommend_file: Path, args, workdir: Path) -> dict:
    """`--rebuild-rounds` rounds, each on a fresh server so that every rebuild is of 20,000 + 4,000 items."""
    repository = repository_with(
        "retrieval", {"rebuild_delta_items": REBUILD_DELTA_ITEMS}, model_repository, workdir
    )
    rounds = []
    for number in range(args.rebuild_rounds):
        rounds.append(rebuild_round(repository, recommend_file, number, args, workdir))
        print(f"  rebuild round {number + 1}: {json.dumps(rounds[-1])}", file=sys.stderr)
    return {
        "concurrency": REBUILD_CONCURRENCY,
        "delta_items": REBUILD_DELTA_ITEMS,
        "steady_seconds": args.steady_seconds,
        "cores": os.cpu_count(),
        "rounds": rounds,
        **{
            key: median([r[key] for r in rounds])
            for key in rounds[0]
            if isinstance(rounds[0][key], float | int)
        },
        "all_rebuilt": all(r["rebuilt"] for r in rounds),
    }


# --- 5. exact delta search ---------------------------------------------------------------------------------


def measure_delta(model_repository: Path, recommend_file: Path, args, workdir: Path) -> dict:
    """Recommend at c=64 on servers whose delta holds 0, 1,000 and 10,000 items (no rebuild), interleaved."""
    repository = repository_with("retrieval", {"rebuild_delta_items": NO_REBUILD}, model_repository, workdir)
    rng = random.Random(5)
    with contextlib.ExitStack() as stack:
        servers = {}
        for size in DELTA_SIZES:
            servers[size] = launch(stack, repository, ["--enable-catalog"], workdir)
            upsert(servers[size], random_items(f"delta-{size}", size, rng))
            run_load(servers[size].address, recommend_file, 8, 1, False)  # warm
        held = {size: metrics(server)["recserve_catalog_delta_items"] for size, server in servers.items()}
        cells = {
            str(size): (
                lambda server=server: measure_cell(
                    server, recommend_file, HISTORY_CONCURRENCY, args.seconds, False
                )
            )
            for size, server in servers.items()
        }
        results = interleaved(args.runs, cells)
    rows = [
        {"delta_items": int(size), "delta_items_held": held[int(size)], **medians(rounds), "rounds": rounds}
        for size, rounds in results.items()
    ]
    return {"concurrency": HISTORY_CONCURRENCY, "rows": rows}


# --- main ------------------------------------------------------------------------------------------------


def code_under_test() -> str:
    """The commit of the server code the servers import, and whether that code had uncommitted changes.

    Other people change this checkout while benchmarks run; a clean checkout of one commit laid out as the
    package (`recserve/` = its protos/recserve plus links to its server/, client/, native/ with the built
    extensions, training/) first on PYTHONPATH pins that commit for every server and load generator, and
    this reports whichever code was used.
    """
    root = Path(importlib.util.find_spec("recserve.server").origin).resolve().parent.parent

    def git(*command: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *command], capture_output=True, text=True
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "server", "client", "native", "protos", "training")
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (
        " plus uncommitted server changes" if changed else ""
    )


def parse_args() -> argparse.Namespace:
    """The knobs that bound the run's time."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--seconds", type=float, default=6.0, help="per throughput cell")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds per throughput cell")
    parser.add_argument("--trials", type=int, default=200, help="freshness trials per path")
    parser.add_argument(
        "--sustained-cells", type=int, default=5, help="back-to-back ingestion cells on one server"
    )
    parser.add_argument("--rebuild-rounds", type=int, default=5)
    parser.add_argument("--steady-seconds", type=float, default=8.0, help="steady window before a rebuild")
    parser.add_argument("--after-seconds", type=float, default=2.0, help="load kept after a rebuild")
    parser.add_argument("--rebuild-timeout", type=float, default=60.0, help="longest wait for a rebuild")
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=list(PHASES),
        help="measure only these; the other phases' figures stay as the last run wrote them",
    )
    return parser.parse_args()


class OtherProcesses:
    """CPU that processes outside this run used while a phase ran, as a share of the machine.

    The machine is shared (test suites, builds): every figure is skewed when this is not near zero. Our own
    CPU is this process plus its reaped children (servers, load generators, Redis and the rebuilds' children
    are all reaped by the end of each phase), so the rest of /proc/stat's busy time is someone else's.
    """

    def __enter__(self) -> OtherProcesses:
        self._started = (time.monotonic(), busy_cpu_s(), own_cpu_s())
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall, busy, own = (
            now - then
            for now, then in zip((time.monotonic(), busy_cpu_s(), own_cpu_s()), self._started, strict=True)
        )
        self.wall_s = wall
        self.share = max(busy - own, 0.0) / (wall * (os.cpu_count() or 1))


def busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its reaped descendants."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def main() -> None:
    """Run the measurements one after another (each phase with its own servers) and write the results."""
    args = parse_args()
    # A run stopped with SIGTERM unwinds like a failure: every server and Redis it started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    rng = random.Random(1)
    users, items = model_ids(args.model_repository)
    earlier = RESULTS / "live_state.json"
    results: dict = (
        json.loads(earlier.read_text()) if set(args.phases) != set(PHASES) and earlier.exists() else {}
    )
    results |= {
        "machine": machine_note(),
        "seconds": args.seconds,
        "runs": args.runs,
        "command": " ".join([".venv/bin/python bench/live_state.py", *sys.argv[1:]]),
        "code": code_under_test(),
    }
    results.setdefault("phases", {})
    with tempfile.TemporaryDirectory(prefix="recserve-live-") as directory:
        workdir = Path(directory)
        requests = request_data(args.model_repository)
        recommend_file = data_file(workdir, "recommend", requests)
        events_file = data_file(workdir, "record-events", ingestion_calls(users, items, rng))
        phases = {
            "history and freshness": lambda: history_and_freshness(args, workdir, requests, items, rng),
            "ingestion": lambda: {"ingestion": measure_ingestion(args, workdir, recommend_file, events_file)},
            "rebuild": lambda: {
                "rebuild": measure_rebuild(args.model_repository, recommend_file, args, workdir)
            },
            "exact delta": lambda: {
                "delta": measure_delta(args.model_repository, recommend_file, args, workdir)
            },
        }
        for name in args.phases:
            print(name, file=sys.stderr)
            with OtherProcesses() as others:
                results |= phases[name]()
            results["phases"][name] = {
                "wall_s": others.wall_s,
                "other_processes_cpu_share": others.share,
                "code": results["code"],
                "command": results["command"],
            }
    print(f"Live state, {machine_note()}; {results['code']}")
    print("\n".join(live_state_target_table(results)))
    print(json.dumps(results["phases"]))
    write_result("live_state", results)


def history_and_freshness(
    args, workdir: Path, requests: list[dict], items: list[str], rng: random.Random
) -> dict:
    """A memory-backend server and two servers on one Redis: history cost first, then freshness (whose
    upserts would otherwise sit in the history servers' delta)."""
    with contextlib.ExitStack() as stack:
        redis = RedisServer(workdir / "redis").start()
        stack.callback(redis.stop)
        live = ["--enable-events", "--enable-catalog"]
        shared = [*live, "--state-backend", "redis", "--redis-url", redis.url]
        memory = launch(stack, args.model_repository, live, workdir)
        redis_a = launch(stack, args.model_repository, shared, workdir)
        redis_b = launch(stack, args.model_repository, shared, workdir)
        preload = {
            "memory": preload_histories(memory, requests, items, rng),
            "redis": preload_histories(redis_a, requests, items, rng),
        }
        history = {
            **measure_history({"memory": memory, "redis": redis_a}, requests, args, workdir),
            "preload": preload,
        }
        paths = {
            "same server (memory backend)": (memory, memory),
            "same server (Redis backend)": (redis_a, redis_a),
            "across servers on one Redis (write A, poll B)": (redis_a, redis_b),
        }
        freshness = measure_freshness(paths, args, rng)
    return {"history": history, "freshness": freshness}


if __name__ == "__main__":
    main()
