"""The "Against Triton on the same pipeline" section of docs/benchmarks.md, from bench/results/peers.json."""

from __future__ import annotations

HEADING = "## Against Triton on the same pipeline"
RECSERVE = "recserve"
TARGET_RATIO = 2.5  # recserve's throughput against the best PyTriton configuration, at c >= 16


def _cell(row: dict) -> str:
    return f"{row['rps']:,.0f} ({row['p50_ms']:.1f} / {row['p99_ms']:.1f})"


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per concurrency: recserve's row, the best PyTriton row (by throughput) and the ratio."""
    summary = []
    for concurrency in sorted({row["concurrency"] for row in rows}):
        here = [row for row in rows if row["concurrency"] == concurrency]
        ours = next(row for row in here if row["server"] == RECSERVE)
        best = max((row for row in here if row["server"] != RECSERVE), key=lambda row: row["rps"])
        summary.append(
            {"concurrency": concurrency, "recserve": ours, "best": best, "ratio": ours["rps"] / best["rps"]}
        )
    return summary


def peers_section(result: dict) -> list[str]:
    """Markdown lines: the command, the summary against the best peer, every configuration, the verdict."""
    summary = summary_rows(result["rows"])
    agreement = result.get("same_answers", {})
    lowest = min(agreement.values(), default=float("nan"))
    lines = [
        HEADING,
        "",
        "```sh",
        f"make bench-peers   # .venv/bin/python bench/peers.py --seconds {result['seconds']:g} --rounds {result['rounds']}",
        "```",
        "",
        "The same model version served by `recserve serve` (committed config) and by Triton Inference Server "
        "2.51 through PyTriton 0.7, whose dynamic batcher (max batch 64) hands batches to recserve's own "
        "`BatchPipeline` (`bench/pytriton_server.py`): the same TensorFlow graphs, Annoy index and ranking "
        "code. Triton's perf_analyzer drives both over KServe v2 gRPC (`recommender`, `user_id` and "
        f"`k` = {result['k']} for 2,000 known users, closed loop, {result['seconds']:g} s per cell), "
        f"{result['rounds']} interleaved rounds (every server once per concurrency per round, the order "
        f"reversed every other round), medians; {result['machine']}, perf_analyzer on the same cores. "
        f"Before measuring, every PyTriton configuration answered the same top {result['k']} as recserve for "
        f"{lowest:.0%} of 200 users. CPU is each server's whole process tree (tritonserver and its Python "
        "backend stubs under PyTriton's process).",
        "",
        "| concurrency | recserve infer/s (p50 / p99 ms) | best PyTriton configuration: infer/s (p50 / p99) | ratio | CPU ms per inference, recserve / PyTriton |",
        "|---:|---|---|---:|---|",
        *(
            f"| {s['concurrency']} | {_cell(s['recserve'])} | {_cell(s['best'])}, {s['best']['server'].removeprefix('PyTriton, ')} "
            f"| {s['ratio']:.2f}× | {s['recserve']['cpu_ms_per_inference']:.2f} / {s['best']['cpu_ms_per_inference']:.2f} |"
            for s in summary
        ),
        "",
        "Every configuration:",
        "",
        "| server | concurrency | infer/s | p50 ms | p99 ms | server queue ms | server compute ms | server cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['server']} | {r['concurrency']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['server_queue_ms']:.2f} | {r['server_compute_ms']:.2f} | {r['server_cores']:.2f} |"
            for r in result["rows"]
        ),
        "",
    ]
    loaded = [s for s in summary if s["concurrency"] >= 16]
    if loaded:
        worst = min(loaded, key=lambda s: s["ratio"])
        lower_p99 = all(s["recserve"]["p99_ms"] < s["best"]["p99_ms"] for s in loaded)
        met = worst["ratio"] >= TARGET_RATIO and lower_p99
        lines += [
            f"- **Target: ≥ {TARGET_RATIO:g}× the best PyTriton configuration at c ≥ 16 with a lower p99: "
            f"{'met' if met else 'not met'}** (lowest ratio {worst['ratio']:.2f}× at c={worst['concurrency']}; "
            f"p99 {'lower at every one' if lower_p99 else 'not lower everywhere'}).",
            "",
        ]
    return lines
