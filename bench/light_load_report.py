"""The "Concurrency 1" section of docs/benchmarks.md, from bench/results/light_load.json."""

from __future__ import annotations

HEADING = "## Concurrency 1: the server against its own pipeline"
TARGET_MS = 0.5


def light_load_section(result: dict) -> list[str]:
    """Markdown lines: the command, the split of the gap, per stage in the server and in process."""
    cell = result["median"]
    stages = [
        key[len("pipeline_") : -len("_ms")]
        for key in cell
        if key.startswith("pipeline_") and key != "pipeline_ms"
    ]
    rounds = len(result["rounds"])
    in_server = sum(cell[f"server_{stage}_ms"] for stage in stages)
    in_process = sum(cell[f"pipeline_{stage}_ms"] for stage in stages)
    gap = result["gap_ms"]
    lines = [
        HEADING,
        "",
        "```sh",
        f".venv/bin/python bench/light_load.py --rounds {rounds}",
        "```",
        "",
        "Recommend at concurrency 1 through `recserve loadtest` against the committed config, and the in-process "
        "pipeline at batch 1 (`bench/pipeline_ceiling.py`, its own process, batches back to back) in the same "
        f"rounds; {rounds} interleaved rounds, medians; {result['machine']}, the load generator on the same cores.",
        "",
        "| | ms |",
        "|---|---:|",
        f"| server p50 (client-measured) | {cell['server_p50_ms']:.2f} |",
        f"| pipeline batch 1, in process | {cell['pipeline_ms']:.2f} |",
        f"| **gap** (target <= {TARGET_MS} ms: {'met' if gap <= TARGET_MS else 'not met'}) | **{gap:.2f}** |",
        f"| of which: the stages run slower in the server ({in_server:.2f} against {in_process:.2f}) "
        f"| {in_server - in_process:.2f} |",
        f"| of which: hand-offs around the batch (batcher compute {cell['server_compute_ms']:.2f} minus its stages) "
        f"| {cell['server_compute_ms'] - in_server:.2f} |",
        f"| of which: the RPC outside the batch (p50 minus batcher compute; a health Check: "
        f"{cell['health_p50_ms']:.2f}) | {cell['server_p50_ms'] - cell['server_compute_ms']:.2f} |",
        "",
        "| stage | in the server ms | in process ms |",
        "|---|---:|---:|",
        *(
            f"| {stage} | {cell[f'server_{stage}_ms']:.3f} | {cell[f'pipeline_{stage}_ms']:.3f} |"
            for stage in stages
        ),
        "",
    ]
    return lines
