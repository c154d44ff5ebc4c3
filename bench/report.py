"""Render docs/benchmarks.md and its plot from the JSON results the benchmarks wrote to bench/results/.

.venv/bin/python bench/report.py        (after `make bench`, which runs every benchmark first)
.venv/bin/python bench/report.py --only live_state   (after bench/live_state.py: that section alone, in place)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from ceiling_share_report import ceiling_share_section  # noqa: E402
from common import REPO_ROOT, RESULTS  # noqa: E402
from common import load_result as load  # noqa: E402
from exact_search_report import exact_search_section  # noqa: E402
from kserve_path_report import kserve_path_section  # noqa: E402
from light_load_report import light_load_section  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from model_swap_report import model_swap_section  # noqa: E402
from peers_report import peers_section  # noqa: E402
from scale_report import scale_section  # noqa: E402
from workers_report import workers_section  # noqa: E402

DOCS = REPO_ROOT / "docs"
PLOT = DOCS / "benchmarks.png"
PERF_ANALYZER_PLOT = DOCS / "benchmarks-perf-analyzer.png"
BENCHMARKS = DOCS / "benchmarks.md"
TARGET_CONCURRENCY = 64
DEFAULT_CONFIG = "default"  # the server_load configuration the targets compare against


def cell(rows: list[dict], config: str, concurrency: int) -> dict | None:
    """The row for one configuration and concurrency."""
    return next((r for r in rows if r["config"] == config and r["concurrency"] == concurrency), None)


def plot(load_results: dict, ceiling: dict | None) -> None:
    """Throughput and p99 against concurrency, one line per configuration."""
    rows = load_results["rows"]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for config in configs:
        points = sorted((r["concurrency"], r["rps"], r["p99_ms"]) for r in rows if r["config"] == config)
        xs = [p[0] for p in points]
        left.plot(xs, [p[1] for p in points], marker="o", label=config)
        right.plot(xs, [p[2] for p in points], marker="o", label=config)
    if ceiling:
        best = max(r["rows_per_s"] for r in ceiling["rows"])
        left.axhline(best, color="gray", linestyle="--", label="in-process pipeline ceiling")
    save_throughput_and_p99(figure, left, right, "Recommend throughput", PLOT, legend_size=7)


def save_throughput_and_p99(
    figure: Figure, left: Axes, right: Axes, throughput_title: str, path: Path, legend_size: int
) -> None:
    """Label both panels (log2 concurrency; p99 on a log scale) and write the PNG."""
    for axis, title, unit in ((left, throughput_title, "requests/s"), (right, "p99 latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency (closed loop)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=legend_size)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def ceiling_table(ceiling: dict) -> list[str]:
    """Markdown rows of the pipeline ceiling."""
    lines = [
        "| batch | rows/s | ms/batch | user tower ms | ANN ms | ranker ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in ceiling["rows"]:
        lines.append(
            f"| {r['batch_size']} | {r['rows_per_s']:.0f} | {r['ms_per_batch']:.2f} | {r['user_tower_ms']:.2f} "
            f"| {r['ann_ms']:.2f} | {r['ranker_ms']:.2f} |"
        )
    return lines


def load_table(rows: list[dict]) -> list[str]:
    """Markdown rows of the server under load."""
    lines = [
        "| config | concurrency | req/s | p50 ms | p90 ms | p99 ms | mean batch | server CPU µs/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["config"])):
        lines.append(
            f"| {r['config']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['mean_batch']:.1f} | {r['cpu_us_per_request']:.0f} |"
        )
    return lines


def cpu_table(rows: list[dict], concurrency: int) -> list[str]:
    """Where each request's server CPU goes, by thread group and pipeline stage."""
    lines = [
        "| config | event loop (gRPC handlers, batcher) | batch threads | TensorFlow pool | gRPC core "
        "| user tower (wall) | ANN (wall) | ranker (wall) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["concurrency"] != concurrency:
            continue
        lines.append(
            f"| {r['config']} | {r.get('cpu_us_event_loop', 0):.0f} | {r.get('cpu_us_batch_threads', 0):.0f} "
            f"| {r.get('cpu_us_tensorflow', 0):.0f} | {r.get('cpu_us_grpc_core', 0):.0f} "
            f"| {r.get('stage_us_user_tower', 0):.0f} | {r.get('stage_us_ann', 0):.0f} "
            f"| {r.get('stage_us_ranker', 0):.0f} |"
        )
    return lines


AIO_CONFIG = "default, grpc.aio front end"


def targets(rows: list[dict], ceiling: dict | None, default_config: str) -> list[str]:
    """The issue's targets, as ratios from this run."""
    lines = []
    off, on = cell(rows, "batching off", TARGET_CONCURRENCY), cell(rows, default_config, TARGET_CONCURRENCY)
    if off and on:
        lines.append(
            f"- Concurrency {TARGET_CONCURRENCY}: default batching ({default_config}) serves "
            f"**{on['rps'] / off['rps']:.2f}×** the throughput of batching off ({on['rps']:.0f} vs "
            f"{off['rps']:.0f} req/s); p99 {on['p99_ms']:.1f} ms vs {off['p99_ms']:.1f} ms "
            f"(**{on['p99_ms'] / off['p99_ms']:.2f}×**)."
        )
    off1, on1 = cell(rows, "batching off", 1), cell(rows, default_config, 1)
    if off1 and on1:
        lines.append(
            f"- Concurrency 1: p50 {on1['p50_ms']:.2f} ms with default batching vs {off1['p50_ms']:.2f} ms "
            f"with batching off (**{on1['p50_ms'] / off1['p50_ms']:.2f}×**)."
        )
    busy = cell(rows, default_config, 128)
    if busy and (ceiling or "ceiling_rows_per_s" in busy):
        lines.append(ceiling_target_line(busy, ceiling))
        best = target_ceiling(busy, ceiling)
        aio = cell(rows, AIO_CONFIG, 128)
        if aio:
            lines.append(
                f"  With grpc.aio as the front end instead of grpc++ ({AIO_CONFIG}) the same server reaches "
                f"{aio['rps']:.0f} req/s ({aio['rps'] / best:.0%}), at {aio['cpu_us_per_request']:.0f} µs of server "
                f"CPU per request against {busy['cpu_us_per_request']:.0f}. Where the rest goes: "
                "[batching.md](batching.md#where-the-throughput-limit-is)."
            )
    return lines


def target_ceiling(busy: dict, ceiling: dict | None) -> float:
    """The ceiling the c=128 target compares with: the one measured between the server runs when there is
    one, else the separate sweep's best batch size."""
    if "ceiling_rows_per_s" in busy:
        return busy["ceiling_rows_per_s"]
    return max(r["rows_per_s"] for r in ceiling["rows"])  # type: ignore[index]


def ceiling_target_line(busy: dict, ceiling: dict | None) -> str:
    """The c=128 target: against the ceiling measured between the server runs when there is one."""
    ann_threads = ceiling.get("ann_threads", 2) if ceiling else 2
    settings = f"with the server's settings: one batch thread and {ann_threads} ANN threads"
    best = target_ceiling(busy, ceiling)
    if "ceiling_rows_per_s" in busy:
        runs = " / ".join(f"{c['rows_per_s']:.0f} at batch {c['batch_size']}" for c in busy["ceiling_runs"])
        source = (
            f"the in-process pipeline ceiling measured right after each round of server runs ({best:.0f} rows/s, "
            f"median of {runs}; {settings})"
        )
        if ceiling:
            separate = max(r["rows_per_s"] for r in ceiling["rows"])
            source += f"; the separate ceiling sweep below, run earlier, gave {separate:.0f}"
    else:
        source = f"the in-process pipeline ceiling ({best:.0f} rows/s at its best batch size, {settings})"
    share = busy["rps"] / best
    verdict = "met." if share >= 0.6 else "**not reached**."
    line = (
        f"- Concurrency 128: the server reaches {busy['rps']:.0f} req/s, **{share:.0%}** of {source}. "
        f"The target is 60%: {verdict}"
    )
    if "ceiling_rows_per_s_at_server_batch" in busy:
        at_64 = busy["ceiling_rows_per_s_at_server_batch"]
        line += (
            f" For comparison, the pipeline at batch 64, the largest batch the server forms by default, does "
            f"{at_64:.0f} rows/s: the server reaches {busy['rps'] / at_64:.0%} of that."
        )
    return line


def annoy_sweep_section(sweep: dict) -> list[str]:
    """The Annoy sweep: recall@100 against cost per query, the configured setting marked."""
    configured = sweep.get("configured", {})
    choice = sweep.get("choice")
    lines = [
        "## Annoy settings",
        "",
        f"`.venv/bin/python bench/annoy_sweep.py` — {sweep['machine']}; {sweep['queries']} real user-tower "
        f"queries against the demo model's {sweep['items']:,} item embeddings; recall@100 against exact cosine "
        "search; ms per query one query at a time (median of 3 passes).",
        "",
        "| n_trees | search_k | recall@100 | ms/query | build s |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sweep["rows"]:
        marks = [
            *(["configured"] if configured == {"n_trees": r["n_trees"], "search_k": r["search_k"]} else []),
            *([f"cheapest at ≥ {sweep['recall_target']:g}"] if r == choice else []),
        ]
        mark = f" **({', '.join(marks)})**" if marks else ""
        lines.append(
            f"| {r['n_trees']} | {r['search_k']} | {r['recall_at_100']:.3f}{mark} | {r['ms_per_query']:.3f} "
            f"| {r['build_s']:.1f} |"
        )
    return [*lines, ""]


def plot_perf_analyzer(results: dict) -> None:
    """Throughput and p99 against concurrency: perf_analyzer on ModelInfer vs recserve loadtest on Recommend."""
    rows = results["rows"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for tool in dict.fromkeys(r["tool"] for r in rows):
        points = sorted((r["concurrency"], r["rps"], r["p99_ms"]) for r in rows if r["tool"] == tool)
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=tool)
        right.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=tool)
    save_throughput_and_p99(figure, left, right, "throughput", PERF_ANALYZER_PLOT, legend_size=8)


def perf_analyzer_section(results: dict) -> list[str]:
    """The KServe v2 protocol under perf_analyzer, beside our own API under recserve loadtest."""
    plot_perf_analyzer(results)
    lines = [
        "## The KServe v2 protocol under Triton's perf_analyzer",
        "",
        f"`.venv/bin/python bench/perf_analyzer.py` — {results['machine']}; one server (the committed config), "
        f"closed loop from a separate process on the same cores; median of {results['runs']} interleaved runs "
        f"of {results['seconds']:g} s. perf_analyzer 2.51 sends ModelInfer to `recommender` (`user_id` and "
        f"`k` = {results['k']} from an `--input-data` JSON of known users); `recserve loadtest` sends the same "
        "requests as Recommend. Both go through the same batcher; mean batch is from the server's statistics.",
        "",
        f"![perf_analyzer vs recserve loadtest]({PERF_ANALYZER_PLOT.name})",
        "",
        "| tool | concurrency | req/s | p50 ms | p90 ms | p99 ms | mean batch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(results["rows"], key=lambda r: (r["concurrency"], r["tool"])):
        lines.append(
            f"| {r['tool']} | {r['concurrency']:.0f} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['mean_batch']:.1f} |"
        )
    return [*lines, ""]


def tracing_section(results: dict) -> list[str]:
    """Tracing off vs on at the default ratio vs on at 100%, with the overhead target."""
    rows = results["rows"]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    off, control, default, full = configs
    lines = [
        "## What tracing costs",
        "",
        f"`.venv/bin/python bench/tracing_overhead.py` — {results['machine']}; four servers side by side, "
        f"runs interleaved, median of {results['runs']} runs of {results['seconds']:g} s; spans go over "
        "OTLP/gRPC to a counting collector in another process "
        f"({results['spans_exported']:,} spans received in the run). The control is a second server "
        "identical to the first: its distance from 1.00× is this machine's noise floor.",
        "",
        "| config | concurrency | req/s | vs off | p50 ms | p99 ms | server CPU µs/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for concurrency in sorted({r["concurrency"] for r in rows}):
        base = cell(rows, off, concurrency)
        for config in configs:
            r = cell(rows, config, concurrency)
            lines.append(
                f"| {config} | {concurrency} | {r['rps']:.0f} | {r['rps'] / base['rps']:.2f}× | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_us_per_request']:.0f} |"
            )
    top = max(r["concurrency"] for r in rows)
    baseline = cell(rows, off, top)["rps"]
    ratio = cell(rows, default, top)["rps"] / baseline
    noise = cell(rows, control, top)["rps"] / baseline
    full_ratio = cell(rows, full, top)["rps"] / baseline
    verdict = "met" if ratio >= 0.95 else "missed"
    lines += [
        "",
        f"Target: at the default ratio, throughput within 5% of tracing off. At concurrency {top}: "
        f"{ratio:.2f}× (control {noise:.2f}×) — **{verdict}**. Tracing every request costs "
        f"{1 - full_ratio:.0%} of throughput there (a server span and a queue span per request, a batch "
        "span and three stage spans per batch, through the Python SDK and its exporter).",
        "",
    ]
    return lines


def live_state_section(results: dict) -> list[str]:
    """History, ingestion, freshness, rebuild and exact-delta figures, with the issue's targets."""
    phases = results["phases"]
    minutes = sum(phase["wall_s"] for phase in phases.values()) / 60
    others = ", ".join(f"{name} {phase['other_processes_cpu_share']:.0%}" for name, phase in phases.items())
    lines = [
        LIVE_STATE_HEADING,
        "",
        f"`{results['command']}` (`make bench-live`, {minutes:.0f} min) — {results['machine']}; the server "
        f"code at {results['code']}. Servers run as `recserve serve` child processes on loopback, load comes from "
        "separate `recserve loadtest` processes on the same cores; throughput cells are medians of "
        f"{results['runs']} interleaved rounds of {results['seconds']:g} s (every configuration once per round, "
        "the order reversed every other round). Share of the machine's CPU that other processes used meanwhile, "
        f"per phase: {others}.",
        "",
        *live_state_target_table(results),
        "",
        *live_history(results["history"]),
        *live_ingestion(results["ingestion"]),
        *live_freshness(results["freshness"]),
        *live_rebuild(results["rebuild"]),
        *live_delta(results["delta"]),
    ]
    return lines


def live_verdict(met: bool) -> str:
    """The targets table's word for a target."""
    return "met" if met else "**missed**"


def live_state_targets(results: dict) -> list[dict]:
    """The issue's live-state targets against a run's figures: one row each (target, figure, goal, verdict)."""
    return [
        *history_targets(results["history"]),
        *ingestion_targets(results["ingestion"]),
        *freshness_targets(results["freshness"]),
        rebuild_target(results["rebuild"]),
        delta_target(results["delta"]),
    ]


def live_state_target_table(results: dict) -> list[str]:
    """The targets as a markdown table (bench/live_state.py prints it too)."""
    return [
        "| target | this run | goal | verdict |",
        "| --- | --- | --- | --- |",
        *(
            f"| {t['target']} | {t['figure']} | {t['goal']} | {t['verdict']} |"
            for t in live_state_targets(results)
        ),
    ]


def history_targets(history: dict) -> list[dict]:
    """Recommend throughput with history over without: >= 90% in-process, >= 75% with Redis."""
    rows = []
    for backend, goal in (("memory", 0.90), ("redis", 0.75)):
        on, off = (
            next(r for r in history["rows"] if r["backend"] == backend and r["history"] == mode)
            for mode in ("on", "off")
        )
        ratio = on["rps"] / off["rps"]
        rows.append(
            {
                "target": f"History cost, {backend} backend: Recommend c={history['concurrency']}, history on / off",
                "figure": f"{ratio:.2f}× ({on['rps']:,.0f} vs {off['rps']:,.0f} req/s); server CPU "
                f"{on['cpu_us_per_request']:.0f} vs {off['cpu_us_per_request']:.0f} µs/request, history stage "
                f"{on.get('stage_us_history', 0):.0f} µs",
                "goal": f"≥ {goal:.2f}×",
                "verdict": live_verdict(ratio >= goal),
            }
        )
    return rows


def ingestion_targets(ingestion: dict) -> list[dict]:
    """Events/s with fsync everysec (>= 20,000) and with fsync always (what it costs)."""
    rows = {r["config"]: r for r in ingestion["rows"]}
    alone = next(r for name, r in rows.items() if name.endswith("Recommend alone"))
    found = []
    for policy, goal in (("fsync everysec", 20_000), ("fsync always", None)):
        row = rows[f"{policy}, with ingestion"]
        found.append(
            {
                "target": f"Ingestion, memory backend, {policy}: RecordEvents c={ingestion['events_concurrency']} "
                f"({ingestion['events_per_call']} events/call) beside Recommend c={ingestion['recommend_concurrency']}",
                "figure": f"{row['events_per_s']:,.0f} events/s; Recommend {row['recommend_rps']:,.0f} req/s beside it "
                f"(alone {alone['recommend_rps']:,.0f})",
                "goal": f"≥ {goal:,} events/s" if goal else "(its cost)",
                "verdict": live_verdict(row["events_per_s"] >= goal) if goal else "—",
            }
        )
    return found


def freshness_targets(freshness: dict) -> list[dict]:
    """Same server: the very next read returns the item; across servers: p99 within 1 s."""
    found = []
    for row in freshness["rows"]:
        same = row["path"].startswith("same server")
        if same:
            met = row["first_read_hits"] == row["trials"]
        else:
            met = row["found"] == row["trials"] and row["p99_ms"] <= 1000
        found.append(
            {
                "target": f"Freshness, {row['path']}: UpsertItems ack → SimilarItems returns the item",
                "figure": f"first read returned it in {row['first_read_hits']} of {row['trials']}; "
                f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms",
                "goal": "the very next request" if same else "p99 ≤ 1 s",
                "verdict": live_verdict(met),
            }
        )
    return found


def rebuild_target(rebuild: dict) -> dict:
    """Read p99 during a rebuild of base + 20% within 1.5x of steady state (median of the rounds)."""
    return {
        "target": f"Rebuild of 20,000 + {rebuild['delta_items']:,} items: Recommend c={rebuild['concurrency']} p99 "
        "during / steady",
        "figure": f"{rebuild['p99_ratio']:.2f}× ({rebuild['rebuild_p99_ms']:.1f} vs {rebuild['steady_p99_ms']:.1f} ms, "
        f"median of {len(rebuild['rounds'])} rounds); the rebuild takes {rebuild['rebuild_duration_s']:.1f} s",
        "goal": "≤ 1.5×",
        "verdict": live_verdict(rebuild["all_rebuilt"] and rebuild["p99_ratio"] <= 1.5),
    }


def delta_target(delta: dict) -> dict:
    """What searching the delta exactly costs (the issue sets no bound)."""
    base, *others = sorted(delta["rows"], key=lambda r: r["delta_items"])
    parts = [
        f"{r['delta_items']:,} items {r['rps'] / base['rps']:.2f}× ({r['rps']:,.0f} req/s, p99 {r['p99_ms']:.0f} ms)"
        for r in others
    ]
    return {
        "target": f"Exact delta search: Recommend c={delta['concurrency']} against no delta ({base['rps']:,.0f} "
        f"req/s, p99 {base['p99_ms']:.0f} ms)",
        "figure": "; ".join(parts),
        "goal": "(measured; no bound)",
        "verdict": "—",
    }


LIVE_STATE_HEADING = "## Live state"
STAGE_COLUMNS = "| history µs | user tower µs | ANN µs | ranker µs |"


def stage_cells(r: dict) -> str:
    """Wall time per request in each pipeline stage (GetModelStatistics)."""
    return " | ".join(f"{r.get(f'stage_us_{s}', 0):.0f}" for s in ("history", "user_tower", "ann", "ranker"))


def live_history(history: dict) -> list[str]:
    """Recommend with stored history against ignore_history, per backend."""
    preload = history["preload"]["memory"]
    lines = [
        "### History: Recommend with the stored history and with `ignore_history`",
        "",
        f"Concurrency {history['concurrency']}; the request data (Recommend, k=10, 0–5 recent items) names "
        f"{preload['users']:,} users, each given 20–50 events through RecordEvents first ({preload['events']:,} "
        "events, 100 per call; mostly VIEW and CLICK). With history a request's context is the stored items "
        "plus the request's, and the items seen are excluded; with `ignore_history` it is the request's alone. "
        "Stage columns are wall time per request; CPU is the server process's.",
        "",
        f"| backend | history | req/s | p50 ms | p99 ms | server CPU µs/req {STAGE_COLUMNS}",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in history["rows"]:
        lines.append(
            f"| {r['backend']} | {r['history']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['cpu_us_per_request']:.0f} | {stage_cells(r)} |"
        )
    return [*lines, "", history_spread(history), ""]


def history_spread(history: dict) -> str:
    """How far the on/off ratio of one server moves from round to round."""
    parts = []
    for backend in dict.fromkeys(r["backend"] for r in history["rows"]):
        on, off = (
            next(r for r in history["rows"] if r["backend"] == backend and r["history"] == mode)["rounds"]
            for mode in ("on", "off")
        )
        ratios = sorted(a["rps"] / b["rps"] for a, b in zip(on, off, strict=True))
        parts.append(f"{backend} {ratios[0]:.2f}–{ratios[-1]:.2f}")
    return (
        "The ratio within each round (history on over off, same server) ranges "
        + ", ".join(parts)
        + "; the table's ratio is of the medians."
    )


def live_ingestion(ingestion: dict) -> list[str]:
    """RecordEvents beside Recommend, per fsync policy."""
    lines = [
        "### Ingestion: RecordEvents beside Recommend",
        "",
        f"Memory backend. RecordEvents at c={ingestion['events_concurrency']} ({ingestion['events_per_call']} "
        "events per call over 20 users, a file of 500 different calls covering all 10,000 users) and Recommend "
        f"at c={ingestion['recommend_concurrency']} in two load processes at once, for the same duration; "
        "RecordEvents as fast as it goes, or paced to the target rate (`-r`) to show what serving that costs. "
        "Every cell runs on a fresh server, so that all start from the same empty state.",
        "",
        "| configuration | events/s | RecordEvents p50 ms | RecordEvents p99 ms | Recommend req/s | Recommend p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in ingestion["rows"]:
        writes = "— | — | —"  # the Recommend-alone reference has no writes
        if "events_per_s" in r:
            writes = f"{r['events_per_s']:,.0f} | {r['record_p50_ms']:.1f} | {r['record_p99_ms']:.1f}"
        lines.append(f"| {r['config']} | {writes} | {r['recommend_rps']:.0f} | {r['recommend_p99_ms']:.1f} |")
    return [*lines, "", *live_sustained(ingestion["sustained"])]


def live_sustained(cells: list[dict]) -> list[str]:
    """Back-to-back ingestion cells on one server: the rates as the stored state grows."""
    lines = [
        "Sustained: one fsync-everysec server taking RecordEvents as fast as it goes, cell after cell, with "
        "Recommend beside it (the state is kept in memory and logged; a log segment past 64 MB is folded into a "
        "snapshot).",
        "",
        "| cell | events stored before | events/s | RecordEvents p99 ms | Recommend req/s | Recommend p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for number, r in enumerate(cells, start=1):
        lines.append(
            f"| {number} | {r['events_stored_before']:,.0f} | {r['events_per_s']:,.0f} | {r['record_p99_ms']:.1f} "
            f"| {r['recommend_rps']:.0f} | {r['recommend_p99_ms']:.1f} |"
        )
    return [*lines, ""]


def live_freshness(freshness: dict) -> list[str]:
    """From an upsert's acknowledgement to SimilarItems returning the item."""
    lines = [
        "### Freshness: from UpsertItems' acknowledgement to SimilarItems returning the item",
        "",
        "Each trial upserts an anchor item with a three-tag combination used nowhere else, then a fresh item "
        "with the same tags: same tags and no training id give the same embedding, so the fresh item is the "
        "anchor's nearest neighbour. Timed from the fresh item's acknowledgement until SimilarItems(anchor, "
        "k=1) returns it, reading as fast as one client can; across servers the write goes to A and B is read.",
        "",
        "| path | returned | first read had it | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in freshness["rows"]:
        lines.append(
            f"| {r['path']} | {r['found']} of {r['trials']} | {r['first_read_hits']} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['max_ms']:.2f} |"
        )
    return [*lines, ""]


def live_rebuild(rebuild: dict) -> list[str]:
    """Read latency before, during and after a background index rebuild."""
    lines = [
        "### Rebuild: reads while the index is rebuilt",
        "",
        f"A fresh server per round whose config sets `rebuild_delta_items: {rebuild['delta_items']}`: "
        f"{rebuild['delta_items'] - 1:,} items upserted, Recommend at c={rebuild['concurrency']}, then the "
        f"{rebuild['delta_items']:,}th upsert starts a rebuild of 20,000 + {rebuild['delta_items']:,} items in a "
        "child process. From the load generator's per-call completion times: steady is the "
        f"{rebuild['steady_seconds']:g} s before the trigger, during is from the trigger's acknowledgement until "
        "the server logs the new index in, after is the rest of the run. Rebuild duration is the server's "
        "`recserve_index_rebuild_last_duration_seconds`.",
        "",
        "| round | rebuild s | steady req/s | during req/s | steady p99 ms | during p99 ms | during / steady "
        "| during p99 by quarter ms | after p99 ms | calls during |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for number, r in enumerate([*rebuild["rounds"], rebuild], start=1):
        label = "median" if r is rebuild else str(number)
        quarters = " / ".join(f"{q:.0f}" for q in r.get("rebuild_p99_by_quarter_ms", [])) or "—"
        lines.append(
            f"| {label} | {r['rebuild_duration_s']:.2f} | {r['steady_rps']:.0f} | {r['rebuild_rps']:.0f} "
            f"| {r['steady_p99_ms']:.1f} | {r['rebuild_p99_ms']:.1f} | {r['p99_ratio']:.2f}× | {quarters} "
            f"| {r['after_p99_ms']:.1f} | {r['rebuild_calls']:.0f} |"
        )
    return [*lines, "", *rebuild_costs(rebuild)]


def rebuild_costs(rebuild: dict) -> list[str]:
    """Where the time goes: cores busy and per-request stage time, steady against during (medians)."""
    lines = [
        "Where the time goes (medians of the rounds): cores busy (of "
        f"{rebuild['cores']}) and wall time per request in each stage, from /proc and GetModelStatistics "
        "read at the window boundaries; the machine's cores include the load generator and the rebuild's child.",
        "",
        f"| window | server cores | machine cores {STAGE_COLUMNS}",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for window in ("steady", "rebuild"):
        stages = " | ".join(
            f"{rebuild.get(f'{window}_stage_us_{s}', 0):.0f}"
            for s in ("history", "user_tower", "ann", "ranker")
        )
        lines.append(
            f"| {'during the rebuild' if window == 'rebuild' else window} | {rebuild[f'{window}_server_cores']:.2f} "
            f"| {rebuild[f'{window}_machine_cores']:.2f} | {stages} |"
        )
    return [*lines, ""]


def live_delta(delta: dict) -> list[str]:
    """Recommend with items searched exactly beside the index."""
    base = next(r for r in delta["rows"] if r["delta_items"] == 0)
    lines = [
        "### Exact delta search: Recommend with upserted items beside the index",
        "",
        f"Concurrency {delta['concurrency']}; one server per delta size (upserted items with 1–4 random tags; "
        "`rebuild_delta_items` set high so none is folded into the index), runs interleaved.",
        "",
        f"| delta items | req/s | vs none | p50 ms | p99 ms | server CPU µs/req {STAGE_COLUMNS}",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in delta["rows"]:
        lines.append(
            f"| {r['delta_items']:,} | {r['rps']:.0f} | {r['rps'] / base['rps']:.2f}× | {r['p50_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {r['cpu_us_per_request']:.0f} | {stage_cells(r)} |"
        )
    return [*lines, ""]


def server_load_sections(load_results: dict, ceiling: dict | None) -> list[str]:
    """The targets and the closed-loop table (and its plot) from bench/server_load.py's results."""
    rows = load_results["rows"]
    plot(load_results, ceiling)
    out = [
        "## Targets",
        "",
        *targets(rows, ceiling, DEFAULT_CONFIG),
        "",
        "## Server under closed-loop load",
        "",
        f"`.venv/bin/python bench/server_load.py` — {load_results['machine']}; {load_results['seconds']:g} s per run, "
        f"median of {load_results['runs']} runs; load from a separate process ({load_results['load_generator']}) "
        "on the same cores; Recommend with k=10 for known users with 0–5 recent items.",
        "",
        "![throughput and p99 by concurrency](benchmarks.png)",
        "",
        "Configurations (`recserve serve` flags):",
        "",
    ]
    out += [f"- **{name}**: `{' '.join(flags)}`" for name, flags in load_results["configs"].items()]
    return [
        *out,
        "",
        *load_table(rows),
        "",
        f"### Where a request's server CPU goes (µs per request, concurrency {TARGET_CONCURRENCY})",
        "",
        "Thread groups are measured from /proc; pipeline stages are the wall time each stage spent per request "
        "(from `GetModelStatistics`).",
        "",
        *cpu_table(rows, TARGET_CONCURRENCY),
        "",
    ]


def ceiling_section(ceiling: dict) -> list[str]:
    """The in-process pipeline's rows per second by batch size (bench/pipeline_ceiling.py)."""
    return [
        "## The ceiling: the in-process pipeline",
        "",
        f"`.venv/bin/python bench/pipeline_ceiling.py` — {ceiling['machine']}; no RPC, no batcher; one batch "
        f"thread and {ceiling.get('ann_threads', 1)} ANN threads (the server's settings); "
        "medians per batch.",
        "",
        *ceiling_table(ceiling),
        "",
    ]


def replace_section(document: str, section: list[str]) -> str:
    """The document with the `## ` section that starts like `section` replaced (appended if missing); the
    rest is left exactly as it was."""
    lines = document.split("\n")
    if section[0] not in lines:
        return document.rstrip("\n") + "\n\n" + "\n".join(section)
    start = lines.index(section[0])
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join([*lines[:start], *section, *lines[end:]])


# The sections after the closed-loop, ceiling, Annoy and load-generator ones, in page order.
TRAILING_SECTIONS: dict[str, Callable[[dict], list[str]]] = {
    "tracing_overhead": tracing_section,
    "perf_analyzer": perf_analyzer_section,
    "live_state": live_state_section,
    "model_swap": model_swap_section,
    "peers": peers_section,
    "kserve_path": kserve_path_section,
    "workers": workers_section,
    "scale": scale_section,
    "light_load": light_load_section,
    "ceiling_share": ceiling_share_section,
    "exact_search": exact_search_section,
}
# Every section `--only` can re-render in place.
SECTIONS: dict[str, Callable[[dict], list[str]]] = {
    **TRAILING_SECTIONS,
    "annoy_sweep": annoy_sweep_section,
    "server_load": lambda results: server_load_sections(results, load("pipeline_ceiling")),
    "pipeline_ceiling": ceiling_section,
}


def render_only(name: str) -> None:
    """Re-render one section in place from bench/results/<name>.json (`make bench-live`, ...), leaving the
    rest of the page alone."""
    results = load(name)
    if results is None:
        raise SystemExit(f"no bench/results/{name}.json: run bench/{name}.py first")
    document = BENCHMARKS.read_text()
    for section in split_sections(SECTIONS[name](results)):
        document = replace_section(document, section)
    BENCHMARKS.write_text(document)


def split_sections(lines: list[str]) -> list[list[str]]:
    """Rendered lines cut at each `## ` heading: some renderers give more than one section."""
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("## ") or not sections:
            sections.append([])
        sections[-1].append(line)
    return sections


def main() -> None:
    """Write docs/benchmarks.md (and the plot) from whatever results exist."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        choices=sorted(SECTIONS),
        help="re-render only this section from bench/results/<name>.json, keeping the rest of the page as committed",
    )
    args = parser.parse_args()
    if args.only is not None:
        render_only(args.only)
        return
    ceiling, load_results, sweep = (load(n) for n in ("pipeline_ceiling", "server_load", "annoy_sweep"))
    generator_path = RESULTS / "loadtest_ceiling.md"
    generator = generator_path.read_text().strip() if generator_path.exists() else None
    out = [
        "# Benchmarks",
        "",
        "Each section comes from one run of its benchmark on one machine (the command is in the section): "
        "ratios are measured side by side, cells are medians, and the server-load runs interleave "
        "configurations so that the machine's drift hits them alike. Sections ran at different times, and "
        "this machine's speed drifts by tens of percent within an hour, so compare ratios within a section, "
        "not absolute figures across sections. Regenerate everything with `make bench` (about 40 minutes on "
        "2 cores), or one section with its benchmark and then `bench/report.py --only <section>`; the "
        "perf_analyzer section with `make bench-perf-analyzer`, the live-state section with `make bench-live`.",
        "",
    ]
    if load_results:
        out += server_load_sections(load_results, ceiling)
    if ceiling:
        out += ceiling_section(ceiling)
    if sweep:
        out += annoy_sweep_section(sweep)
    if generator:
        out += [
            "## The load generator's own ceiling",
            "",
            "`.venv/bin/python bench/loadtest_ceiling.py` — `recserve loadtest` against a trivial gRPC server "
            "(health Check) in another process, to show the generator is not what limits the figures above.",
            "",
            generator,
            "",
        ]
    for name, section in TRAILING_SECTIONS.items():
        results = load(name)
        if results:
            out += section(results)
    BENCHMARKS.write_text("\n".join(out))


if __name__ == "__main__":
    main()
