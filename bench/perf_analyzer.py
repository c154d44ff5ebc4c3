"""Triton's load generator, perf_analyzer, on the `recommender` model (KServe v2 ModelInfer), side by side with
`recserve loadtest` on Recommend: the same server, the same users, the same concurrencies.

Both drive one `recserve serve` process (the committed model config) in closed loop from a separate process:
perf_analyzer sends ModelInfer with `user_id` and `k` = 10 from an `--input-data` JSON of known user ids,
the load test sends the same requests as Recommend. Runs interleave (perf_analyzer, then loadtest, then
again) and each cell is the median of `--runs`. perf_analyzer measures `--seconds` as three windows of a
third each (it needs three to call a measurement stable; the threshold is set so that any three are).

perf_analyzer is a C++ binary that ships inside the `tritonclient` wheel up to 2.60, and only the 2.51.0
build runs on Debian 12 (newer ones need glibc 2.38). It needs its own venv, never the main one:

    apt-get install -y libb64-0d           # it links libb64.so.0d
    python3 -m venv .venv-perf && .venv-perf/bin/pip install -r bench/requirements-perf-analyzer.txt

(`make bench-perf-analyzer` does the venv, runs this and rewrites docs/benchmarks.md.) It also links
libcudart.so.12, even on CPUs: this script puts the nvidia-cuda-runtime-cu12 wheel's lib/ on LD_LIBRARY_PATH.

    .venv/bin/python bench/perf_analyzer.py [--seconds 6] [--runs 3] [--concurrency 1 2 4 8 16 32 64 128]
    .venv/bin/python bench/perf_analyzer.py --smoke     # one short run per tool: does perf_analyzer work?
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, REPO_ROOT, machine_note, median, write_result  # sets thread limits

# isort: on

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from server_load import ServerProcess, run_load, start_server, summarize

MODEL = "recommender"
PERF_VENV = REPO_ROOT / ".venv-perf"
K = 10
PERF_ANALYZER = "perf_analyzer (ModelInfer)"
LOADTEST = "recserve loadtest (Recommend)"


def perf_analyzer_command(venv: Path) -> tuple[list[str], dict[str, str]]:
    """The binary and an environment in which it finds libcudart. Exits with the setup steps if missing."""
    binary = venv / "bin" / "perf_analyzer"
    if not binary.is_file():
        sys.exit(
            f"no {binary}: set it up as this script's docstring says (or run `make bench-perf-analyzer`)"
        )
    cuda_libs = sorted(venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*map(str, cuda_libs), env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    check = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=env, check=False)
    if check.returncode != 0:
        sys.exit(f"{binary} does not start (apt-get install -y libb64-0d?):\n{check.stderr or check.stdout}")
    return [str(binary)], env


def write_inputs(repository: Path, workdir: Path, count: int = 2000, seed: int = 1) -> tuple[Path, Path]:
    """The same requests twice: perf_analyzer's --input-data JSON and the load test's data file."""
    version = max((p for p in (repository / MODEL).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    known = (version / "user_ids.txt").read_text().split()
    users = [random.Random(seed).choice(known) for _ in range(count)]
    perf_data = workdir / "perf_analyzer_input.json"
    perf_data.write_text(json.dumps({"data": [{"user_id": [user], "k": [K]} for user in users]}))
    load_data = workdir / "recommend_requests.json"
    load_data.write_text(json.dumps([{"user_id": user, "k": K} for user in users]))
    return perf_data, load_data


def run_perf_analyzer(
    command: tuple[list[str], dict[str, str]],
    address: str,
    data: Path,
    concurrency: int,
    seconds: float,
    options: Sequence[str] = (),
) -> dict:
    """One perf_analyzer measurement (with `options` added, e.g. --async); its CSV row as our columns (ms)."""
    binary, env = command
    report = data.with_name(f"perf_analyzer_{concurrency}.csv")
    window_ms = max(int(seconds * 1000 / 3), 200)
    args = [
        *binary,
        "-m",
        MODEL,
        "-i",
        "grpc",
        "-u",
        address,
        "--input-data",
        str(data),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-interval",
        str(window_ms),
        "--max-trials",
        "3",
        "--stability-percentage",
        "1000",
        "-f",
        str(report),
        *options,
    ]
    result = subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=seconds * 5 + 120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    with report.open() as file:
        (row,) = list(csv.DictReader(file))
    return {
        "rps": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p90_ms": float(row["p90 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
        "server_queue_ms": float(row["Server Queue"]) / 1000,
        "server_compute_ms": float(row["Server Compute Infer"]) / 1000,
        "errors": 0,
        "output": result.stdout,
    }


def run_loadtest(address: str, data: Path, concurrency: int, seconds: float) -> dict:
    """One `recserve loadtest` run on Recommend, as bench/server_load.py measures it."""
    return summarize(run_load(address, data, concurrency, seconds, use_ghz=False))


def measure(server: ServerProcess, tool: str, run: Callable[[int], dict], concurrency: int) -> dict:
    """One run of one tool, with the mean batch size from the server's own statistics."""
    before = server.statistics()
    cell = run(concurrency)
    after = server.statistics()
    batches = after.execution_count - before.execution_count
    cell["mean_batch"] = (after.inference_count - before.inference_count) / batches if batches else 0.0
    return {"tool": tool, "concurrency": concurrency, **cell}


def main() -> None:
    """Every concurrency, both tools interleaved, medians; results to bench/results/perf_analyzer.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--perf-venv", type=Path, default=PERF_VENV)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--smoke", action="store_true", help="one 1.5 s run per tool at concurrency 1 and 4")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.runs, args.concurrency = 1.5, 1, [1, 4]
    command = perf_analyzer_command(args.perf_venv)
    workdir = Path(tempfile.mkdtemp(prefix="recserve-perf-analyzer-"))
    perf_data, load_data = write_inputs(args.model_repository, workdir)
    server = start_server(args.model_repository, [], workdir)
    tools = {
        PERF_ANALYZER: lambda c: run_perf_analyzer(command, server.address, perf_data, c, args.seconds),
        LOADTEST: lambda c: run_loadtest(server.address, load_data, c, args.seconds),
    }
    rows = []
    try:
        for tool in tools.values():
            tool(4)  # warm connections and code paths
        for concurrency in args.concurrency:
            cells: dict[str, list[dict]] = {name: [] for name in tools}
            for _ in range(args.runs):
                for name, tool in tools.items():
                    cells[name].append(measure(server, name, tool, concurrency))
            for name, runs in cells.items():
                numeric = [key for key, value in runs[0].items() if isinstance(value, (int, float))]
                row = {"tool": name, **{key: median([r[key] for r in runs]) for key in numeric}}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        if args.smoke:
            print(cells[PERF_ANALYZER][0]["output"])
    finally:
        server.stop()
    print_table(rows)
    if not args.smoke:
        write_result(
            "perf_analyzer",
            {"machine": machine_note(), "seconds": args.seconds, "runs": args.runs, "k": K, "rows": rows},
        )


def print_table(rows: list[dict]) -> None:
    """Markdown table of the medians."""
    print("| tool | concurrency | req/s | p50 ms | p90 ms | p99 ms | mean batch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['tool']} | {r['concurrency']:.0f} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['mean_batch']:.1f} |"
        )


if __name__ == "__main__":
    main()
