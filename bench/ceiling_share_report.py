"""The "Concurrency 128" section of docs/benchmarks.md, from bench/results/ceiling_share.json."""

from __future__ import annotations

HEADING = "## Concurrency 128: the server against its own pipeline"
TARGET_SHARE = 0.8
THREAD_ROWS = (
    ("ann", "ANN lookup threads (the native Annoy search and the per-query filtering around it)"),
    ("batch", "batch threads (batch glue, TensorFlow calls' Python)"),
    ("event_loop", "event loop (handlers, batcher, responses)"),
    ("grpc", "grpc++ threads"),
    ("tensorflow", "TensorFlow's own threads"),
    ("other", "other server threads"),
    ("load_generator", "the load generator (same cores)"),
    ("idle", "idle: no thread wanted the CPU"),
)
NOT_THE_SERVER = ("load_generator", "idle")


def ceiling_share_section(result: dict) -> list[str]:
    """Markdown lines: the command, the share per round, CPU per request by thread, stages per batch."""
    lines = [HEADING, ""]
    for flags, entry in result["configs"].items():
        lines += _config_lines(flags, entry, result)
    return lines


def _config_lines(flags: str, entry: dict, result: dict) -> list[str]:
    cell, rounds = entry["median"], entry["rounds"]
    share = cell["share"]
    server_cpu = sum(cell[f"cpu_us_{kind}"] for kind, _ in THREAD_ROWS if kind not in NOT_THE_SERVER)
    flag_text = f' --server-flags "{flags}"' if flags else ""
    stages = result["stages"]
    return [
        "```sh",
        f".venv/bin/python bench/ceiling_share.py --rounds {len(rounds)} --seconds {result['seconds']:g}{flag_text}",
        "```",
        "",
        f"Recommend at concurrency {result['concurrency']} through `recserve loadtest` against the committed "
        f"config{(' with `' + flags + '`') if flags else ''}, and in the same rounds the in-process pipeline at "
        "batch 64, the server's max batch size (`bench/pipeline_ceiling.py`, its own process, one batch thread "
        f"and the server's 2 ANN threads, the server idle meanwhile); {len(rounds)} rounds of "
        f"{result['seconds']:g} s, the share taken per round, medians; {result['machine']}, the load generator "
        "on the same cores. CPU per request from per-thread /proc counters over each server run.",
        "",
        f"- **Share of the ceiling: {share:.0%}** (target {TARGET_SHARE:.0%}: "
        f"{'met' if share >= TARGET_SHARE else 'not met'}): {cell['rps']:,.0f} req/s against "
        f"{cell['ceiling_rows_per_s']:,.0f} rows/s; per round "
        + ", ".join(f"{r['share']:.0%}" for r in rounds)
        + ".",
        f"- The server spends {server_cpu:.0f} µs of CPU per request; the ceiling {cell['ceiling_cpu_us_per_row']:.0f} "
        f"µs per row. The machine had {cell['busy_cores']:.2f} of 2 cores busy, mean batch {cell['mean_batch']:.1f}.",
        "",
        "| where, per request | µs of CPU |",
        "|---|---:|",
        *(
            f"| {label} | {cell[f'cpu_us_{kind}' if kind != 'idle' else 'idle_us']:.0f} |"
            for kind, label in THREAD_ROWS
        ),
        "",
        "| stage, wall ms per batch | in the server | in process |",
        "|---|---:|---:|",
        *(
            f"| {stage} | {cell[f'server_{stage}_ms']:.2f} | {cell[f'ceiling_{stage}_ms']:.2f} |"
            for stage in stages
        ),
        "",
    ]
