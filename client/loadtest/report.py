"""ghz's report: the statistics (computed as ghz computes them) and its summary, csv, json and pretty outputs.

Numbers are reproduced bit for bit where ghz's arithmetic is observable: latencies go through Go's
Duration.Seconds() float conversion and back by truncation, the average is a sequential float sum, and
percentiles, histogram and bar lengths use ghz's integer formulas. JSON is written as Go's encoding/json
writes it (struct fields in declaration order, map keys sorted, floats in Go's shortest form, HTML characters
escaped, durations as integer nanoseconds, times in local RFC 3339).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from recserve.client.loadtest.options import NS_PER_S, LoadtestOptions, machine_cpus
from recserve.client.loadtest.runner import RunResult

MAX_DETAILS = 1_000_000  # ghz keeps at most this many per-call details, and computes latency stats from them
PERCENTILES = (10, 25, 50, 75, 90, 95, 99)
HISTOGRAM_BUCKETS = 10
BAR = "∎"
BAR_WIDTH = 40

Detail = tuple[int, int, str, str]
"""(Unix time ns at the end of the call, latency ns, error text or "", status name)."""


@dataclass(frozen=True)
class Bucket:
    """One histogram line: latencies up to `mark_s` (and above the previous mark)."""

    mark_s: float
    count: int
    frequency: float


@dataclass(frozen=True)
class Report:
    """Everything ghz reports about a run. Durations in integer nanoseconds."""

    name: str
    end_reason: str
    date_ns: int
    options: dict[str, Any]
    count: int
    total_ns: int
    average_ns: int
    fastest_ns: int
    slowest_ns: int
    rps: float
    error_distribution: dict[str, int]
    status_distribution: dict[str, int]
    latency_distribution: list[tuple[int, int]] | None
    histogram: list[Bucket] | None
    details: list[Detail] | None
    tags: dict[str, str] | None


def go_seconds(ns: int) -> float:
    """Go's Duration.Seconds()."""
    seconds, remainder = divmod(ns, NS_PER_S)
    return float(seconds) + float(remainder) / 1e9


def go_duration(seconds: float) -> int:
    """Go's time.Duration(seconds * float64(time.Second)): truncation toward zero."""
    return int(seconds * 1e9)


def percentiles(sorted_seconds: list[float]) -> list[tuple[int, int]]:
    """Nearest rank, as ghz ranks: i = int(p/100*n), one less when that is exact, never below 0."""
    count = float(len(sorted_seconds))
    distribution = []
    for percentage in PERCENTILES:
        position = (percentage / 100.0) * count
        index = int(position)
        if position == float(index):
            index -= 1
        value = sorted_seconds[max(index, 0)]
        distribution.append((percentage, go_duration(value)) if value > 0 else (0, 0))
    return distribution


def histogram(sorted_seconds: list[float], slowest: float, fastest: float) -> list[Bucket]:
    """The 11 ghz marks: fastest + i*(slowest-fastest)/10, then slowest; a latency counts at the first >=."""
    step = (slowest - fastest) / HISTOGRAM_BUCKETS
    marks = [fastest + step * i for i in range(HISTOGRAM_BUCKETS)] + [slowest]
    counts = [0] * len(marks)
    bucket = 0
    for latency in sorted_seconds:
        while latency > marks[bucket] and bucket < len(marks) - 1:
            bucket += 1
        counts[bucket] += 1
    return [Bucket(mark, n, n / len(sorted_seconds)) for mark, n in zip(marks, counts, strict=True)]


def build_report(run: RunResult, options: LoadtestOptions, date_ns: int) -> Report:
    """The report of a finished run: `skip_first` results dropped, then ghz's statistics."""
    kept = run.results[options.skip_first :]
    latency_sum_s = 0.0
    for _, latency_ns, _, _ in kept:  # a plain sequential sum, as Go's (Python's sum() may compensate)
        latency_sum_s += go_seconds(latency_ns)
    details = [(end + run.clock_offset_ns, lat, err, st) for end, lat, st, err in kept[:MAX_DETAILS]]
    stats: dict[str, Any] = {"average_ns": 0, "fastest_ns": 0, "slowest_ns": 0, "rps": 0.0}
    stats |= {"latency_distribution": None, "histogram": None}
    if details:
        stats["average_ns"] = go_duration(latency_sum_s / len(kept))
        total_s = go_seconds(run.total_ns)
        stats["rps"] = len(kept) / total_s if total_s > 0 else 0.0
        stats |= _latency_stats(details, options.count_errors)
    return Report(
        name=options.name,
        end_reason=run.end_reason,
        date_ns=date_ns,
        options=options_json(options),
        count=len(kept),
        total_ns=run.total_ns,
        error_distribution=dict(Counter(error for _, _, _, error in kept if error)),
        status_distribution=dict(Counter(status for _, _, status, _ in kept)),
        details=details or None,
        tags=options.tags,
        **stats,
    )


def _latency_stats(details: list[Detail], count_errors: bool) -> dict[str, Any]:
    chosen = sorted(go_seconds(lat) for _, lat, error, _ in details if count_errors or not error)
    if not chosen:
        return {}
    fastest, slowest = chosen[0], chosen[-1]
    return {
        "fastest_ns": go_duration(fastest),
        "slowest_ns": go_duration(slowest),
        "histogram": histogram(chosen, slowest, fastest),
        "latency_distribution": percentiles(chosen),
    }


def options_json(options: LoadtestOptions) -> dict[str, Any]:
    """The `options` object of ghz's JSON report: ghz's field order, zero values left out as ghz does."""
    fields: list[tuple[str, Any, bool]] = [  # (key, value, always present)
        ("call", options.call, False),
        ("host", options.host, False),
        ("proto", options.proto, False),
        ("protoset", options.protoset, False),
        ("import-paths", list(options.proto_search_paths()) if options.proto else [], False),
        ("cacert", options.cacert, False),
        ("cert", options.cert, False),
        ("key", options.key, False),
        ("cname", options.cname, False),
        ("insecure", options.insecure, True),
        ("rps", options.rps, False),
        ("concurrency", options.concurrency, False),
        ("total", options.effective_total, False),
        ("connections", options.connections, False),
        ("duration", options.duration_ns, False),
        ("timeout", options.timeout_ns, False),
        ("dial-timeout", options.connect_timeout_ns, False),
        ("data", options.data, False),
        ("binary", False, True),
        ("metadata", options.metadata, False),
        ("CPUs", options.cpus or machine_cpus(), True),
        ("name", options.name, False),
        ("skipFirst", options.skip_first, False),
        ("count-errors", options.count_errors, False),
    ]
    return _Struct(
        (key, value) for key, value, always in fields if always or value not in ("", 0, False, None, [], {})
    )


# --- summary and csv -------------------------------------------------------------------------------------


def format_nano_unit(ns: int) -> str:
    """Like ghz's formatNanoUnit: `N ns` under 10 µs, else `%4.2f ms`, from one second `%4.2f s`."""
    if ns < 10000:
        return f"{ns} ns"
    milliseconds = ns / 1000000.0
    if milliseconds < 1000:
        return f"{milliseconds:4.2f} ms"
    return f"{milliseconds / 1000.0:4.2f} s"


def format_summary(report: Report) -> str:
    """The `-O summary` text, line for line ghz's default template."""
    name = f"  Name:\t\t{report.name}\n" if report.name else ""
    head = (
        f"\nSummary:\n{name}  Count:\t{report.count}\n"
        f"  Total:\t{format_nano_unit(report.total_ns)}\n"
        f"  Slowest:\t{format_nano_unit(report.slowest_ns)}\n"
        f"  Fastest:\t{format_nano_unit(report.fastest_ns)}\n"
        f"  Average:\t{format_nano_unit(report.average_ns)}\n"
        f"  Requests/sec:\t{report.rps:4.2f}\n\nResponse time histogram:\n"
    )
    latencies = "".join(
        f"\n  {percentage} % in {format_nano_unit(ns)} "
        for percentage, ns in report.latency_distribution or []
    )
    statuses = _by_count(report.status_distribution)
    errors = _by_count(report.error_distribution)
    status_block = "Status code distribution:\n" + _tabulate(
        [(f"  [{k}]", f"{n} responses") for k, n in statuses]
    )
    error_block = "Error distribution:\n" + _tabulate([(f"  [{n}]", k) for k, n in errors])
    return (
        head
        + _histogram_lines(report.histogram or [])
        + "\nLatency distribution:"
        + latencies
        + "\n\n"
        + (status_block if statuses else "")
        + "\n"
        + (error_block if errors else "")
        + "\n"
    )


def _by_count(distribution: dict[str, int]) -> list[tuple[str, int]]:
    """Largest first (ghz prints Go map order, which is random)."""
    return sorted(distribution.items(), key=lambda item: (-item[1], item[0]))


def _tabulate(rows: list[tuple[str, str]], padding: int = 3) -> str:
    """Go's tabwriter (padding 3, spaces) over tab-terminated cells: every cell padded, trailing ones too."""
    if not rows:
        return ""
    widths = [max(len(row[column]) for row in rows) + padding for column in range(2)]
    return "".join(
        "".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + "\n" for row in rows
    )


def _histogram_lines(buckets: list[Bucket]) -> str:
    if not buckets:
        return ""
    max_count = max(bucket.count for bucket in buckets)
    mark_width = len(f"{max(max(b.mark_s for b in buckets), 0.0) * 1000:.3f}")
    count_width = len(str(max_count))
    lines = []
    for bucket in buckets:
        mark, count = f"{bucket.mark_s * 1000:.3f}", str(bucket.count)
        bar = (bucket.count * BAR_WIDTH + max_count // 2) // max_count if max_count > 0 else 0
        lines.append(f"  {mark.ljust(mark_width)} [{count}]{' ' * (count_width - len(count))} |{BAR * bar}\n")
    return "".join(lines)


def format_csv(report: Report) -> str:
    """The `-O csv` text: ghz's template, one `duration (ms),status,error` line per call (unquoted)."""
    rows = "".join(
        f"\n{go_seconds(lat) * 1000:4.2f},{status},{error}" for _, lat, error, status in report.details or []
    )
    return f"\nduration (ms),status,error{rows}\n"


# --- json ------------------------------------------------------------------------------------------------


class _Struct(dict):
    """A Go struct in JSON: keys in declaration order (plain dicts are Go maps: keys sorted)."""


def report_json(report: Report) -> _Struct:
    """The report as ghz's JSON object, keys in ghz's order."""
    fields: list[tuple[str, Any]] = [("date", rfc3339(report.date_ns, nanoseconds=False))]
    if report.name:
        fields.append(("name", report.name))
    fields += [
        ("endReason", report.end_reason),
        ("options", report.options),
        ("count", report.count),
        ("total", report.total_ns),
        ("average", report.average_ns),
        ("fastest", report.fastest_ns),
        ("slowest", report.slowest_ns),
        ("rps", report.rps),
        ("errorDistribution", report.error_distribution),
        ("statusCodeDistribution", report.status_distribution),
        ("latencyDistribution", _latency_json(report.latency_distribution)),
        ("histogram", _histogram_json(report.histogram)),
        ("details", _details_json(report.details)),
    ]
    if report.tags:
        fields.append(("tags", report.tags))
    return _Struct(fields)


def _latency_json(distribution: list[tuple[int, int]] | None) -> list[_Struct] | None:
    if distribution is None:
        return None
    return [_Struct(percentage=p, latency=ns) for p, ns in distribution]


def _histogram_json(buckets: list[Bucket] | None) -> list[_Struct] | None:
    if buckets is None:
        return None
    return [_Struct(mark=b.mark_s, count=b.count, frequency=b.frequency) for b in buckets]


def _details_json(details: list[Detail] | None) -> list[_Struct] | None:
    if details is None:
        return None
    return [
        _Struct(timestamp=rfc3339(end_ns, nanoseconds=True), latency=lat, error=error, status=status)
        for end_ns, lat, error, status in details
    ]


def go_json(value: Any, indent: str = "") -> str:
    """JSON as Go's json.Marshal writes it (and json.Indent with `indent`, for `-O pretty`)."""
    return _encode(value, indent, 0)


def _encode(value: Any, indent: str, level: int) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, dict):
        items = list(value.items()) if isinstance(value, _Struct) else sorted(value.items())
        colon = ": " if indent else ":"
        parts = [_go_string(str(k)) + colon + _encode(v, indent, level + 1) for k, v in items]
        return _wrap("{", parts, "}", indent, level)
    if isinstance(value, list | tuple):
        return _wrap("[", [_encode(v, indent, level + 1) for v in value], "]", indent, level)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _wrap(opening: str, parts: list[str], closing: str, indent: str, level: int) -> str:
    if not parts:
        return opening + closing
    if not indent:
        return opening + ",".join(parts) + closing
    inner = "\n" + indent * (level + 1)
    return opening + inner + ("," + inner).join(parts) + "\n" + indent * level + closing


def _go_string(text: str) -> str:
    encoded = json.dumps(text, ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028")):
        encoded = encoded.replace(raw, escaped)
    return encoded.replace("\u2029", "\\u2029")


def go_float(value: float) -> str:
    """A float64 as encoding/json writes it: shortest digits, exponent only below 1e-6 or from 1e21."""
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = repr(value)
        mantissa, exponent = text.split("e")
        sign, digits = exponent[0], exponent[1:].lstrip("0") or "0"
        return f"{mantissa}e{sign}{digits if sign == '-' else digits.zfill(2)}"
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def rfc3339(ns: int, nanoseconds: bool) -> str:
    """Local time as Go's RFC3339 (whole seconds) or RFC3339Nano (trailing zeros of the fraction dropped)."""
    seconds, remainder = divmod(ns, NS_PER_S)
    stamp, offset = _second_stamp(seconds)
    fraction = f".{remainder:09d}".rstrip("0") if nanoseconds and remainder else ""
    return stamp + fraction + offset


@functools.lru_cache(maxsize=4096)
def _second_stamp(seconds: int) -> tuple[str, str]:
    local = datetime.fromtimestamp(seconds).astimezone()
    offset_minutes = int(local.utcoffset().total_seconds()) // 60  # type: ignore[union-attr]
    if offset_minutes == 0:
        return local.strftime("%Y-%m-%dT%H:%M:%S"), "Z"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return local.strftime("%Y-%m-%dT%H:%M:%S"), f"{sign}{hours:02d}:{minutes:02d}"


def render(report: Report, output_format: str) -> str:
    """The report in one of ghz's formats: summary, csv, json (one line) or pretty (indented JSON)."""
    if output_format == "csv":
        return format_csv(report)
    if output_format == "json":
        return go_json(report_json(report))
    if output_format == "pretty":
        return go_json(report_json(report), indent="  ")
    return format_summary(report)
