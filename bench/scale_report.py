"""The "Catalog size" section of docs/benchmarks.md and its plot, from bench/results/scale.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import load_result  # noqa: E402

HEADING = "## Catalog size: 20k to a million items"
PLOT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-scale.png"
THROUGHPUT_TARGET = 0.5  # throughput at the largest size against the smallest, at equal recall
TREES_RESULT = "annoy_sweep_1m"  # bench/annoy_sweep.py on the largest build, --result annoy_sweep_1m
DELTA_RESULT = "delta_scale"


def scale_section(result: dict) -> list[str]:
    """Markdown lines: the command, one row per size, the cost-curve plot, the verdict."""
    rows = sorted(result["rows"], key=lambda row: row["items"])
    plot_cost_curves(rows)
    sizes = " ".join(f"--size {row['items']}=REPOSITORY" for row in rows)
    lines = [
        HEADING,
        "",
        "```sh",
        f".venv/bin/python bench/scale.py {sizes} --seconds {result['seconds']:g} --rounds {result['rounds']}",
        "```",
        "",
        "Each size is a demo build (`recserve build-demo --num-items N --num-users N`). `search_k` is chosen "
        "per size as the cheapest with recall@100 of exact search >= 0.9 on real queries (user-tower "
        "embeddings of held-out requests); the server runs the committed config with that `search_k`. "
        f"Latency and throughput: `recserve loadtest`, Recommend k = 10, {result['rounds']} interleaved "
        f"rounds of {result['seconds']:g} s, medians; {result['machine']}, the load generator on the same "
        "cores.",
        "",
        "| items | n_trees | index build s | index MB | version MB | search_k (recall@100) | Annoy ms per query | start to "
        "SERVING s | RSS MB (PSS) | Recommend p50 at c=1 ms | Recommend req/s at c=64 (p99 ms) |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---|",
    ]
    for row in rows:
        chosen, memory = row["chosen"], row["memory_mb"]
        lines.append(
            f"| {row['items']:,} | {row['n_trees']} | {row.get('index_build_s', float('nan')):.1f} "
            f"| {row['index_mb']:,.0f} | {row['version_mb']:,.0f} "
            f"| {chosen['search_k']:,} ({chosen['recall_at_100']:.3f}) | {chosen['ms_per_query']:.2f} "
            f"| {row['start_s']:.1f} | {memory['rss']:,.0f} ({memory['pss']:,.0f}) | {row['c1_p50_ms']:.2f} "
            f"| {row['c64_rps']:,.0f} ({row['c64_p99_ms']:.1f}) |"
        )
    smallest, largest = rows[0], rows[-1]
    share = largest["c64_rps"] / smallest["c64_rps"]
    met = share >= THROUGHPUT_TARGET
    lines += [
        "",
        f"![Annoy cost against recall by catalog size]({PLOT.name})",
        "",
        f"- **Target: throughput at {largest['items']:,} items >= {THROUGHPUT_TARGET:.0%} of that at "
        f"{smallest['items']:,}, at equal recall: {'met' if met else 'not met'}** ({share:.0%}: "
        f"{largest['c64_rps']:,.0f} against {smallest['c64_rps']:,.0f} req/s at c=64).",
        "",
    ]
    return lines + trees_lines(load_result(TREES_RESULT)) + delta_lines(load_result(DELTA_RESULT))


def trees_lines(sweep: dict | None) -> list[str]:
    """More trees against a larger search_k on the largest build: the cheapest way to recall@100 0.9."""
    if sweep is None:
        return []
    rows = sweep["rows"]
    items = sweep.get("items")
    lines = [
        f"### Trees against search_k at {items:,} items" if items else "### Trees against search_k",
        "",
        "```sh",
        f".venv/bin/python bench/annoy_sweep.py --model-repository REPOSITORY --queries {sweep['queries']} "
        f"--n-trees {' '.join(str(t) for t in dict.fromkeys(r['n_trees'] for r in rows))} "
        f"--search-k {' '.join(str(k) for k in dict.fromkeys(r['search_k'] for r in rows))} "
        f"--recall-target 0.9 --result {TREES_RESULT}",
        "```",
        "",
        f"Indexes built in process as build-demo builds them; {sweep['queries']} real queries; {sweep['machine']}.",
        "",
        "| n_trees | build s | search_k | recall@100 | ms per query |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        mark = " **(cheapest >= 0.9)**" if row == sweep.get("choice") else ""
        lines.append(
            f"| {row['n_trees']} | {row['build_s']:.0f} | {row['search_k']:,} | {row['recall_at_100']:.3f}{mark} "
            f"| {row['ms_per_query']:.2f} |"
        )
    return [*lines, ""]


def delta_lines(delta: dict | None) -> list[str]:
    """The exact delta's cost per batch as it grows, and a background rebuild, at the largest size."""
    if delta is None:
        return []
    rows, rebuild = delta["rows"], delta["rebuild"]
    base = rows[0]
    lines = [
        f"### The live delta at {delta['items']:,} items",
        "",
        "```sh",
        f".venv/bin/python bench/delta_scale.py --model-repository REPOSITORY --search-k {delta['search_k']} "
        f"--deltas {' '.join(str(r['delta']) for r in rows)}",
        "```",
        "",
        f"In process, through `BatchPipeline.run_batch` (no RPC), batches of {delta['batch']} Recommend queries; "
        f"upserted items embedded by the item tower and committed as the write path does; {delta['machine']}.",
        "",
        "| upserted items searched exactly | ms per batch (p99) | ANN stage ms | ANN stage over none | rows/s |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['delta']:,} | {row['ms_per_batch']:.1f} ({row['p99_ms_per_batch']:.1f}) | {row['ann_ms']:.1f} "
            f"| {row['ann_ms'] - base['ann_ms']:+.1f} | {delta['batch'] / row['ms_per_batch'] * 1000:,.0f} |"
        )
    lines += [
        "",
        f"Rebuild over every live row ({rebuild['rows']:,}, {rebuild['n_trees']} trees) in a child process at "
        f"idle priority, as the server's background rebuild runs: **{rebuild['build_s']:.0f} s**, "
        f"{rebuild['open_and_swap_s'] * 1000:.1f} ms to open (memory-mapped) and swap in. Batches meanwhile: "
        f"{rebuild['before']['ms_per_batch']:.1f} ms before, {rebuild['during']['ms_per_batch']:.1f} ms during "
        f"(p99 {rebuild['before']['p99_ms_per_batch']:.1f} / {rebuild['during']['p99_ms_per_batch']:.1f}), "
        f"{rebuild['after']['ms_per_batch']:.1f} ms after (the delta folded in).",
        "",
    ]
    return lines


def plot_cost_curves(rows: list[dict]) -> None:
    """Recall@100 against ms per query along each size's search_k sweep."""
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for row in rows:
        sweep = row["sweep"]
        axes.plot(
            [point["ms_per_query"] for point in sweep],
            [point["recall_at_100"] for point in sweep],
            marker="o",
            label=f"{row['items']:,} items",
        )
        for point in sweep:
            axes.annotate(f"{point['search_k']}", (point["ms_per_query"], point["recall_at_100"]), fontsize=6)
    axes.axhline(0.9, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlabel("Annoy ms per query (labels: search_k)")
    axes.set_ylabel("recall@100 of exact search")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(PLOT, dpi=120)
    plt.close(figure)
