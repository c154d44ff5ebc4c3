"""Hostile input at length: 100,000 fuzzed calls against a `recserve serve` process, its RSS watched.

The calls are tests/test_fuzz.py's (the strategies of tests/fuzzing, every method of every service, Events
and Catalog enabled) drawn with a seed, one at a time. Counted: every status by service and by method;
any status the method's docs do not allow, and any call that ran into the client's deadline, is a failure.
Every `--sample-every` calls the server's RSS (VmRSS in /proc/<pid>/status) is read and health must say
SERVING; at the end a normal Recommend must answer exactly as before the first fuzzed call.

RSS is stable when the peak of the last quarter of the calls is within 5% of the peak of the second
quarter (the first is warm-up: caches, allocator arenas, the state filling up to its bounds; the fuzzed
writes touch a fixed set of ids, so the state stops growing early), and the least-squares slope over the
second half is under 200 bytes per call. Results go to bench/results/fuzz.json, a plot to
docs/reliability-fuzz-rss.png, a summary to the `## Hostile input` section of docs/reliability.md.

    flock /tmp/bench.lock .venv/bin/python bench/fuzz.py [--calls 100000] [--seed 1] [--sample-every 1000]

Exits 1 when a status is undocumented, a call hung, health was not SERVING, Recommend changed or RSS grew.
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, REPO_ROOT, machine_note, write_result  # first: thread limits

# isort: on

import argparse
import itertools
import os
import signal
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from live_state import code_under_test
from server_load import ServerProcess, start_server

sys.path.insert(0, str(REPO_ROOT))
from recserve.v1 import catalog_pb2, catalog_pb2_grpc, recommender_pb2, recommender_pb2_grpc  # noqa: E402
from tests.fuzzing import values  # noqa: E402
from tests.fuzzing.methods import MAX_REQUEST_BYTES, Method, documented, invoke, served_methods  # noqa: E402
from tests.fuzzing.strategies import calls as calls_of  # noqa: E402

CALL_TIMEOUT_S = 20.0
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", -1)]
SERVER_FLAGS = ["--enable-events", "--enable-catalog"]
# The token check: the fuzzer sends no tokens (local development's setting; ignored where it is not known).
SERVER_ENV = {"RECSERVE_AUTH__ALLOW_UNAUTHENTICATED_WRITES": "true"}
BASELINE = recommender_pb2.RecommendRequest(user_id=values.BASE_USERS[0], k=10, ignore_history=True)
PEAK_GROWTH_LIMIT = 0.05
SLOPE_LIMIT_BYTES_PER_CALL = 200.0
DOC = REPO_ROOT / "docs" / "reliability.md"
PLOT = REPO_ROOT / "docs" / "reliability-fuzz-rss.png"
SECTION = "## Hostile input"
DOC_INTRO = "# Reliability\n\nHow recserve behaves when things go wrong, measured on a real server.\n"
MOST_FAILURES_KEPT = 20
EXAMPLES_PER_RUN = 100  # of one hypothesis run, each with its own seed: ~5 calls per example


@dataclass
class Tally:
    """What the run saw: statuses, failures, RSS and health samples."""

    by_service: dict[str, Counter[str]] = field(default_factory=dict)
    by_method: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    failure_count: int = 0
    calls: int = 0
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (calls so far, RSS in KiB)
    not_serving: list[int] = field(default_factory=list)
    small_refusals: Counter[str] = field(default_factory=Counter)  # RESOURCE_EXHAUSTED under 4 MiB, by method

    def record(self, method: Method, sent: tuple[bytes, ...], code: str, details: str, failed: bool) -> None:
        """Count one call; keep the first failures whole."""
        self.calls += 1
        self.by_service.setdefault(method.service, Counter())[code] += 1
        self.by_method.setdefault(method.path, Counter())[code] += 1
        if code == "RESOURCE_EXHAUSTED" and all(len(request) <= MAX_REQUEST_BYTES for request in sent):
            self.small_refusals[method.path] += 1
        if failed:
            self.failure_count += 1
            if len(self.failures) < MOST_FAILURES_KEPT:
                head = [request[:64].hex() for request in sent]
                self.failures.append({"method": method.path, "code": code, "details": details, "sent": head})


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def serving(channel: grpc.Channel) -> bool:
    """Whether health says SERVING for the server and every API service."""
    health = health_pb2_grpc.HealthStub(channel)
    services = ("", "recserve.v1.Recommender", "recserve.v1.Events", "recserve.v1.Catalog")
    return all(
        health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        == health_pb2.HealthCheckResponse.SERVING
        for name in services
    )


def fuzz(server: ServerProcess, channel: grpc.Channel, calls: int, seed_value: int, every: int) -> Tally:
    """`calls` fuzzed calls over every method, one at a time; RSS and health every `every` calls."""
    tally = Tally()
    methods = served_methods()
    example = st.sampled_from(methods).flatmap(lambda method: st.tuples(st.just(method), calls_of(method)))

    def one_example(method: Method, batch: tuple[tuple[bytes, ...], ...]) -> None:
        for sent in batch:
            if tally.calls < calls:
                one_call(method, sent)

    def one_call(method: Method, sent: tuple[bytes, ...]) -> None:
        outcome = invoke(channel, method, sent, CALL_TIMEOUT_S)
        failed = not documented(method, sent, outcome)
        tally.record(method, sent, "HUNG" if outcome.hung else outcome.code.name, outcome.details, failed)
        if tally.calls % every == 0:
            tally.rss_samples.append((tally.calls, rss_kib(server.process.pid)))
            if not serving(channel):
                tally.not_serving.append(tally.calls)
            if tally.calls % (every * 10) == 0:
                print(f"{tally.calls} calls, RSS {tally.rss_samples[-1][1] / 1024:.0f} MiB", flush=True)

    for run in itertools.count():  # short runs: hypothesis keeps every example of a run, megabytes each
        if tally.calls >= calls:
            break
        given_examples = given(example)(lambda drawn: one_example(*drawn))
        fuzz_run = settings(
            max_examples=EXAMPLES_PER_RUN,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given_examples)
        seed(seed_value * 1_000_000 + run)(fuzz_run)()
    return tally


def recommend(channel: grpc.Channel) -> list[tuple[str, float]]:
    """The baseline Recommend's answer."""
    answer = recommender_pb2_grpc.RecommenderStub(channel).Recommend(BASELINE, timeout=30)
    return [(item.item_id, item.score) for item in answer.items]


def same_answer(before: list[tuple[str, float]], after: list[tuple[str, float]], base: set[str]) -> bool:
    """The model's own items in the same order with the same scores (to 1e-5).

    A byte flipped in a fuzzed UpsertItems can add an item under an id nobody knows, never deleted; it may
    rank among them, pushing the last ones out: only those may be missing.
    """
    kept = [(item, score) for item, score in after if item in base]
    return len(after) == len(before) and all(
        a == b and abs(x - y) <= 1e-5 for (a, x), (b, y) in zip(before, kept, strict=False)
    )


def base_items(repository: Path) -> set[str]:
    """Item ids of the served (highest) version of the model."""
    versions = [p for p in (repository / "recommender").iterdir() if p.name.isdigit()]
    return set((max(versions, key=lambda p: int(p.name)) / "item_ids.txt").read_text().split())


def rss_verdict(samples: list[tuple[int, int]], calls: int) -> dict:
    """Peaks per quarter of the calls, the second half's slope, and whether RSS is stable."""
    quarters = [
        [rss for done, rss in samples if q * calls / 4 < done <= (q + 1) * calls / 4] for q in range(4)
    ]
    peaks = [max(quarter) if quarter else 0 for quarter in quarters]
    half = [(done, rss * 1024) for done, rss in samples if done > calls / 2]
    slope = _slope(half)
    growth = peaks[3] / peaks[1] - 1 if peaks[1] else 0.0
    return {
        "quarter_peaks_kib": peaks,
        "last_vs_second_quarter_peak": growth,
        "second_half_slope_bytes_per_call": slope,
        "stable": growth <= PEAK_GROWTH_LIMIT and slope < SLOPE_LIMIT_BYTES_PER_CALL,
    }


def _slope(points: list[tuple[int, int]]) -> float:
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return covariance / variance if variance else 0.0


def plot(samples: list[tuple[int, int]], start_kib: int, path: Path) -> None:
    """RSS over calls, small."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 2.6), dpi=100)
    axes.plot([0, *(done for done, _ in samples)], [start_kib / 1024, *(rss / 1024 for _, rss in samples)])
    axes.set_xlabel("fuzzed calls")
    axes.set_ylabel("server RSS (MiB)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


STATUS_ORDER = (
    "OK",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
)
WIDTH = 110
SENT = (
    "Sent through a generic channel call with no serializer, so broken bytes reach the server, one call of each "
    "kind per example: random bytes and malformed wire data (overlong varints, lengths past the end, groups "
    "nested 200,000 deep); messages built from each request type's descriptor with ids of 0, 256, 257 and "
    "100,000 bytes, invalid UTF-8 in string fields, integers at and past the edges of their type, NaN, "
    "infinite and denormal floats, repeated fields up to just past the 4 MiB limit; those messages cut short "
    "or with a byte flipped; plain valid messages; ModelInfer requests for the real models wrong in one way "
    "at a time (datatypes, negative dimensions, shapes whose element count overflows int64, element counts "
    "off, raw data a byte off, BYTES length prefixes that claim one byte too many or too few, zero or "
    "2^32 - 1 bytes, raw_input_contents for fewer or more inputs, parameters of every type); events with times "
    "outside protobuf's Timestamp range and unknown types; calls one past every per-call limit."
)
FOUND = (
    "Fixed on the way, each with a regression test: naming the invalid UTF-8 field of an undecodable request "
    "walked a varint of 0xff bytes as one ever-growing integer (a 4 MiB request froze the event loop for "
    "hours; 300 kB took 4.7 s); RecordEvents and UpsertItems converted two million empty elements before "
    "counting them (3.8 s of the event loop per 4 MiB request); an event time outside Timestamp's range was "
    "stored and made that user's GetUserHistory INTERNAL for good; an error quoting a 100 kB id could not be "
    "delivered (the client saw RESOURCE_EXHAUSTED, not NOT_FOUND); on the grpc.aio front end, health and "
    "reflection requests that did not decode were UNKNOWN."
)


def section(result: dict) -> str:
    """The `## Hostile input` section of docs/reliability.md."""
    return "\n".join(
        [
            SECTION,
            "",
            _fill(_what_ran(result)),
            "",
            _fill(SENT),
            "",
            *_table(result),
            "",
            _fill(_verdicts(result)),
            "",
            _fill(_rss_summary(result)),
            "",
            f"![Server RSS over the fuzzed calls]({PLOT.name})",
            "",
            _fill(FOUND),
            "",
        ]
    )


def _fill(paragraph: str) -> str:
    return textwrap.fill(paragraph, WIDTH, break_long_words=False, break_on_hyphens=False)


def _what_ran(result: dict) -> str:
    return (
        f"`flock /tmp/bench.lock .venv/bin/python bench/fuzz.py` ({result['code']}, {result['machine']}): "
        f"{result['calls']:,} fuzzed calls, one at a time, over all {result['methods']} methods of "
        f"{len(result['by_service'])} services (every method the descriptors name, streaming ones included, "
        "reflection under both its names), against `recserve serve` with the demo model and Events and Catalog "
        f"enabled (seed {result['seed']}, {result['seconds'] / 60:.0f} minutes). tests/test_fuzz.py runs the "
        "same strategies with a fixed seed in `make test`, on both front ends (~5,000 calls)."
    )


def _table(result: dict) -> list[str]:
    counts = result["by_service"]
    codes = [code for code in STATUS_ORDER if any(code in c for c in counts.values())]
    codes += sorted({code for c in counts.values() for code in c} - set(codes))
    order = list(dict.fromkeys(method.service for method in served_methods()))  # the descriptors' order
    rows = [
        f"| `{service}` | {sum(c.values()):,} | " + " | ".join(f"{c.get(code, 0):,}" for code in codes) + " |"
        for service, c in sorted(counts.items(), key=lambda item: order.index(item[0]))
    ]
    return [
        "| service | calls | " + " | ".join(codes) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in codes) + " |",
        *rows,
    ]


def _verdicts(result: dict) -> str:
    failures, refused = result["failure_count"], sum(result["small_refusals"].values())
    answers = (
        "Every answer was a status its method's docs allow (the table in `tests/fuzzing/methods.py`), never "
        "UNKNOWN or INTERNAL, and no call hung"
        if not failures
        else f"**{failures:,} answers were not documented statuses, or calls hung** (bench/results/fuzz.json)"
    )
    exhausted = (
        "every RESOURCE_EXHAUSTED was a request over the 4 MiB limit"
        if not refused
        else f"{refused:,} RESOURCE_EXHAUSTED were the batcher's refusals ({result['small_refusals']})"
    )
    return (
        f"{answers}; {exhausted}; the DEADLINE_EXCEEDED are ModelInfer calls whose `timeout` parameter ran out "
        f"in the queue. Health said SERVING at all {result['health_checks']} checks (one every "
        f"{result['sample_every']:,} calls): {'yes' if not result['not_serving'] else 'NO'}; the baseline "
        f"Recommend answered as before the first call: {'yes' if result['recommend_unchanged'] else 'NO'}."
    )


def _rss_summary(result: dict) -> str:
    rss, verdict = result["rss"], result["rss"]["verdict"]
    peaks = " / ".join(f"{peak / 1024:.0f}" for peak in verdict["quarter_peaks_kib"])
    return (
        f"Server RSS: {rss['start_kib'] / 1024:.0f} MiB when SERVING, before the first call; peaks per quarter "
        f"of the calls {peaks} MiB; {rss['max_kib'] / 1024:.0f} MiB at most, {rss['end_kib'] / 1024:.0f} MiB "
        f"at the end. Stable means the last quarter's peak within {PEAK_GROWTH_LIMIT:.0%} of the second's "
        f"(here {verdict['last_vs_second_quarter_peak']:+.1%}) and the second half's slope under "
        f"{SLOPE_LIMIT_BYTES_PER_CALL:.0f} bytes per call (here "
        f"{verdict['second_half_slope_bytes_per_call']:.0f}): "
        + ("**stable**." if verdict["stable"] else "**growing**.")
    )


def splice_section(path: Path, text: str) -> None:
    """Put `text` in place of the file's `## Hostile input` section (or at its end); nothing else changes."""
    document = path.read_text() if path.exists() else DOC_INTRO
    start = document.find(f"\n{SECTION}\n")
    if start < 0:
        path.write_text(document.rstrip("\n") + "\n\n" + text)
        return
    end = document.find("\n## ", start + 1)
    rest = document[end + 1 :] if end >= 0 else ""
    path.write_text(document[: start + 1] + text + ("\n" + rest if rest else ""))


def parse_args() -> argparse.Namespace:
    """How many calls, which seed, how often to sample."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--no-docs", action="store_true", help="write bench/results/fuzz.json only")
    return parser.parse_args()


def main() -> int:
    """Run, write the results, and say whether the server held."""
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the server is stopped on the way out
    os.environ.update(SERVER_ENV)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="recserve-fuzz-") as workdir:
        server = start_server(args.model_repository, SERVER_FLAGS, Path(workdir))
        try:
            with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
                before = recommend(channel)
                start_kib = rss_kib(server.process.pid)
                tally = fuzz(server, channel, args.calls, args.seed, args.sample_every)
                alive = server.process.poll() is None
                catalog_pb2_grpc.CatalogStub(channel).DeleteItems(
                    catalog_pb2.DeleteItemsRequest(item_ids=values.WRITTEN_ITEMS), timeout=30
                )
                after = recommend(channel)
                unchanged = same_answer(before, after, base_items(args.model_repository))
                end_kib = rss_kib(server.process.pid)
        finally:
            server.stop()
    samples = tally.rss_samples
    result = {
        "code": code_under_test(),
        "machine": machine_note(),
        "calls": tally.calls,
        "seed": args.seed,
        "methods": len(served_methods()),
        "sample_every": args.sample_every,
        "seconds": time.monotonic() - started,
        "by_service": {service: dict(counts) for service, counts in tally.by_service.items()},
        "by_method": {path: dict(counts) for path, counts in tally.by_method.items()},
        "failure_count": tally.failure_count,
        "small_refusals": dict(tally.small_refusals),
        "failures": tally.failures,
        "health_checks": len(samples),
        "not_serving": tally.not_serving,
        "server_alive": alive,
        "recommend_unchanged": unchanged,
        "recommend_before": before,
        "recommend_after": after,
        "rss": {
            "start_kib": start_kib,
            "end_kib": end_kib,
            "max_kib": max(rss for _, rss in samples),
            "samples": samples,
            "verdict": rss_verdict(samples, tally.calls),
        },
    }
    print(f"results: {write_result('fuzz', result)}")
    if not args.no_docs:
        plot(samples, start_kib, PLOT)
        splice_section(DOC, section(result))
        print(f"docs: {DOC.relative_to(REPO_ROOT)}, {PLOT.relative_to(REPO_ROOT)}")
    held = alive and unchanged and not tally.failure_count and not tally.not_serving
    print(section(result))
    return 0 if held and result["rss"]["verdict"]["stable"] else 1


if __name__ == "__main__":
    sys.exit(main())
