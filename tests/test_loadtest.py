"""`recserve loadtest`: ghz's options, templates, statistics and formats, and real runs against real servers.

Real runs go against the session's recserve server (reflection and --proto) and against the trivial benchmark
server started in-process (any unary method, not only recserve's; --protoset). Statistics are checked against
values worked out by hand from ghz's formulas.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, json_format
from grpc_health.v1 import health_pb2

from bench.trivial_server import build_server
from recserve.client.cli import build_client_parser
from recserve.client.loadtest.descriptors import MessageCodec, resolve_method, split_call
from recserve.client.loadtest.options import (
    MAX_TOTAL_WITH_DURATION,
    SetupError,
    options_from_args,
    parse_go_duration,
)
from recserve.client.loadtest.outcomes import CLOSING_ERROR
from recserve.client.loadtest.report import (
    Bucket,
    build_report,
    format_csv,
    format_nano_unit,
    format_summary,
    go_float,
    go_json,
    histogram,
    percentiles,
    report_json,
)
from recserve.client.loadtest.runner import (
    LoadRunner,
    RunResult,
    native_transport_available,
    run_in_new_loop,
    run_load,
)
from recserve.client.loadtest.templates import CallContext, TemplateError, build_plan, compile_string
from recserve.server.cli import main as recserve_main
from recserve.v1 import recommender_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO = "protos/recserve/v1/recommender.proto"
RECOMMEND = "recserve.v1.Recommender.Recommend"
HEALTH_CHECK = "grpc.health.v1.Health/Check"
MS = 1_000_000
JSON_KEYS = [
    "date", "endReason", "options", "count", "total", "average", "fastest", "slowest", "rps",
    "errorDistribution", "statusCodeDistribution", "latencyDistribution", "histogram", "details",
]  # fmt: skip


class TrivialServerThread:
    """bench/trivial_server.py's server on a free port, on its own event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="trivial-server", daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        self.server, port = asyncio.run_coroutine_threadsafe(build_server(), self.loop).result(30)
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def trivial_address() -> Iterator[str]:
    with TrivialServerThread() as address:
        yield address


def parse(argv: list[str], stdin: str = ""):
    args = build_client_parser().parse_args(["loadtest", *argv])
    return options_from_args(args, io.StringIO(stdin))


def loadtest(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = build_client_parser().parse_args(["loadtest", *argv])
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def loadtest_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = loadtest([*argv, "-O", "json"], capsys)
    assert code == 0, err
    return json.loads(out)


# --- options ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("20s", 20 * 10**9),
        ("1m30s", 90 * 10**9),
        ("500ms", 500 * MS),
        ("1.5h", 5400 * 10**9),
        ("2h45m3.5s", (2 * 3600 + 45 * 60 + 3.5) * 10**9),
        (".5s", 500 * MS),
        ("250us", 250_000),
        ("250µs", 250_000),
        ("10ns", 10),
        ("0", 0),
    ],
)
def test_go_durations(text: str, nanoseconds: float) -> None:
    assert parse_go_duration(text) == int(nanoseconds)


@pytest.mark.parametrize("text", ["", "5", "5x", "s", "1m30", "1.5", "ms", "1 s", "--1s"])
def test_invalid_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_flags_become_typed_options() -> None:
    options = parse(
        ["--insecure", "--call", RECOMMEND, "-d", '{"user_id":"user-2"}', "-n", "1000", "-c", "32",
         "-r", "50", "--connections", "4", "-t", "1m30s", "--connect-timeout", "2s",
         "-m", '{"X-Team":"recs"}', "-O", "pretty", "--skipFirst", "10", "--count-errors",
         "--name", "nightly", "--tags", '{"env":"ci"}', "127.0.0.1:9"]
    )  # fmt: skip
    assert (options.call, options.host, options.insecure) == (RECOMMEND, "127.0.0.1:9", True)
    assert (options.total, options.concurrency, options.rps, options.connections) == (1000, 32, 50, 4)
    assert (options.timeout_ns, options.connect_timeout_ns) == (90 * 10**9, 2 * 10**9)
    assert options.data == {"user_id": "user-2"}
    assert options.metadata == {"X-Team": "recs"} and options.tags == {"env": "ci"}
    assert (options.format, options.skip_first, options.count_errors, options.name) == (
        "pretty",
        10,
        True,
        "nightly",
    )


def test_defaults_are_ghz_defaults() -> None:
    options = parse(["--call", RECOMMEND, "h:1"])
    assert (options.total, options.concurrency, options.connections, options.rps) == (200, 50, 1, 0)
    assert (options.timeout_ns, options.connect_timeout_ns, options.format) == (
        20 * 10**9,
        10 * 10**9,
        "summary",
    )
    assert options.insecure is False and options.data == {}


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".toml"])
def test_config_file_with_flags_overriding_it(tmp_path: Path, suffix: str) -> None:
    config = tmp_path / f"ghz{suffix}"
    config.write_text(
        {
            ".json": '{"call": "a.B.C", "host": "file:1", "insecure": true, "total": 50, "concurrency": 5,'
            ' "timeout": "3s", "skipFirst": 2, "data": {"user_id": "u-{{.RequestNumber}}"}}',
            ".yaml": "call: a.B.C\nhost: file:1\ninsecure: true\ntotal: 50\nconcurrency: 5\ntimeout: 3s\n"
            "skipFirst: 2\ndata:\n  user_id: u-{{.RequestNumber}}\n",
            ".toml": 'call = "a.B.C"\nhost = "file:1"\ninsecure = true\ntotal = 50\nconcurrency = 5\n'
            'timeout = "3s"\nskipFirst = 2\n[data]\nuser_id = "u-{{.RequestNumber}}"\n',
        }[suffix]
    )
    from_file = parse(["--config", str(config)])
    assert (from_file.call, from_file.host, from_file.insecure) == ("a.B.C", "file:1", True)
    assert (from_file.total, from_file.concurrency, from_file.timeout_ns, from_file.skip_first) == (
        50,
        5,
        3 * 10**9,
        2,
    )
    assert from_file.data == {"user_id": "u-{{.RequestNumber}}"}

    overridden = parse(["--config", str(config), "-n", "30", "-t", "500ms", "-d", '{"k": 3}', "flag:2"])
    assert (overridden.total, overridden.timeout_ns, overridden.host) == (30, 500 * MS, "flag:2")
    assert overridden.data == {"k": 3}
    assert overridden.concurrency == 5  # not given on the command line: the file's value stays


def test_config_file_rejects_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "ghz.json"
    config.write_text('{"call": "a.B.C", "host": "h:1", "totl": 5}')
    with pytest.raises(SetupError, match="unknown option 'totl'"):
        parse(["--config", str(config)])


def test_config_file_refuses_ghz_options_it_would_ignore_unless_at_their_default(tmp_path: Path) -> None:
    config = tmp_path / "ghz.json"
    config.write_text('{"call": "a.B.C", "host": "h:1", "skipTLS": false, "load-schedule": "const"}')
    assert parse(["--config", str(config)]).call == "a.B.C"
    for key, value in (("max-duration", '"2s"'), ("skipTLS", "true"), ("load-schedule", '"step"')):
        config.write_text(f'{{"call": "a.B.C", "host": "h:1", "{key}": {value}}}')
        with pytest.raises(SetupError, match=f"ghz's option '{key}' is not supported"):
            parse(["--config", str(config)])


@pytest.mark.parametrize(
    ("flag", "named"), [(["-x", "1s"], "-x/--max-duration"), (["--skipTLS"], "--skipTLS")]
)
def test_a_ghz_flag_it_lacks_is_refused_by_name_with_exit_code_1(
    flag: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = recserve_main(["loadtest", "--insecure", "--call", RECOMMEND, *flag, "127.0.0.1:1"])
    assert code == 1, "ghz exits 1 on a bad command line"
    assert f"ghz's {named} is not supported by recserve loadtest" in capsys.readouterr().err
    assert recserve_main(["loadtest", "--call", RECOMMEND, "-n"]) == 1


def test_data_from_stdin_and_file(tmp_path: Path) -> None:
    assert parse(["--call", "a.B.C", "-d", "@", "h:1"], stdin='[{"a": "1"}, {"a": "2"}]').data == [
        {"a": "1"},
        {"a": "2"},
    ]
    data_file = tmp_path / "data.json"
    data_file.write_text('{"user_id": "user-7"}')
    assert parse(["--call", "a.B.C", "-D", str(data_file), "h:1"]).data == {"user_id": "user-7"}


def test_duration_overrides_total() -> None:
    options = parse(["--call", "a.B.C", "-n", "10", "-z", "1m", "h:1"])
    assert options.duration_ns == 60 * 10**9
    assert options.effective_total == MAX_TOTAL_WITH_DURATION


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--call", "a.B.C"], "HOST:PORT"),
        (["h:1"], "--call"),
        (["--call", "a.B.C", "-c", "2", "--connections", "3", "h:1"], "connections cannot be greater"),
        (["--call", "a.B.C", "-n", "5", "--skipFirst", "6", "h:1"], "cannot skip more"),
        (["--call", "a.B.C", "-n", "ten", "h:1"], "whole number"),
        (["--call", "a.B.C", "-d", "{bad", "h:1"], "not valid JSON"),
        (["--call", "a.B.C", "-d", "[1, 2]", "h:1"], "array of objects"),
        (["--call", "a.B.C", "-O", "html", "h:1"], "summary, csv, json, pretty"),
        (["--call", "a.B.C", "-m", '{"n": 1}', "h:1"], "object of strings"),
        (["--call", "a.B.C", "-t", "5", "h:1"], "Go duration"),
        (["--call", "a.B.C", "-m", '{"x-name": "caf\u00e9"}', "h:1"], "'x-name' must be printable ASCII"),
        (["--call", "a.B.C", "-m", '{"x-a": "line\\nbreak"}', "h:1"], "'x-a' must be printable ASCII"),
        (["--call", "a.B.C", "-m", '{"Bad Key": "v"}', "h:1"], "'Bad Key' is not a valid metadata key"),
        (["--call", "a.B.C", "-m", '{"grpc-timeout": "1S"}', "h:1"], "not starting with 'grpc-'"),
    ],
)
def test_bad_options_are_setup_errors(argv: list[str], message: str) -> None:
    with pytest.raises(SetupError, match=message):
        parse(argv)


@pytest.mark.parametrize("call", ["recserve.v1.Recommender.Recommend", "recserve.v1.Recommender/Recommend"])
def test_both_call_spellings(call: str) -> None:
    assert split_call(call) == ("recserve.v1.Recommender", "Recommend")


# --- templates -------------------------------------------------------------------------------------------


def render(text: str, number: int = 7, worker: str = "g3c1") -> str:
    renderer = compile_string(text)
    assert renderer is not None
    return renderer(CallContext(number, worker))


def test_call_data_fields() -> None:
    assert render("user-{{.RequestNumber}}") == "user-7"
    assert render("{{ .WorkerID }}/{{.RequestNumber}}") == "g3c1/7"
    assert abs(int(render("{{.TimestampUnix}}")) - time.time()) < 5
    assert compile_string("no templates here") is None


def test_uuid_is_fixed_within_a_call_and_new_per_call() -> None:
    renderer = compile_string("{{.UUID}} {{.UUID}}")
    assert renderer is not None
    first, again = renderer(CallContext(0, "g0c0")).split()
    assert first == again and len(first) == 36
    assert renderer(CallContext(1, "g0c0")).split()[0] != first


def test_random_functions() -> None:
    values = {int(render("{{randomInt 3 6}}")) for _ in range(300)}
    assert values == {3, 4, 5}  # [MIN, MAX), as in ghz
    assert len(render("{{randomString 12}}")) == 12
    assert 2 <= len(render("{{randomString 0}}")) <= 16


@pytest.mark.parametrize("text", ["{{.Nope}}", "{{nope 1}}", "{{randomInt 1}}", "{{randomInt a b}}", "{{}}"])
def test_bad_templates(text: str) -> None:
    with pytest.raises(TemplateError):
        compile_string(text)


def test_a_templated_bool_is_refused_as_json_parsing_refuses_it() -> None:
    codec = MessageCodec(pb.RecommendRequest)
    data = {"user_id": "u-{{.RequestNumber}}", "include_recent_items": "{{.IsServerStreaming}}"}
    with pytest.raises(ValueError, match="true or false"):
        build_plan(data, None, codec, {"IsServerStreaming": "false"})


def test_static_data_is_serialized_once_and_round_robin() -> None:
    codec = MessageCodec(pb.RecommendRequest)
    plan = build_plan([{"user_id": "user-1"}, {"user_id": "user-2", "k": 5}], None, codec, {})
    assert plan.is_static
    payloads = [plan.build(number, "g0c0")[0] for number in range(4)]
    assert payloads[0] is payloads[2] and payloads[1] is payloads[3]  # request N gets data[N % len]
    assert pb.RecommendRequest.FromString(payloads[1]) == pb.RecommendRequest(user_id="user-2", k=5)


@pytest.mark.parametrize(
    "data",
    [
        {"user_id": "user-{{.RequestNumber}}", "k": 5, "recent_item_ids": ["item-1"]},  # fast path
        {"userId": "user-{{.RequestNumber}}", "k": "{{.RequestNumber}}"},  # fast path, JSON names, int field
        {"user_id": "u", "recent_item_ids": ["item-{{.RequestNumber}}"]},  # nested template: full parse
    ],
)
def test_templated_payload_matches_json_parsing(data: dict) -> None:
    codec = MessageCodec(pb.RecommendRequest)
    plan = build_plan(data, {"x-req": "{{.RequestNumber}}"}, codec, {})
    assert not plan.is_static
    payload, metadata = plan.build(42, "g0c0")
    rendered = json.loads(json.dumps(data).replace("{{.RequestNumber}}", "42"))
    expected = json_format.ParseDict(rendered, pb.RecommendRequest())
    assert pb.RecommendRequest.FromString(payload) == expected
    assert metadata == (("x-req", "42"),)


# --- statistics ------------------------------------------------------------------------------------------


def run_result(
    latencies_ms: list[float], errors: dict[int, tuple[str, str]], total_s: float = 2.0
) -> RunResult:
    results = []
    for index, latency_ms in enumerate(latencies_ms):
        status, error = errors.get(index, ("OK", ""))
        results.append((index * 1000, int(latency_ms * MS), status, error))
    return RunResult(results, int(total_s * 10**9), "normal", 1_700_000_000 * 10**9)


# Latencies 1..10 ms OK, plus 100 ms and 0.5 ms failures, over 2 s.
NOT_FOUND = ("NotFound", "rpc error: code = NotFound desc = unknown item")
UNAVAILABLE = ("Unavailable", "rpc error: code = Unavailable desc = gone")
MIXED = run_result([3, 1, 2, 4, 5, 100, 6, 7, 8, 9, 10, 0.5], {5: NOT_FOUND, 11: UNAVAILABLE})


def test_counts_rps_and_average_include_errors() -> None:
    report = build_report(MIXED, parse(["--call", "a.B.C", "h:1"]), 0)
    assert report.count == 12
    assert report.rps == 6.0  # 12 results / 2 s
    assert report.average_ns == 12_958_333  # (55 + 100 + 0.5) ms / 12, truncated to ns
    assert report.status_distribution == {"OK": 10, "NotFound": 1, "Unavailable": 1}
    assert report.error_distribution == {NOT_FOUND[1]: 1, UNAVAILABLE[1]: 1}


def test_fastest_slowest_percentiles_and_histogram_use_ok_results_only() -> None:
    report = build_report(MIXED, parse(["--call", "a.B.C", "h:1"]), 0)
    assert (report.fastest_ns, report.slowest_ns) == (1 * MS, 10 * MS)
    # nearest rank on n=10: p10 -> i=1.0 exact -> L[0]; p25 -> 2.5 -> L[2]; p50 -> 5.0 -> L[4]; p75 -> L[7];
    # p90 -> 9.0 exact -> L[8]; p95 -> 9.5 -> L[9]; p99 -> 9.9 -> L[9]
    assert report.latency_distribution == [
        (10, 1 * MS), (25, 3 * MS), (50, 5 * MS), (75, 8 * MS), (90, 9 * MS), (95, 10 * MS), (99, 10 * MS)
    ]  # fmt: skip
    # marks 1.0, 1.9, 2.8, ... 9.1 ms, then 10 ms; 2 ms is above 1.9 so it counts at 2.8
    assert report.histogram is not None
    assert [round(bucket.mark_s * 1000, 6) for bucket in report.histogram] == [
        1.0, 1.9, 2.8, 3.7, 4.6, 5.5, 6.4, 7.3, 8.2, 9.1, 10.0
    ]  # fmt: skip
    assert [bucket.count for bucket in report.histogram] == [1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert [bucket.frequency for bucket in report.histogram] == [0.1, 0.0] + [0.1] * 9


def test_count_errors_and_skip_first() -> None:
    counted = build_report(MIXED, parse(["--call", "a.B.C", "--count-errors", "h:1"]), 0)
    assert (counted.fastest_ns, counted.slowest_ns) == (MS // 2, 100 * MS)
    assert counted.histogram is not None and sum(bucket.count for bucket in counted.histogram) == 12

    skipped = build_report(MIXED, parse(["--call", "a.B.C", "--skipFirst", "2", "h:1"]), 0)
    assert skipped.count == 10 and skipped.rps == 5.0
    assert skipped.status_distribution == {"OK": 8, "NotFound": 1, "Unavailable": 1}


def test_percentile_edge_cases() -> None:
    assert percentiles([0.004]) == [(p, 4 * MS) for p in (10, 25, 50, 75, 90, 95, 99)]
    two = percentiles([0.001, 0.002])  # p50 -> 1.0 exact -> L[0]; p75 -> 1.5 -> L[1]
    assert dict(two)[50] == MS and dict(two)[75] == 2 * MS
    assert histogram([0.003, 0.003], 0.003, 0.003)[0] == Bucket(0.003, 2, 1.0)


@pytest.mark.parametrize(
    ("ns", "text"),
    [(9999, "9999 ns"), (10000, "0.01 ms"), (1_560_000, "1.56 ms"), (999_994_999, "999.99 ms"),
     (1_000_000_000, "1.00 s"), (61_500_000_000, "61.50 s")],
)  # fmt: skip
def test_duration_units(ns: int, text: str) -> None:
    assert format_nano_unit(ns) == text


# --- outputs ---------------------------------------------------------------------------------------------


def test_summary_layout() -> None:
    result = run_result([1, 2, 3, 4, 5, 100], {5: NOT_FOUND}, total_s=0.5)
    text = format_summary(build_report(result, parse(["--call", "a.B.C", "--name", "smoke", "h:1"]), 0))
    bar = "∎" * 40
    assert text == (
        "\nSummary:\n"
        "  Name:\t\tsmoke\n"
        "  Count:\t6\n"
        "  Total:\t500.00 ms\n"
        "  Slowest:\t5.00 ms\n"
        "  Fastest:\t1.00 ms\n"
        "  Average:\t19.17 ms\n"
        "  Requests/sec:\t12.00\n"
        "\n"
        "Response time histogram:\n"
        f"  1.000 [1] |{bar}\n"
        "  1.400 [0] |\n"
        "  1.800 [0] |\n"
        f"  2.200 [1] |{bar}\n"
        "  2.600 [0] |\n"
        f"  3.000 [1] |{bar}\n"
        "  3.400 [0] |\n"
        "  3.800 [0] |\n"
        f"  4.200 [1] |{bar}\n"
        "  4.600 [0] |\n"
        f"  5.000 [1] |{bar}\n"
        "\n"
        "Latency distribution:\n"
        "  10 % in 1.00 ms \n"
        "  25 % in 2.00 ms \n"
        "  50 % in 3.00 ms \n"
        "  75 % in 4.00 ms \n"
        "  90 % in 5.00 ms \n"
        "  95 % in 5.00 ms \n"
        "  99 % in 5.00 ms \n"
        "\n"
        "Status code distribution:\n"
        "  [OK]         5 responses   \n"
        "  [NotFound]   1 responses   \n"
        "\n"
        "Error distribution:\n"
        "  [1]   rpc error: code = NotFound desc = unknown item   \n"
        "\n"
    )


def test_summary_histogram_pads_marks_and_counts() -> None:
    latencies = [1.0] * 120 + [12.0] * 3
    text = format_summary(build_report(run_result(latencies, {}), parse(["--call", "a.B.C", "h:1"]), 0))
    lines = text.split("Response time histogram:\n")[1].split("\n\n")[0].splitlines()
    assert len(lines) == 11
    assert lines[0] == "  1.000  [120] |" + "∎" * 40
    assert lines[1] == "  2.100  [0]   |"
    assert lines[10] == "  12.000 [3]   |∎"  # (3*40 + 120//2) // 120 = 1


def test_csv_layout() -> None:
    text = format_csv(
        build_report(run_result([1.234, 5], {1: NOT_FOUND}), parse(["--call", "a.B.C", "h:1"]), 0)
    )
    assert text == f"\nduration (ms),status,error\n1.23,OK,\n5.00,NotFound,{NOT_FOUND[1]}\n"


def test_json_is_ghz_shaped() -> None:
    options = parse(
        ["--call", "a.B.C", "--name", "n", "--tags", '{"b":"2","a":"1"}', "-d", '{"z":1,"a":"<"}', "h:1"]
    )
    document = go_json(report_json(build_report(MIXED, options, 1_700_000_000 * 10**9)))
    parsed = json.loads(document)
    assert list(parsed) == ["date", "name", *JSON_KEYS[1:], "tags"]
    assert parsed["options"]["data"] == {"a": "<", "z": 1}
    assert '"data":{"a":"\\u003c","z":1}' in document  # Go sorts map keys and escapes HTML characters
    assert '"tags":{"a":"1","b":"2"}' in document
    assert parsed["latencyDistribution"][0] == {"percentage": 10, "latency": MS}
    assert parsed["histogram"][0] == {"mark": 0.001, "count": 1, "frequency": 0.1}
    assert parsed["details"][5] == {
        "timestamp": parsed["details"][5]["timestamp"], "latency": 100 * MS, "error": NOT_FOUND[1],
        "status": "NotFound",
    }  # fmt: skip
    assert datetime.fromisoformat(parsed["details"][5]["timestamp"].replace("Z", "+00:00")).year == 2023
    assert parsed["date"].startswith("2023-11-1")


@pytest.mark.parametrize(
    ("value", "text"),
    [(2.0, "2"), (0.5, "0.5"), (1e-7, "1e-7"), (5e-05, "0.00005"), (1e21, "1e+21"), (0.0, "0")],
)
def test_floats_as_go_writes_them(value: float, text: str) -> None:
    assert go_float(value) == text


# --- real runs -------------------------------------------------------------------------------------------


def test_templated_run_via_reflection(server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    report = loadtest_json(
        ["--insecure", "--call", RECOMMEND, "-d", '{"user_id":"user-{{randomInt 0 1500}}","k":5}',
         "-n", "200", "-c", "8", "--connections", "2", server_address],
        capsys,
    )  # fmt: skip
    assert report["count"] == 200
    assert report["statusCodeDistribution"] == {"OK": 200}
    assert report["errorDistribution"] == {}
    assert report["endReason"] == "normal"
    assert len(report["details"]) == 200
    assert report["fastest"] <= report["latencyDistribution"][2]["latency"] <= report["slowest"]
    assert sum(bucket["count"] for bucket in report["histogram"]) == 200


def test_run_via_proto_file(server_address: str, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    report = loadtest_json(
        ["--insecure", "--proto", PROTO, "--call", "recserve.v1.Recommender/SimilarItems", "-d",
         '[{"item_id":"item-1"},{"item_id":"item-2","k":3}]', "-n", "40", "-c", "4", server_address],
        capsys,
    )  # fmt: skip
    assert report["statusCodeDistribution"] == {"OK": 40}
    assert report["options"]["proto"] == PROTO
    assert report["options"]["import-paths"] == ["protos/recserve/v1", "."]


def test_failed_calls_are_counted_with_go_names(
    server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = loadtest(
        ["--insecure", "--call", "recserve.v1.Recommender.Score", "-d",
         '[{"user_id":"user-1","item_ids":["item-1"]},{"user_id":"user-2","item_ids":["item-2"]},'
         '{"user_id":"user-1","item_ids":["item-missing"]}]', "-n", "21", "-c", "4", server_address],
        capsys,
    )  # fmt: skip
    assert code == 0, err  # failed calls do not fail the run
    assert (
        "Status code distribution:\n  [OK]         14 responses   \n  [NotFound]   7 responses    \n" in out
    )
    assert (
        "Error distribution:\n  [7]   rpc error: code = NotFound desc = unknown item id 'item-missing'" in out
    )


def test_a_relative_proto_is_found_through_the_import_paths(
    server_address: str, capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = "recserve/v1/recommender.proto"
    report = loadtest_json(
        ["--insecure", "--proto", relative, "-i", str(REPO_ROOT / "protos"), "--call", RECOMMEND,
         "-d", '{"user_id": "user-1"}', "-n", "5", "-c", "1", server_address],
        capsys,
    )  # fmt: skip
    assert report["statusCodeDistribution"] == {"OK": 5}
    code, _, err = loadtest(
        ["--insecure", "--proto", "nope/x.proto", "--call", RECOMMEND, server_address], capsys
    )
    assert code == 1 and "cannot read proto file nope/x.proto (looked in nope, ." in err


def test_an_unknown_service_is_named(server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = loadtest(["--insecure", "--call", "recserve.v1.Nope.Recommend", server_address], capsys)
    assert (code, out) == (1, "")
    assert "server reflection does not know the service recserve.v1.Nope" in err


def test_unknown_method_is_a_setup_error(server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = loadtest(
        ["--insecure", "--call", "recserve.v1.Recommender.Nope", server_address], capsys
    )
    assert (code, out) == (1, "")
    assert err.startswith("error: service recserve.v1.Recommender has no method Nope")


def test_unreachable_reflection_is_a_setup_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = loadtest(
        ["--insecure", "--call", RECOMMEND, "--connect-timeout", "2s", "127.0.0.1:1"], capsys
    )
    assert (code, out) == (1, "")
    assert "server reflection on 127.0.0.1:1 failed: UNAVAILABLE" in err


def test_any_unary_method_and_protoset(
    trivial_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    by_reflection = loadtest_json(
        ["--insecure", "--call", HEALTH_CHECK, "-n", "50", "-c", "5", trivial_address], capsys
    )
    assert by_reflection["statusCodeDistribution"] == {"OK": 50}

    protoset = tmp_path / "health.protoset"
    descriptor_set = descriptor_pb2.FileDescriptorSet()
    health_pb2.DESCRIPTOR.CopyToProto(descriptor_set.file.add())
    protoset.write_bytes(descriptor_set.SerializeToString())
    by_protoset = loadtest_json(
        ["--insecure", "--protoset", str(protoset), "--call", "grpc.health.v1.Health.Check",
         "-d", '{"service":"{{.WorkerID}}"}', "-n", "30", "-c", "3", trivial_address],
        capsys,
    )  # fmt: skip
    assert by_protoset["statusCodeDistribution"] == {"OK": 30}


def test_duration_mode(trivial_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    report = loadtest_json(
        ["--insecure", "--call", HEALTH_CHECK, "-z", "1s", "-n", "5", "-c", "4", "--duration-stop", "wait",
         trivial_address],
        capsys,
    )  # fmt: skip
    assert report["endReason"] == "timeout"
    assert report["count"] > 5  # -z overrides -n
    assert 0.95e9 <= report["total"] <= 1.6e9
    assert report["options"]["duration"] == 10**9 and report["options"]["total"] == MAX_TOTAL_WITH_DURATION


def test_rate_limit_is_honoured(trivial_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    report = loadtest_json(
        ["--insecure", "--call", HEALTH_CHECK, "--rps", "100", "-n", "60", "-c", "10", trivial_address],
        capsys,
    )
    assert report["count"] == 60
    # request N is due at N/100 s: the 60th at 0.59 s
    assert 85 <= report["rps"] <= 105
    assert 0.55e9 <= report["total"] <= 0.75e9


def test_report_to_file_and_csv(
    trivial_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.csv"
    code, out, err = loadtest(
        [
            "--insecure",
            "--call",
            HEALTH_CHECK,
            "-n",
            "10",
            "-c",
            "2",
            "-O",
            "csv",
            "-o",
            str(output),
            trivial_address,
        ],
        capsys,
    )
    assert (code, out) == (0, ""), err
    lines = output.read_text().splitlines()
    assert lines[:2] == ["", "duration (ms),status,error"] and len(lines) == 12
    assert all(line.endswith(",OK,") for line in lines[2:])


class FailingPlan:
    """A request plan whose fourth request cannot be built (say, a template renders a bad value)."""

    is_static = False

    def static_requests(self) -> None:
        return None

    def build(self, request_number: int, worker_id: str) -> tuple[bytes, None]:
        if request_number == 3:
            raise ValueError("bad value for field k")
        return b"", None


def test_a_request_that_cannot_be_built_stops_the_run(trivial_address: str) -> None:
    options = parse(["--insecure", "--call", HEALTH_CHECK, "-z", "30s", "-c", "2", trivial_address])
    started = time.perf_counter()
    with pytest.raises(SetupError, match="could not build a request: bad value for field k"):
        run_load(options, "/grpc.health.v1.Health/Check", FailingPlan())  # type: ignore[arg-type]
    assert time.perf_counter() - started < 5


requires_native = pytest.mark.skipif(
    not native_transport_available(), reason="grpc++ transport not built (no libgrpc++-dev)"
)


@pytest.mark.parametrize("transport", ["native", "aio"])
@pytest.mark.parametrize(
    ("tag", "count", "ok"),
    [("{{.RequestNumber}}", 40, 20), ("fixed", 41, 21)],
    ids=["templated metadata (Python loop)", "fixed requests (C++ loop on native)"],
)
def test_both_transports_report_the_same_outcomes(
    transport: str, tag: str, count: int, ok: int, server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if transport == "native" and not native_transport_available():
        pytest.skip("grpc++ transport not built (no libgrpc++-dev)")
    report = loadtest_json(
        ["--insecure", "--transport", transport, "--call", "recserve.v1.Recommender.Score", "-d",
         '[{"user_id":"user-1","item_ids":["item-1"]},{"user_id":"user-1","item_ids":["item-missing"]}]',
         "-m", f'{{"x-request-tag":"{tag}"}}', "-n", str(count), "-c", "5", "--lb-strategy", "round_robin",
         server_address],
        capsys,
    )  # fmt: skip
    assert report["count"] == count
    assert report["statusCodeDistribution"] == {"OK": ok, "NotFound": count - ok}
    (error,) = report["errorDistribution"]
    assert error.startswith("rpc error: code = NotFound desc = ") and "item-missing" in error
    assert all(detail["latency"] > 0 for detail in report["details"])


def run_direct(argv: list[str]) -> tuple[LoadRunner, RunResult]:
    """A LoadRunner run on a fresh event loop, kept for inspection."""
    options = parse(argv)
    method = resolve_method(options)
    plan = build_plan(options.data, options.metadata, method.codec, method.template_constants())
    runner = LoadRunner(options, method.path, plan)
    return runner, run_in_new_loop(runner.run())


@requires_native
def test_fixed_requests_run_in_the_native_closed_loop(trivial_address: str) -> None:
    runner, result = run_direct(
        ["--insecure", "--call", HEALTH_CHECK, "-n", "200", "-c", "8", trivial_address]
    )
    assert runner.runs_in_native_loop
    assert len(result.results) == 200 and {status for _, _, status, _ in result.results} == {"OK"}
    ends = [end for end, *_ in result.results]
    assert ends == sorted(ends)  # completion order
    assert all(0 < latency < result.total_ns for _, latency, _, _ in result.results)


@requires_native
def test_native_loop_keeps_the_rps_schedule(trivial_address: str) -> None:
    runner, result = run_direct(
        ["--insecure", "--call", HEALTH_CHECK, "-n", "100", "-c", "8", "--rps", "200", trivial_address]
    )
    assert runner.runs_in_native_loop
    assert len(result.results) == 100 and {status for _, _, status, _ in result.results} == {"OK"}
    ends = sorted(end for end, *_ in result.results)
    assert 0.45e9 < ends[-1] - ends[0] < 0.7e9, "100 requests at 200/s: request N at N/200 s"


@pytest.mark.parametrize(
    "argv",
    [["-d", '{"service":"{{.WorkerID}}"}'], ["--transport", "aio"]],
    ids=["templated", "aio"],
)
def test_templated_or_aio_runs_call_from_python(trivial_address: str, argv: list[str]) -> None:
    runner, result = run_direct(
        ["--insecure", "--call", HEALTH_CHECK, "-n", "20", "-c", "2", *argv, trivial_address]
    )
    assert not runner.runs_in_native_loop
    assert len(result.results) == 20


@requires_native
@pytest.mark.parametrize(("mode", "cut_off"), [("close", 4), ("ignore", 0)])
def test_native_closed_loop_duration_stop_modes(trivial_address: str, mode: str, cut_off: int) -> None:
    runner, result = run_direct(
        [
            "--insecure",
            "--call",
            HEALTH_CHECK,
            "-z",
            "300ms",
            "-c",
            "4",
            "--duration-stop",
            mode,
            trivial_address,
        ]
    )
    assert runner.runs_in_native_loop and result.end_reason == "timeout"
    cancelled = [r for r in result.results if r[2] == "Canceled"]
    assert len(cancelled) == cut_off
    assert all(error == CLOSING_ERROR for *_, error in cancelled)
    assert len(result.results) > 20


def test_deadline_errors_read_as_go_prints_them(
    server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = loadtest_json(
        ["--insecure", "--call", RECOMMEND, "-d", '{"user_id":"user-1"}', "-t", "1ns", "-n", "5", "-c", "1",
         server_address],
        capsys,
    )  # fmt: skip
    assert report["statusCodeDistribution"] == {"DeadlineExceeded": 5}
    # The client's own deadline reads as Go's; the server's admission may answer first, in its own words.
    go_client = "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
    admission = "rpc error: code = DeadlineExceeded desc = the deadline ("
    assert all(error == go_client or error.startswith(admission) for error in report["errorDistribution"])


def test_a_client_certificate_needs_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = loadtest(["--cert", "client.pem", "--call", RECOMMEND, "127.0.0.1:9"], capsys)
    assert (code, out) == (1, "")
    assert "--cert and --key go together" in err
