"""The "Workers" section of docs/benchmarks.md, from bench/results/workers.json."""

from __future__ import annotations

HEADING = "## Workers: one against two on this machine"


def workers_section(result: dict) -> list[str]:
    """Markdown lines: the command, throughput and latency of 1 and 2 workers, CPU, memory, what it means."""
    memory = result["memory_mb"]
    lines = [
        HEADING,
        "",
        "```sh",
        f".venv/bin/python bench/workers.py --seconds {result['seconds']:g} --rounds {result['rounds']}",
        "```",
        "",
        "`recserve serve` with 1 and with 2 workers (`--workers 2`), both on the Redis state backend (one "
        "`redis-server`), the committed model config; `recserve loadtest` sends Recommend (k = "
        f"{result['k']}, 2,000 known users) over {result['connections']} connections, closed loop, "
        f"{result['seconds']:g} s per run, {result['rounds']} interleaved rounds, medians; {result['machine']}, "
        "the load generator on the same cores. Server CPU is the whole process tree's (supervisor and "
        "workers).",
        "",
        "| concurrency | 1 worker: req/s (p50 / p99 ms) | 2 workers: req/s (p50 / p99 ms) | 2 / 1 (rounds) "
        "| server cores used, 1 / 2 | server µs per request, 1 / 2 | load generator µs per request | busiest "
        "worker's share of calls |",
        "|---:|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        one, two = row["1"], row["2"]
        lines.append(
            f"| {row['concurrency']} | {one['rps']:,.0f} ({one['p50_ms']:.1f} / {one['p99_ms']:.1f}) "
            f"| {two['rps']:,.0f} ({two['p50_ms']:.1f} / {two['p99_ms']:.1f}) "
            f"| {row['ratio']:.2f} ({min(row['ratios']):.2f}–{max(row['ratios']):.2f}) "
            f"| {one['server_cores']:.2f} / {two['server_cores']:.2f} "
            f"| {one['server_us_per_request']:.0f} / {two['server_us_per_request']:.0f} "
            f"| {one['client_us_per_request']:.0f} / {two['client_us_per_request']:.0f} "
            f"| {two['busiest_worker_share']:.0%} |"
        )
    one_mb, two_mb = memory["1"], memory["2"]
    lines += [
        "",
        f"Memory after warm-up: 1 worker RSS {one_mb['rss']:,.0f} MB (PSS {one_mb['pss']:,.0f} MB); 2 workers "
        f"(with the supervisor) RSS {two_mb['rss']:,.0f} MB summed over the processes, PSS "
        f"{two_mb['pss']:,.0f} MB (shared pages, such as the memory-mapped index and the loaded libraries, "
        "split between the processes that map them: what the tree really costs).",
        "",
        *_reading(result["rows"]),
        "",
    ]
    return lines


def _reading(rows: list[dict]) -> list[str]:
    """What the figures say, from the figures."""
    busy = [row for row in rows if row["concurrency"] >= 64]
    gains = ", ".join(f"{row['ratio']:.2f}x at c={row['concurrency']}" for row in busy)
    cores = max(
        row["2"]["server_cores"] + row["2"]["rps"] * row["2"]["client_us_per_request"] / 1e6 for row in busy
    )
    extra = [row["2"]["server_us_per_request"] / row["1"]["server_us_per_request"] - 1 for row in rows]
    return [
        f"- **Two workers on two cores: {gains}.** One worker leaves part of the second core idle (the GIL); "
        f"two use it, but the server and the load generator together already take ~{cores:.1f} of the 2 "
        "cores, so there is little left to gain here.",
        f"- **Each request costs {min(extra):.0%}–{max(extra):.0%} more CPU with two workers**: each worker "
        "sees half the concurrency, so its batches are half as large and the fixed cost of a batch (one "
        "TensorFlow call per stage) is shared by fewer requests. The p99 is higher for the same reason and "
        "because the kernel's connection hashing is uneven (the busiest worker's share above).",
        "- Workers are for machines with more cores than one process can use: here, with the load generator "
        "on the same 2 cores, they gain ~10%. How far they scale with more cores is not measured: no machine "
        "with more cores was available.",
    ]
