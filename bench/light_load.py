"""Concurrency 1: the server's p50 against the in-process pipeline's batch-1 time, and where the gap goes.

The target (issue: c=1) is server p50 <= the pipeline's batch-1 time + 0.5 ms. Per round, side by side:

- **the pipeline**: `bench/pipeline_ceiling.py --batch-sizes 1 --json` in a process of its own (no RPC, no
  batcher; batches back to back), ms per batch and per stage;
- **the server** (`recserve serve`, committed config), Recommend at concurrency 1 through `recserve loadtest`:
  the client's p50, and from `GetModelStatistics` over the same run the batcher's compute time per batch
  (from the hand-off to the batch thread to the result back on the event loop) and each stage's wall time;
- **the transport**: a health Check at concurrency 1 on the same server (grpc++ and the event loop, no
  batcher, no model).

The gap then splits into: the stages running slower inside the server than back to back in a bench loop,
the hand-offs around the batch (compute per batch minus its stages), and the RPC (client p50 minus compute).

    .venv/bin/python bench/light_load.py [--model-repository models] [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, machine_note, median, write_result  # first: sets thread limits

# isort: on

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from light_load_report import TARGET_MS
from perf_analyzer import write_inputs
from server_load import LOADTEST, ServerProcess, start_server

from recserve.client import ModelStatistics
from recserve.server.pipeline import STAGES

RECOMMEND = "recserve.v1.Recommender.Recommend"
HEALTH = "grpc.health.v1.Health.Check"


def client_p50_ms(server: ServerProcess, call: str, data: Path | None, seconds: float) -> float:
    """The client's p50 at concurrency 1 over one connection."""
    command = [*LOADTEST, "--insecure", "--call", call, "-c", "1", "--connections", "1", "-z", f"{seconds}s"]
    if data is not None:
        command += ["-D", str(data)]
    report = json.loads(
        subprocess.run(
            [*command, "-O", "json", server.address], check=True, capture_output=True, text=True
        ).stdout
    )
    return next(p["latency"] / 1e6 for p in report["latencyDistribution"] if p["percentage"] == 50)


def per_batch_ms(before: ModelStatistics, after: ModelStatistics) -> dict[str, float]:
    """Compute time per batch and each stage's wall time per batch between two statistics snapshots."""
    batches = max(1, after.execution_count - before.execution_count)
    figures = {"compute_ms": (after.compute_duration_us - before.compute_duration_us) / batches / 1000}
    earlier = {stage.name: stage for stage in before.stages}
    for stage in after.stages:
        calls = max(1, stage.execution_count - earlier[stage.name].execution_count)
        figures[f"{stage.name}_ms"] = (
            (stage.compute_duration_us - earlier[stage.name].compute_duration_us) / calls / 1000
        )
    return figures


def pipeline_batch_1(repository: Path, seconds: float) -> dict[str, float]:
    """The in-process pipeline at batch 1, in a fresh process (as the ceiling benchmark runs it)."""
    command = [sys.executable, str(Path(__file__).parent / "pipeline_ceiling.py"), "--model-repository",
               str(repository), "--batch-sizes", "1", "--seconds", str(seconds), "--json"]  # fmt: skip
    (row,) = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return row


def one_round(server: ServerProcess, repository: Path, data: Path, seconds: float) -> dict[str, float]:
    """The pipeline, then the server's Recommend and health at concurrency 1."""
    pipeline = pipeline_batch_1(repository, seconds)
    before = server.statistics()
    p50 = client_p50_ms(server, RECOMMEND, data, seconds)
    inside = per_batch_ms(before, server.statistics())
    health = client_p50_ms(server, HEALTH, None, seconds / 2)
    return {
        "pipeline_ms": pipeline["ms_per_batch"],
        **{f"pipeline_{stage}_ms": pipeline[f"{stage}_ms"] for stage in STAGES},
        "server_p50_ms": p50,
        **{f"server_{name}": value for name, value in inside.items()},
        "health_p50_ms": health,
    }


def main() -> None:
    """Interleave the pipeline and the server for `--rounds`; print the split; bench/results/light_load.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--result", default="light_load", help="name of the result file (bench/results/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true", help="one 0.5 s round; writes no results")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.seconds = 1, 0.5
    workdir = Path(tempfile.mkdtemp(prefix="recserve-light-load-"))
    data = write_inputs(args.model_repository, workdir)[1]
    server = start_server(args.model_repository, [], workdir)
    try:
        client_p50_ms(server, RECOMMEND, data, 1.0)  # warm
        rounds = []
        for _ in range(args.rounds):
            rounds.append(one_round(server, args.model_repository, data, args.seconds))
            print(json.dumps(rounds[-1]), file=sys.stderr)
    finally:
        server.stop()
    cell = {key: median([r[key] for r in rounds]) for key in rounds[0]}
    stages_in_server = sum(cell[f"server_{stage}_ms"] for stage in STAGES)
    stages_in_process = sum(cell[f"pipeline_{stage}_ms"] for stage in STAGES)
    gap = cell["server_p50_ms"] - cell["pipeline_ms"]
    print(f"Concurrency 1, {args.rounds} rounds of {args.seconds:g} s, medians; {machine_note()}")
    print(
        f"server p50 {cell['server_p50_ms']:.2f} ms, pipeline batch 1 {cell['pipeline_ms']:.2f} ms: gap "
        f"{gap:.2f} ms (target <= {TARGET_MS} ms: {'met' if gap <= TARGET_MS else 'not met'})"
    )
    print(
        f"  stages {stages_in_server:.2f} ms in the server against {stages_in_process:.2f} in process; "
        f"compute per batch {cell['server_compute_ms']:.2f} ms; RPC outside it "
        f"{cell['server_p50_ms'] - cell['server_compute_ms']:.2f} ms (health Check p50 {cell['health_p50_ms']:.2f})"
    )
    for stage in STAGES:
        print(
            f"  {stage}: {cell[f'server_{stage}_ms']:.3f} ms in the server, {cell[f'pipeline_{stage}_ms']:.3f} in process"
        )
    if not args.smoke:
        write_result(
            args.result, {"machine": machine_note(), "rounds": rounds, "median": cell, "gap_ms": gap}
        )


if __name__ == "__main__":
    main()
